"""Two server processes on one redis-server and PostgreSQL: chat crosses instances in order, head count
agrees on both, and staff actions reach members on the other instance."""

from __future__ import annotations

import pytest

from rooms.identity import Role
from tests.support import Member, RedisServer, ServerProcess, joined, token, wait_until

pytestmark = pytest.mark.postgres


async def test_teacher_and_students_on_different_instances_chat_in_order(
    two_instances: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
) -> None:
    a, b = two_instances
    teacher = Member(a.url, token("maths", "t1", Role.TEACHER))
    students = [Member(b.url, token("maths", f"s{i}")) for i in range(3)]
    members = [teacher, *students]
    try:
        await teacher.connect()
        await teacher.join()
        for s in students:
            await s.connect()
            await s.join()

        sent: list[str] = []
        for i in range(20):
            sender = members[i % len(members)]
            text = f"message {i} from {sender.jwt[-6:]}"
            ack = await sender.call("chat:send", {"text": text})
            assert ack["ok"], ack
            sent.append(text)

        for m in members:
            await wait_until(lambda m=m: len(m.chat_texts()) == len(sent), what="all messages on every member")
            assert m.chat_texts() == sent, "every member sees every message, in the order they were acknowledged"
            offsets = [e["offset"] for e in m.events]
            assert offsets == sorted(set(offsets)), "no duplicates, offsets rising"

        # Head count is the same number on both instances: 4 unique users.
        for m in members:
            await wait_until(lambda m=m: bool(m.counts) and m.counts[-1] == 4, what="head count 4")
        assert (await a.readyz())[1]["ready"] and (await b.readyz())[1]["ready"]

        # A late student on instance A gets the recent history in its join snapshot.
        late = Member(a.url, token("maths", "late"))
        members.append(late)
        await late.connect()
        snapshot = await late.join()
        assert [m["text"] for m in snapshot["chat"]] == sent
        assert snapshot["head_count"] == 5
    finally:
        for m in members:
            await m.close()


async def test_student_removed_by_staff_on_other_instance_is_disconnected_and_stays_out(
    two_instances: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_instances
    teacher = Member(a.url, token("history", "t1", Role.TEACHER))
    rowdy = Member(b.url, token("history", "rowdy"))
    calm = Member(b.url, token("history", "calm"))
    try:
        await joined(teacher, rowdy, calm)
        ack = await teacher.call("member:remove", {"user_id": "rowdy", "reason": "spam"})
        assert ack == {"ok": True}
        await wait_until(lambda: not rowdy.sio.connected, what="removed student disconnected on instance B")
        assert ("removed", {"reason": "spam"}) in rowdy.other
        assert calm.sio.connected
        await wait_until(lambda: any(e["type"] == "member.removed" for e in calm.events), what="others told")

        refusal = await Member(b.url, token("history", "rowdy")).refused()
        assert refusal["code"] == "banned"
    finally:
        for m in (teacher, rowdy, calm):
            await m.close()


async def test_ending_the_room_closes_connections_on_every_instance(
    two_instances: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_instances
    teacher = Member(a.url, token("physics", "t1", Role.TEACHER))
    student = Member(b.url, token("physics", "s1"))
    try:
        await joined(teacher, student)
        ack = await teacher.call("room:end", {})
        assert ack["ok"] and ack["room"]["status"] == "ended"
        await wait_until(lambda: not student.sio.connected and not teacher.sio.connected, what="everyone closed")
        assert any(e["type"] == "room.status" and e["data"]["status"] == "ended" for e in student.events)
        assert (await Member(b.url, token("physics", "s2")).refused())["code"] == "room_ended"
    finally:
        for m in (teacher, student):
            await m.close()


async def test_staff_delete_removes_a_message_everywhere(two_instances: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_instances
    assistant = Member(a.url, token("art", "as1", Role.ASSISTANT))
    student = Member(b.url, token("art", "s1"))
    try:
        await joined(assistant, student)
        sent = await student.call("chat:send", {"text": "rude words"})
        kept = await student.call("chat:send", {"text": "fine words"})
        assert (await student.call("chat:delete", {"id": sent["message"]["id"]}))["error"]["code"] == "forbidden"
        assert (await assistant.call("chat:delete", {"id": "no-such-id"}))["error"]["code"] == "not_found"
        assert await assistant.call("chat:delete", {"id": sent["message"]["id"]}) == {"ok": True}
        deleted_id = sent["message"]["id"]
        for m in (assistant, student):
            await wait_until(
                lambda m=m: any(e["type"] == "chat.deleted" and e["data"]["id"] == deleted_id for e in m.events),
                what="deletion reaches both instances",
            )
        late = Member(a.url, token("art", "late"))
        await late.connect()
        assert [c["id"] for c in (await late.join())["chat"]] == [kept["message"]["id"]]
        await late.close()
    finally:
        for m in (assistant, student):
            await m.close()
