"""Paid questions: the coins attached to a question are held when it is asked, go to the teacher (and the
platform's share) when it is answered, and go back when it is dismissed or the lesson ends unanswered.
A question whose coins cannot be held is not stored."""

from __future__ import annotations

import aiohttp

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import ADMIN_AUTH, Member, joined, token, wait_until

ROOM = "paid-qa"


async def wallet(url: str, user: str) -> dict[str, int]:
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http, http.get(f"{url}/api/wallets/{user}") as r:
        return dict(await r.json())


async def test_paid_questions_are_captured_or_released(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_QA_ASK_INTERVAL_S="0")
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER))
    ana, ben = Member(url, token(ROOM, "ana")), Member(url, token(ROOM, "ben"))
    try:
        await joined(teacher, ana, ben)
        async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http:
            async with http.post(f"{url}/api/wallets/ana/credit", json={"coins": 300, "idempotency_key": "a"}) as r:
                assert r.status == 201

        poor = await ben.call("qa:ask", {"text": "Paid but broke", "coins": 10})
        assert poor["error"]["code"] == "insufficient_funds"
        assert await services.qa.export(ROOM) == [], "a question whose coins cannot be held is not stored"
        bad = await ana.call("qa:ask", {"text": "Negative", "coins": -5})
        assert bad["error"]["code"] == "bad_amount"

        answered = (await ana.call("qa:ask", {"text": "Answer me first", "coins": 100}))["question"]
        dismissed = (await ana.call("qa:ask", {"text": "Dismiss me", "coins": 50}))["question"]
        unanswered = (await ana.call("qa:ask", {"text": "Nobody answers", "coins": 20}))["question"]
        assert answered["paid"] == 100
        assert await wallet(url, "ana") == {"user_id": "ana", "balance": 130, "held": 170, "earnings": 0}
        await wait_until(lambda: answered["id"] in teacher.qa()[0], what="staff see the paid question")
        assert teacher.qa()[0][answered["id"]]["paid"] == 100

        for qid in (answered["id"], dismissed["id"], unanswered["id"]):
            assert (await teacher.call("qa:moderate", {"id": qid, "action": "approve"}))["ok"]
        assert (await teacher.call("qa:answer", {"id": answered["id"], "text": "Sure."}))["ok"]
        assert (await teacher.call("qa:moderate", {"id": dismissed["id"], "action": "dismiss"}))["ok"]
        assert await wallet(url, "ana") == {"user_id": "ana", "balance": 180, "held": 20, "earnings": 0}
        assert (await wallet(url, "teacher"))["earnings"] == 70

        # Answering again, or reopening and answering, never pays twice.
        assert (await teacher.call("qa:answer", {"id": answered["id"], "text": "Sure, again."}))["ok"]
        assert (await teacher.call("qa:moderate", {"id": dismissed["id"], "action": "reopen"}))["ok"]
        assert (await teacher.call("qa:moderate", {"id": dismissed["id"], "action": "answered_live"}))["ok"]
        assert (await wallet(url, "teacher"))["earnings"] == 70

        assert (await teacher.call("room:end", {}))["ok"]
        assert await wallet(url, "ana") == {"user_id": "ana", "balance": 200, "held": 0, "earnings": 0}
        assert await services.ledger.total() == 0
    finally:
        for m in (teacher, ana, ben):
            await m.close()
