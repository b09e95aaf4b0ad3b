"""An anonymous question's author reaches no student on any instance, in any payload: live events, join
snapshots, catch-up after a reconnect, acks. Asserted on the raw Socket.IO packets each client received.
Staff and the author themselves do see it (so the check would catch a leak)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rooms.identity import Role
from tests.support import Member, ServerProcess, joined, token, wait_until

pytestmark = pytest.mark.postgres

ROOM = "anon-room"
ASKER_ID = "anon-asker-7"
ASKER_NAME = "Secret Asker Name"


def packets(member: Member) -> list[Any]:
    """Every Socket.IO packet the member received, decoded (event arguments, ack values, join answers)."""
    decoded = []
    for raw in member.sio.raw:
        body = re.sub(r"^\d+", "", raw)
        if body[:1] in ("[", "{"):
            decoded.append(json.loads(body))
    return decoded


def objects_about(value: Any, question_id: str) -> list[dict[str, Any]]:
    """Every JSON object in ``value`` that describes the question (its ``id``)."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if value.get("id") == question_id:
            found.append(value)
        for v in value.values():
            found.extend(objects_about(v, question_id))
    elif isinstance(value, list):
        for v in value:
            found.extend(objects_about(v, question_id))
    return found


def carries_author(obj: dict[str, Any]) -> bool:
    text = json.dumps(obj)
    return ASKER_ID in text or ASKER_NAME in text


async def test_no_student_payload_on_any_instance_carries_an_anonymous_author(
    two_instances: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_instances
    teacher = Member(a.url, token(ROOM, "teacher", Role.TEACHER))
    assistant = Member(b.url, token(ROOM, "assistant", Role.ASSISTANT))
    asker = Member(a.url, token(ROOM, ASKER_ID, name=ASKER_NAME))
    watcher_a = Member(a.url, token(ROOM, "watcher-a"))
    watcher_b = Member(b.url, token(ROOM, "watcher-b"))
    reconnecting = Member(b.url, token(ROOM, "reconnecting"))
    members = [teacher, assistant, asker, watcher_a, watcher_b, reconnecting]
    late: list[Member] = []
    try:
        await joined(teacher, assistant, asker, watcher_a, watcher_b, reconnecting)
        ack = await asker.call("qa:ask", {"text": "Is it OK that I am lost?", "anonymous": True})
        assert ack["ok"], ack
        qid = ack["question"]["id"]
        named = await asker.call("qa:ask", {"text": "x" * 5, "anonymous": False})
        assert named["ok"] is False and named["error"]["code"] == "rate_limited"

        await reconnecting.close()
        steps: list[tuple[Member, str, dict[str, Any]]] = [
            (teacher, "qa:moderate", {"id": qid, "action": "approve"}),
            (watcher_a, "qa:vote", {"id": qid}),
            (watcher_b, "qa:vote", {"id": qid}),
            (assistant, "qa:answer", {"id": qid, "text": "Not at all.", "private": False}),
            (teacher, "qa:pin", {"id": qid}),
            (teacher, "qa:answer", {"id": qid, "text": "Come see me after class.", "private": True}),
            (assistant, "qa:moderate", {"id": qid, "action": "hide"}),
            (teacher, "qa:moderate", {"id": qid, "action": "reopen"}),
            (teacher, "qa:moderate", {"id": qid, "action": "answered_live"}),
        ]
        for actor, event, payload in steps:
            result = await actor.call(event, payload)
            assert result["ok"], (event, result)

        # A student who missed all of it catches up by offset; others join late on both instances.
        reconnecting.sio = type(reconnecting.sio)(reconnection=False)
        reconnecting.__post_init__()
        await reconnecting.connect()
        caught_up = await reconnecting.join(since=True)
        assert caught_up["recovered"] is True
        late = [Member(url, token(ROOM, f"late-{i}")) for i, url in enumerate((a.url, b.url))]
        await joined(*late)

        students = [watcher_a, watcher_b, reconnecting, *late]
        for member in [*students, teacher, assistant, asker]:
            await wait_until(lambda m=member: qid in m.qa()[0], what="the question reached every member")
        for student in students:
            about = [obj for p in packets(student) for obj in objects_about(p, qid)]
            assert about, "the student received the question"
            leaks = [obj for obj in about if carries_author(obj)]
            assert not leaks, f"an anonymous author reached a student: {leaks[0]}"
            assert all(obj.get("author") is None for obj in about if "author" in obj)
            assert all(json.dumps(obj).find("Come see me") < 0 for obj in about), "private answer stayed private"

        for control in (teacher, assistant, asker):
            about = [obj for p in packets(control) for obj in objects_about(p, qid)]
            assert any(carries_author(obj) for obj in about), "staff and the asker do see who asked"
    finally:
        for m in members + late:
            await m.close()
