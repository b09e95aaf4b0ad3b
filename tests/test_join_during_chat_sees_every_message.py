"""Members who join while chat is flowing, on either of two instances, end with exactly the messages that
were sent: the join snapshot (answered from the instance's room view) plus the events after its position,
with no gap and no duplicate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import Member, joined, token, wait_until

pytestmark = pytest.mark.postgres


def seen_by(member: Member) -> list[str]:
    """What a client shows: the snapshot's chat, then the chat events newer than its position."""
    snapshot: dict[str, Any] = member.snapshot or {}
    texts = [m["text"] for m in snapshot["chat"]]
    position = snapshot["position"]
    for event in member.events:
        if event["epoch"] == position["epoch"] and event["offset"] > position["offset"]:
            if event["type"] == "chat.message":
                texts.append(event["data"]["text"])
    return texts


async def test_members_joining_mid_chat_see_every_message_once(
    pg_url: str, redis_url: str, start_app: AppFactory
) -> None:
    url_a, _ = await start_app(LIVE_REDIS_URL=redis_url, LIVE_DATABASE_URL=pg_url, LIVE_INSTANCE_ID="a")
    url_b, _ = await start_app(LIVE_REDIS_URL=redis_url, LIVE_DATABASE_URL=pg_url, LIVE_INSTANCE_ID="b")
    teacher = Member(url_a, token("busy", "t", Role.TEACHER))
    assistant = Member(url_b, token("busy", "as", Role.ASSISTANT))
    await joined(teacher, assistant)
    sent: list[str] = []
    joiners: list[Member] = []

    async def chatter() -> None:
        for i in range(60):
            # Two senders, alternating: each stays inside its connection's burst of 40 events.
            ack = await (teacher, assistant)[i % 2].call("chat:send", {"text": f"m{i}"})
            assert ack["ok"], ack
            sent.append(f"m{i}")
            await asyncio.sleep(0.005)

    async def join_one(i: int) -> None:
        await asyncio.sleep(0.01 * i)
        member = Member(url_a if i % 2 else url_b, token("busy", f"s{i}"))
        joiners.append(member)
        await member.connect()
        await member.join()

    try:
        await asyncio.gather(chatter(), *(join_one(i) for i in range(30)))
        for member in joiners:
            await wait_until(lambda m=member: seen_by(m)[-1:] == sent[-1:], what="the last message")
            assert seen_by(member) == sent, f"{member.jwt[-8:]} saw a gap or a duplicate"
    finally:
        for member in [teacher, assistant, *joiners]:
            await member.close()
