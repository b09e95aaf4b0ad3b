"""Redis is killed and restarted without persistence: the Q&A comes back from SQL's record, with every
question's state, answer and exact vote count, and a student who had voted still cannot vote twice."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from rooms.identity import Role
from tests.support import ADMIN_AUTH, Member, RedisServer, ServerProcess, joined, token, wait_until

pytestmark = pytest.mark.postgres

ROOM = "qa-restart"


async def exported(url: str) -> dict[str, dict[str, object]]:
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http, http.get(f"{url}/api/rooms/{ROOM}/questions") as r:
        return {row["id"]: row for row in (await r.json())["questions"]}


async def test_questions_and_votes_survive_a_redis_restart(
    two_instances: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
) -> None:
    a, b = two_instances
    teacher = Member(a.url, token(ROOM, "teacher", Role.TEACHER))
    students = [Member((a, b)[i % 2].url, token(ROOM, f"s{i}")) for i in range(6)]
    after: list[Member] = []
    try:
        await joined(teacher, *students)
        asked = [(await s.call("qa:ask", {"text": f"Question {i}"}))["question"]["id"] for i, s in enumerate(students)]
        q0, q1, q2 = asked[:3]
        for qid in (q0, q1):
            assert (await teacher.call("qa:moderate", {"id": qid, "action": "approve"}))["ok"]
        assert (await teacher.call("qa:answer", {"id": q1, "text": "Yes.", "private": False}))["ok"]
        assert (await teacher.call("qa:moderate", {"id": q2, "action": "dismiss"}))["ok"]
        for s in students[1:5]:
            assert (await s.call("qa:vote", {"id": q0}))["ok"]
        assert (await students[0].call("qa:vote", {"id": q1}))["ok"]
        await wait_until(lambda: teacher.votes(q0) == 4 and teacher.votes(q1) == 1, what="counts before the crash")
        before = teacher.qa()[0]

        deadline = time.monotonic() + 10
        while (await exported(b.url)).get(q0, {}).get("votes") != 4:  # written behind within a moment
            assert time.monotonic() < deadline, "SQL never caught up"
            await asyncio.sleep(0.1)

        redis_server.kill()
        await asyncio.sleep(0.5)
        redis_server.start()
        for server in (a, b):
            await server.ready_again()
        # Both instances find the new epoch and tell their members to reload; join after that.
        await wait_until(lambda: all(s.reloads for s in students), timeout=15, what="members told to reload")

        after = [Member(url, token(ROOM, f"after-{i}", Role.ASSISTANT)) for i, url in enumerate((a.url, b.url))]
        await joined(*after)
        for member in after:
            restored = member.qa()[0]
            assert {qid: (q["state"], q["votes"], q["answer"]) for qid, q in restored.items()} == {
                qid: (q["state"], q["votes"], q["answer"]) for qid, q in before.items()
            }, "every question, state, answer and count is back, on both instances"

        again = await students[1].call("qa:vote", {"id": q0})
        assert again["ok"] and again["votes"] == 4, "a vote from before the restart still counts once"
        new = await students[5].call("qa:vote", {"id": q0})
        assert new["ok"] and new["votes"] == 5
        await wait_until(lambda: all(m.votes(q0) == 5 for m in after), what="new votes reach everyone")
    finally:
        for m in [teacher, *students, *after]:
            await m.close()
