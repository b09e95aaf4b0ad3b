"""Redis is killed and restarted in the middle of a chat between two instances: every acknowledged
message reaches every client, in order, or the client is told to reload and its reload has them all;
``/readyz`` reports the outage while it lasts and records it afterwards."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from rooms.identity import Role
from tests.support import Member, RedisServer, ServerProcess, token, wait_until

pytestmark = pytest.mark.postgres


async def test_redis_restart_mid_chat_loses_no_acknowledged_message(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, pg_url: str
) -> None:
    env = {"LIVE_REDIS_URL": redis_url, "LIVE_DATABASE_URL": pg_url}
    a = ServerProcess(tmp_path / "a", {**env, "LIVE_INSTANCE_ID": "a"})
    b = ServerProcess(tmp_path / "b", {**env, "LIVE_INSTANCE_ID": "b"})
    members: list[Member] = []
    try:
        await a.start()
        await b.start()
        teacher = Member(a.url, token("lesson", "teacher", Role.TEACHER))
        students = [Member(b.url, token("lesson", "s-on-b")), Member(a.url, token("lesson", "s-on-a"))]
        members = [teacher, *students]
        for m in members:
            await m.connect()
            await m.join()

        acknowledged: list[str] = []
        refused: list[str] = []
        stop = asyncio.Event()

        async def chatter() -> None:
            i = 0
            while not stop.is_set():
                sender = members[i % len(members)]
                text = f"m{i}"
                ack = await sender.call("chat:send", {"text": text})
                if ack["ok"]:
                    acknowledged.append(text)
                else:
                    assert ack["error"]["code"] == "unavailable", ack
                    refused.append(text)
                i += 1
                await asyncio.sleep(0.03)  # ~30 msg/s, within the chat rate limits of 4 users

        traffic = asyncio.create_task(chatter())
        await wait_until(lambda: len(acknowledged) >= 15, what="chat before the crash")
        redis_server.kill()
        killed_at = time.time()

        async def not_ready() -> bool:
            status, body = await b.readyz()
            return status == 503 and body["bus"]["connected"] is False

        deadline = time.monotonic() + 10
        while not await not_ready():
            assert time.monotonic() < deadline, "readyz never reported the outage"
            await asyncio.sleep(0.1)
        await wait_until(lambda: len(refused) >= 3, what="sends refused while Redis is down")
        await asyncio.sleep(1.0)  # a real outage, long enough for position checks to run during it

        redis_server.start()
        for server in (a, b):
            await server.ready_again()
        after_restart = len(acknowledged)
        await wait_until(lambda: len(acknowledged) >= after_restart + 15, what="chat after the restart")
        stop.set()
        await traffic

        status, body = await b.readyz()
        assert status == 200
        outage = body["bus"]["last_outage"]
        assert (
            body["bus"]["outages"] == 1 and outage["started"] >= killed_at - 1 and outage["ended"] > outage["started"]
        )
        assert outage["rooms_reloaded"] + outage["rooms_recovered"] >= 1

        for m in members:
            await wait_until(
                lambda m=m: bool(m.reloads) or m.chat_texts()[-1:] == acknowledged[-1:], what="last message or a reload"
            )
            if m.reloads:
                # The explicit signal: reload, and the reloaded state has every acknowledged message.
                snapshot = await m.join()
                assert [c["text"] for c in snapshot["chat"]] == acknowledged[-100:]
            else:
                assert m.chat_texts() == acknowledged
        assert any(m.reloads for m in members), "Redis lost the history, so clients must be told"

        # The outage is in the logs, one JSON object per line.
        lines = [json.loads(line) for line in b.log_path.read_text().splitlines()]
        assert any(entry["level"] == "error" and "redis subscriber lost" in entry["msg"] for entry in lines)
        assert all(entry["instance"] == "b" for entry in lines)

        # Presence came back after Redis forgot it.
        for m in members:
            await wait_until(lambda m=m: bool(m.counts) and m.counts[-1] == 3, what="head count restored")
    finally:
        for m in members:
            await m.close()
        a.stop()
        b.stop()
        if redis_server.proc is None:
            redis_server.start()
