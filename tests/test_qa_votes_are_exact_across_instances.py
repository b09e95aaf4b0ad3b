"""500 students on two server processes upvote one question at the same moment: every member on both
instances ends at exactly 500, a second vote changes nothing, taking the votes back lands at 0 (in the
live view, in fresh joins on both instances, and in SQL's record)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from rooms.identity import Role
from tests.support import ADMIN_AUTH, Member, ServerProcess, joined, joined_together, token, wait_until

pytestmark = pytest.mark.postgres

STUDENTS = 500


async def exported_votes(url: str, room: str, question_id: str) -> int:
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http, http.get(f"{url}/api/rooms/{room}/questions") as r:
        assert r.status == 200
        rows = (await r.json())["questions"]
    return int(next(row["votes"] for row in rows if row["id"] == question_id))


async def everyone_sees(members: list[Member], question_id: str, votes: int) -> None:
    await wait_until(
        lambda: all(m.votes(question_id) == votes for m in members), timeout=30, what=f"{votes} votes everywhere"
    )


async def test_500_simultaneous_votes_over_two_instances_count_exactly(
    two_instances: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_instances
    room = "vote-storm"
    teacher = Member(a.url, token(room, "teacher", Role.TEACHER))
    asker = Member(b.url, token(room, "asker"))
    students = [Member((a, b)[i % 2].url, token(room, f"s{i}")) for i in range(STUDENTS)]
    members = [teacher, asker, *students]
    try:
        await joined(teacher)
        assert (await teacher.call("qa:settings", {"auto_approve": True}))["ok"]
        await joined(asker)
        asked = await asker.call("qa:ask", {"text": "Will this be on the exam?"})
        assert asked["ok"], asked
        qid = asked["question"]["id"]
        await joined_together(students)
        await everyone_sees(members, qid, 0)

        acks = await asyncio.gather(*(s.call("qa:vote", {"id": qid}) for s in students))
        assert all(ack["ok"] and ack["voted"] for ack in acks), [a for a in acks if not a["ok"]][:3]
        assert sorted(ack["votes"] for ack in acks) == list(range(1, STUDENTS + 1)), "each vote counted once"
        await everyone_sees(members, qid, STUDENTS)

        again = await asyncio.gather(*(s.call("qa:vote", {"id": qid, "up": True}) for s in students))
        assert all(ack["ok"] and ack["votes"] == STUDENTS for ack in again), "a second vote changes nothing"
        for url in (a.url, b.url):
            late = Member(url, token(room, f"late-{url[-5:]}"))
            await joined(late)
            assert late.votes(qid) == STUDENTS, "a fresh join on either instance shows the same count"
            await late.close()
        await wait_until_exported(a.url, room, qid, STUDENTS)

        back = await asyncio.gather(*(s.call("qa:vote", {"id": qid, "up": False}) for s in students))
        assert all(ack["ok"] and not ack["voted"] for ack in back)
        await everyone_sees(members, qid, 0)
        await wait_until_exported(b.url, room, qid, 0)
    finally:
        await asyncio.gather(*(m.close() for m in members))


async def wait_until_exported(url: str, room: str, question_id: str, votes: int) -> None:
    """SQL is written behind by both instances; it reaches the same count shortly after."""
    for _ in range(100):
        if await exported_votes(url, room, question_id) == votes:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"SQL never showed {votes} votes; last {await exported_votes(url, room, question_id)}")
