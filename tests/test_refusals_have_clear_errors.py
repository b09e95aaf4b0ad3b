"""Bad tokens, missing grants, foreign Origins, oversized, malformed and flooding events are refused with a
clear error code, and change nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
import socketio

from live.app import Services
from rooms.identity import Grants, Role
from rooms.service import RoomStatus
from tests.conftest import AppFactory
from tests.support import TEST_SECRET, Member, joined, token, wait_until


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "s1",
        "name": "S",
        "room": "algebra",
        "role": "student",
        "grants": {"chat": True},
        "aud": "live-classroom",
        "iat": now,
        "exp": now + 600,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


BAD_TOKENS = {
    "expired": jwt.encode(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), TEST_SECRET, "HS256"),
    "forged": jwt.encode(claims(), "some-other-secret-that-is-long-enough-xxxxxxxx", "HS256"),
    "alg none": jwt.encode(claims(), None, "none"),
    "wrong audience": jwt.encode(claims(aud="someone-else"), TEST_SECRET, "HS256"),
    "no expiry": jwt.encode(claims(exp=None), TEST_SECRET, "HS256"),
    "bad role": jwt.encode(claims(role="superuser"), TEST_SECRET, "HS256"),
    "garbage": "not-a-jwt",
    "empty": "",
}


@pytest.fixture
async def room(start_app: AppFactory) -> tuple[str, Services]:
    url, services = await start_app()
    await services.rooms.create("Algebra", room_id="algebra")
    await services.rooms.go_live("algebra")
    return url, services


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_untrusted_tokens_are_refused(room: tuple[str, Services], kind: str) -> None:
    url, services = room
    refusal = await Member(url, BAD_TOKENS[kind]).refused()
    assert refusal["code"] == "unauthorized", refusal
    assert services.presence.local_count("algebra") == 0


async def test_student_token_for_unknown_room_is_refused_and_creates_nothing(room: tuple[str, Services]) -> None:
    url, services = room
    refusal = await Member(url, token("nowhere", "s1")).refused()
    assert refusal["code"] == "room_not_found"
    assert await services.rooms.get("nowhere") is None


async def test_the_room_comes_from_the_token_never_from_the_client(room: tuple[str, Services]) -> None:
    url, services = room
    await services.rooms.create("Other", room_id="other")
    outsider = Member(url, token("other", "o1"))
    student = Member(url, token("algebra", "s1"))
    try:
        await outsider.connect()
        answer = await outsider.call("join", {"room": "algebra"})
        assert answer["ok"] is False and answer["error"]["code"] == "invalid"
        await outsider.join()
        await student.connect()
        await student.join()
        assert (await student.call("chat:send", {"text": "for algebra only"}))["ok"]
        await wait_until(lambda: student.chat_texts() == ["for algebra only"], what="own room gets it")
        await asyncio.sleep(0.2)
        assert outsider.chat_texts() == []
    finally:
        await outsider.close()
        await student.close()


async def test_student_calling_staff_actions_is_forbidden_and_nothing_changes(room: tuple[str, Services]) -> None:
    url, services = room
    teacher = Member(url, token("algebra", "t1", Role.TEACHER))
    student = Member(url, token("algebra", "s1"))
    other = Member(url, token("algebra", "s2"))
    try:
        await joined(teacher, student, other)
        sent = await teacher.call("chat:send", {"text": "keep me"})
        message_id = sent["message"]["id"]
        await wait_until(lambda: other.chat_texts() == ["keep me"], what="teacher's message delivered")
        events_before = len(other.events)
        for event, payload in [
            ("chat:delete", {"id": message_id}),
            ("member:remove", {"user_id": "s2", "reason": "no"}),
            ("room:end", {}),
            ("room:go_live", {}),
        ]:
            answer = await student.call(event, payload)
            assert answer["ok"] is False and answer["error"]["code"] == "forbidden", (event, answer)
        await asyncio.sleep(0.2)
        assert other.sio.connected
        assert (await services.rooms.require("algebra")).status is RoomStatus.LIVE
        assert "s2" not in await services.rooms.banned_users("algebra")
        assert len(other.events) == events_before, "no event came out of the refused actions"
        assert [m["text"] for m in (await other.join())["chat"]] == ["keep me"]
    finally:
        for m in (teacher, student, other):
            await m.close()


async def test_token_without_chat_grant_cannot_chat(room: tuple[str, Services]) -> None:
    url, _ = room
    muted = Member(url, token("algebra", "viewer", grants=Grants()))
    try:
        await muted.connect()
        await muted.join()
        answer = await muted.call("chat:send", {"text": "hi"})
        assert answer["error"]["code"] == "forbidden"
    finally:
        await muted.close()


async def test_websocket_from_a_foreign_origin_is_refused(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_ALLOWED_ORIGINS="https://school.example")
    await services.rooms.create("Algebra", room_id="algebra")
    foreign = Member(url, token("algebra", "s1"))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await foreign.connect(headers={"Origin": "https://evil.example"})
    assert services.metrics.connections._value.get() == 0
    for origin in ("https://school.example", url):
        allowed = Member(url, token("algebra", "s1"))
        await allowed.connect(headers={"Origin": origin})
        await allowed.close()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["just a string"], "invalid"),
        ([["a", "list"]], "invalid"),
        ([{}], "invalid"),
        ([{"text": 5}], "invalid"),
        ([{"text": "hi", "extra": 1}], "invalid"),
        ([{"text": "hi"}, {"second": "arg"}], "invalid"),
        ([{"text": "x" * 501}], "too_long"),
        ([{"text": "   "}], "too_long"),
        ([{"text": "x" * 5000}], "too_large"),
    ],
)
async def test_malformed_or_oversized_events_are_refused_and_store_nothing(
    room: tuple[str, Services], args: list[Any], code: str
) -> None:
    url, _ = room
    student = Member(url, token("algebra", "s1"))
    try:
        await student.connect()
        await student.join()
        answer = await student.sio.call("chat:send", tuple(args) if len(args) > 1 else args[0], timeout=5)
        assert answer["ok"] is False and answer["error"]["code"] == code, answer
        await asyncio.sleep(0.1)
        assert student.chat_texts() == []
        assert (await student.join())["chat"] == []
    finally:
        await student.close()


async def test_events_before_join_and_unknown_events_are_refused(room: tuple[str, Services]) -> None:
    url, _ = room
    student = Member(url, token("algebra", "s1"))
    try:
        await student.connect()
        assert (await student.call("chat:send", {"text": "too early"}))["error"]["code"] == "not_joined"
        assert (await student.call("teleport", {}))["error"]["code"] == "unknown_event"
        # Without an acknowledgement callback, the error comes back as an `error` event.
        await student.sio.emit("chat:send", {"text": "too early"})
        await wait_until(lambda: any(name == "error" for name, _ in student.other), what="error event")
        error = next(data for name, data in student.other if name == "error")
        assert error["code"] == "not_joined" and error["event"] == "chat:send"
    finally:
        await student.close()


async def test_chat_flood_past_the_rate_limit_is_refused_with_retry_after(room: tuple[str, Services]) -> None:
    url, _ = room
    student = Member(url, token("algebra", "s1"))
    try:
        await student.connect()
        await student.join()
        answers = [await student.call("chat:send", {"text": f"spam {i}"}) for i in range(25)]
        accepted = [a for a in answers if a["ok"]]
        refused = [a["error"] for a in answers if not a["ok"]]
        assert len(accepted) == 20, "students get 20 messages per 30 s"
        assert {e["code"] for e in refused} == {"rate_limited"} and all(e["retry_after_ms"] > 0 for e in refused)
        await wait_until(lambda: len(student.chat_texts()) == 20, what="accepted messages")
        await asyncio.sleep(0.1)
        assert len(student.chat_texts()) == 20, "refused messages were not published"
    finally:
        await student.close()


async def test_event_flood_on_one_connection_is_refused(room: tuple[str, Services]) -> None:
    url, _ = room
    student = Member(url, token("algebra", "s1"))
    try:
        await student.connect()
        await student.join()
        started = time.monotonic()
        answers = await asyncio.gather(*(student.call("chat:delete", {"id": "x"}) for _ in range(100)))
        elapsed = time.monotonic() - started
        codes = [a["error"]["code"] for a in answers]
        let_through = sum(code != "rate_limited" for code in codes)
        assert set(codes) == {"forbidden", "rate_limited"}
        assert let_through <= 40 + 20 * elapsed + 1, "a burst of 40, then 20 per second"
        rate_limited = next(a["error"] for a in answers if a["error"]["code"] == "rate_limited")
        assert rate_limited["retry_after_ms"] > 0
    finally:
        await student.close()


async def test_chat_text_that_looks_like_html_is_stored_and_sent_verbatim(room: tuple[str, Services]) -> None:
    url, _ = room
    student = Member(url, token("algebra", "s1"))
    try:
        await student.connect()
        await student.join()
        text = "<img src=x onerror=alert(1)>"
        assert (await student.call("chat:send", {"text": text}))["message"]["text"] == text
        await wait_until(lambda: student.chat_texts() == [text], what="verbatim text")
    finally:
        await student.close()


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("join", {"since": {"epoch": 5, "offset": 1}}),
        ("join", {"since": {"epoch": "e", "offset": -1}}),
        ("join", {"since": "yesterday"}),
        ("chat:delete", {}),
        ("chat:delete", {"id": 5}),
        ("chat:delete", {"id": "x" * 33}),
        ("member:remove", {"user_id": "two words"}),
        ("member:remove", {"user_id": "s2", "reason": "x" * 201}),
        ("member:remove", {"user_id": "t1"}),  # staff removing themselves
        ("room:go_live", {"now": True}),
        ("room:end", {"reason": "done"}),
        ("qa:moderate", {"id": "q" + "0" * 16, "action": "delete"}),
        ("qa:moderate", {"id": "not-a-question", "action": "approve"}),
        ("qa:answer", {"id": "q" + "0" * 16, "text": 5}),
        ("qa:answer", {"id": "q" + "0" * 16, "text": "   "}),
        ("qa:pin", {}),
        ("qa:settings", {"ask_interval_s": -1}),
        ("qa:settings", {"ask_interval_s": 3601}),
        ("qa:settings", {"auto_approve": 1}),
        ("qa:ask", {"text": "ok", "extra": True}),
        ("qa:ask", {"text": "ok", "coins": "10"}),
        ("gift:send", {"gift": "coffee", "key": "k", "count": "2"}),
        ("tip:send", {"coins": 5}),
        ("message:paid", {"text": "hi", "coins": "50", "key": "k"}),
        ("wallet:get", {"extra": 1}),
        ("wallet:checkout", {"pack": 5}),
        ("wallet:limits", {"daily": 0}),
        ("wallet:limits", {"hide_on_boards": "yes"}),
        ("board:get", {"scope": 1}),
    ],
)
async def test_staff_events_with_bad_payloads_are_refused_and_change_nothing(
    room: tuple[str, Services], event: str, payload: dict[str, Any]
) -> None:
    url, services = room
    teacher = Member(url, token("algebra", "t1", Role.TEACHER))
    try:
        await joined(teacher)
        answer = await teacher.call(event, payload)
        assert answer["ok"] is False and answer["error"]["code"] == "invalid", answer
        assert teacher.sio.connected
        assert (await services.rooms.require("algebra")).status is RoomStatus.LIVE
        assert await services.rooms.banned_users("algebra") == set()
    finally:
        await teacher.close()
