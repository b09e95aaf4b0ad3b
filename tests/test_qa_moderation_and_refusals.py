"""Q&A rules on one instance (memory engine, SQLite): who may do what, what students can see, limits that
answer with clear codes and store nothing, private answers, settings, catch-up, and the report export."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import aiohttp

from rooms.identity import Grants, Role
from tests.conftest import AppFactory
from tests.support import ADMIN_AUTH, Member, joined, token, wait_until

ROOM = "qa-rules"


async def export(url: str, fmt: str = "json") -> Any:
    async with (
        aiohttp.ClientSession(headers=ADMIN_AUTH) as http,
        http.get(f"{url}/api/rooms/{ROOM}/questions", params={"format": fmt}) as r,
    ):
        assert r.status == 200, await r.text()
        return (await r.json())["questions"] if fmt == "json" else await r.text()


def raw_text(member: Member) -> str:
    return "\n".join(member.sio.raw)


async def test_students_cannot_moderate_and_see_no_pending_question(start_app: AppFactory) -> None:
    url, _ = await start_app()
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER))
    asker, other = Member(url, token(ROOM, "asker")), Member(url, token(ROOM, "other"))
    late = Member(url, token(ROOM, "late"))
    try:
        await joined(teacher, asker, other)
        ack = await asker.call("qa:ask", {"text": "A question waiting for moderation"})
        assert ack["ok"] and ack["question"]["state"] == "pending"
        qid = ack["question"]["id"]
        await wait_until(lambda: qid in teacher.qa()[0], what="staff see the moderation queue")
        await wait_until(lambda: qid in asker.qa()[0], what="the asker sees their own pending question")
        assert asker.qa()[0][qid]["mine"] is True

        for event, payload in [
            ("qa:moderate", {"id": qid, "action": "approve"}),
            ("qa:moderate", {"id": qid, "action": "hide"}),
            ("qa:answer", {"id": qid, "text": "I answer myself"}),
            ("qa:pin", {"id": qid}),
            ("qa:settings", {"auto_approve": True}),
        ]:
            refused = await other.call(event, payload)
            assert refused == {"ok": False, "error": refused["error"]} and refused["error"]["code"] == "forbidden"

        assert (await other.call("qa:vote", {"id": qid}))["error"]["code"] == "invalid_state"
        await joined(late)
        assert qid not in late.qa()[0]
        for student in (other, late):
            assert "A question waiting" not in raw_text(student), "a pending question reaches no other student"
            assert qid not in student.qa()[0]
        assert teacher.qa()[0][qid]["state"] == "pending", "nothing a student sent changed it"
        skips = [e for e in other.events if e["type"] == "skip"]
        assert skips and all(e["data"] == {} for e in skips), "other students get an empty skip, offsets stay whole"
    finally:
        for m in (teacher, asker, other, late):
            await m.close()


async def test_limits_answer_with_codes_and_store_nothing(start_app: AppFactory) -> None:
    url, _ = await start_app(LIVE_QA_MAX_CHARS="40")
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER))
    student = Member(url, token(ROOM, "student"))
    no_ask = Member(url, token(ROOM, "no-ask", grants=Grants(chat=True)))
    try:
        await joined(teacher, student, no_ask)
        too_long = await student.call("qa:ask", {"text": "y" * 41})
        empty = await student.call("qa:ask", {"text": "   "})
        wrong_type = await student.call("qa:ask", {"text": "ok", "anonymous": "yes"})
        no_grant = await no_ask.call("qa:ask", {"text": "may I?"})
        assert [r["error"]["code"] for r in (too_long, empty, wrong_type, no_grant)] == [
            "too_long",
            "invalid",
            "invalid",
            "forbidden",
        ]
        assert await export(url) == [], "refusals store nothing"

        first = await student.call("qa:ask", {"text": "The first one"})
        second = await student.call("qa:ask", {"text": "The second one"})
        assert first["ok"]
        assert second["error"]["code"] == "rate_limited" and second["error"]["retry_after_ms"] > 50_000
        staff_first = await teacher.call("qa:ask", {"text": "Staff are not limited"})
        staff_second = await teacher.call("qa:ask", {"text": "Not even twice"})
        assert staff_first["ok"] and staff_second["ok"]
        assert staff_first["question"]["state"] == "published", "staff questions need no approval"
        texts = sorted(row["text"] for row in await export(url))
        assert texts == ["Not even twice", "Staff are not limited", "The first one"]

        bad_id = await student.call("qa:vote", {"id": "nope"})
        unknown = await student.call("qa:vote", {"id": "q" + "0" * 16})
        own = await teacher.call("qa:vote", {"id": staff_first["question"]["id"]})
        assert [r["error"]["code"] for r in (bad_id, unknown, own)] == ["invalid", "not_found", "own_question"]
        wrong_state = await teacher.call("qa:moderate", {"id": first["question"]["id"], "action": "answered_live"})
        assert wrong_state["error"] == {
            "code": "invalid_state",
            "message": "cannot answered_live a pending question",
            "state": "pending",
        }
    finally:
        for m in (teacher, student, no_ask):
            await m.close()


async def test_private_answer_reaches_only_the_asker_and_staff(start_app: AppFactory) -> None:
    url, _ = await start_app()
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER))
    asker, other = Member(url, token(ROOM, "asker")), Member(url, token(ROOM, "other"))
    try:
        await joined(teacher)
        async with (
            aiohttp.ClientSession(headers=ADMIN_AUTH) as http,
            http.patch(f"{url}/api/rooms/{ROOM}", json={"qa_auto_approve": True}) as r,
        ):
            assert r.status == 200 and (await r.json())["qa_auto_approve"] is True
        await joined(asker, other)
        assert other.snapshot is not None and other.snapshot["room"]["qa_auto_approve"] is True
        qid = (await asker.call("qa:ask", {"text": "Can you check my homework?"}))["question"]["id"]
        answered = await teacher.call("qa:answer", {"id": qid, "text": "Your step 3 is wrong", "private": True})
        assert answered["ok"] and answered["question"]["state"] == "answered"
        for m in (teacher, asker, other):
            await wait_until(lambda m=m: m.qa()[0].get(qid, {}).get("state") == "answered", what="answered")
        assert asker.qa()[0][qid]["answer"]["text"] == "Your step 3 is wrong"
        assert teacher.qa()[0][qid]["answer"]["text"] == "Your step 3 is wrong"
        assert other.qa()[0][qid]["answer"] == {**asker.qa()[0][qid]["answer"], "text": None}
        assert "step 3" not in raw_text(other)

        dismissed_q = (await teacher.call("qa:ask", {"text": "Off-topic"}))["question"]["id"]
        await wait_until(lambda: dismissed_q in other.qa()[0], what="published")
        assert (await teacher.call("qa:pin", {"id": dismissed_q}))["ok"]
        await wait_until(lambda: other.qa()[1] == dismissed_q, what="pinned everywhere")
        assert (await teacher.call("qa:moderate", {"id": dismissed_q, "action": "dismiss"}))["ok"]
        await wait_until(lambda: dismissed_q not in other.qa()[0], what="a dismissed question leaves students")
        assert other.qa()[1] is None, "and is no longer pinned"
        assert teacher.qa()[0][dismissed_q]["state"] == "dismissed", "staff still see it"
    finally:
        for m in (teacher, asker, other):
            await m.close()


async def test_reconnect_catches_up_and_export_has_everything(start_app: AppFactory) -> None:
    url, _ = await start_app()
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER))
    anon = Member(url, token(ROOM, "anon", name="Anon Ymous"))
    voter = Member(url, token(ROOM, "voter"))
    try:
        await joined(teacher, anon, voter)
        qid = (await anon.call("qa:ask", {"text": "=HYPERLINK(1)", "anonymous": True}))["question"]["id"]
        await voter.close()
        assert (await teacher.call("qa:moderate", {"id": qid, "action": "approve"}))["ok"]
        voter.sio = type(voter.sio)(reconnection=False)
        voter.__post_init__()
        await voter.connect()
        assert (await voter.join(since=True))["recovered"] is True
        assert voter.qa()[0][qid]["author"] is None
        ack = await voter.call("qa:vote", {"id": qid})
        assert ack == {"ok": True, "id": qid, "votes": 1, "voted": True, "seq": ack["seq"]}
        await wait_until(lambda: teacher.votes(qid) == 1, what="the count reaches staff")
        rejoined = Member(url, token(ROOM, "voter"))
        await joined(rejoined)
        assert rejoined.snapshot is not None and rejoined.snapshot["qa"]["voted"] == [qid], "votes survive rejoin"
        await rejoined.close()

        rows = await export(url)
        assert len(rows) == 1
        row = rows[0]
        assert (row["user_id"], row["name"], row["anonymous"], row["votes"], row["state"]) == (
            "anon",
            "Anon Ymous",
            True,
            1,
            "published",
        ), "the report shows staff who asked, also for anonymous questions"
        table = list(csv.DictReader(io.StringIO(await export(url, "csv"))))
        assert table[0]["text"] == "'=HYPERLINK(1)", "formulas are neutralised in the CSV"
        assert table[0]["votes"] == "1"
        assert json.dumps(rows)
    finally:
        for m in (teacher, anon, voter):
            await m.close()
