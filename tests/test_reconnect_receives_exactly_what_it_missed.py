"""A client that reconnects with its last offset receives exactly the room events it missed, on both
engines; when the history cannot cover the gap it gets a snapshot instead, never a silent hole."""

from __future__ import annotations

from typing import Any

import pytest

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import Member, token, wait_until


@pytest.fixture(params=["memory", "redis"])
def engine_env(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {"LIVE_REDIS_URL": request.getfixturevalue("redis_url")}


async def test_reconnect_with_last_offset_gets_exactly_the_missed_events(
    start_app: AppFactory, engine_env: dict[str, Any]
) -> None:
    url, _ = await start_app(**engine_env)
    teacher = Member(url, token("room-1", "t", Role.TEACHER))
    student = Member(url, token("room-1", "s"))
    try:
        await teacher.connect()
        await teacher.join()
        await student.connect()
        await student.join()
        for i in range(3):
            assert (await teacher.call("chat:send", {"text": f"before {i}"}))["ok"]
        await wait_until(lambda: len(student.chat_texts()) == 3, what="first messages")
        last_seen = student.offset

        await student.close()
        missed = [f"missed {i}" for i in range(5)]
        for text in missed:
            assert (await teacher.call("chat:send", {"text": text}))["ok"]

        student.sio = type(student.sio)(reconnection=False)
        student.__post_init__()
        await student.connect()
        answer = await student.join(since=True)
        assert answer["recovered"] is True
        assert "chat" not in answer
        replayed = answer["events"]
        assert [e["data"]["text"] for e in replayed] == missed
        assert [e["offset"] for e in replayed] == list(range(last_seen + 1, last_seen + 6))
        assert answer["position"]["offset"] == last_seen + 5
    finally:
        await teacher.close()
        await student.close()


async def test_reconnect_too_far_behind_or_in_another_epoch_gets_a_snapshot(
    start_app: AppFactory, engine_env: dict[str, Any]
) -> None:
    url, _ = await start_app(LIVE_HISTORY_SIZE="10", **engine_env)
    teacher = Member(url, token("room-2", "t", Role.TEACHER))
    try:
        await teacher.connect()
        first = await teacher.join()
        epoch = first["position"]["epoch"]
        for i in range(30):
            assert (await teacher.call("chat:send", {"text": f"m{i}"}))["ok"]
        # Snapshots come from the instance's view, which is exactly as far as its deliveries.
        await wait_until(lambda: teacher.chat_texts()[-1:] == ["m29"], what="the last message delivered")

        behind = await teacher.call("join", {"since": {"epoch": epoch, "offset": 1}})
        assert behind["ok"] and behind["recovered"] is False
        assert [m["text"] for m in behind["chat"]][-3:] == ["m27", "m28", "m29"]

        other_epoch = await teacher.call("join", {"since": {"epoch": "not-this-one", "offset": 29}})
        assert other_epoch["recovered"] is False and "chat" in other_epoch

        current = await teacher.call("join", {"since": behind["position"]})
        assert current["recovered"] is True and current["events"] == []
    finally:
        await teacher.close()
