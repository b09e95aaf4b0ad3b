"""Media events over the room socket refuse bad input with clear codes and create nothing: a student
publishing, a malformed or oversized SDP, an answer with no offer waiting, unknown fields, a student
inviting on stage."""

from __future__ import annotations

from tests.conftest import AppFactory
from tests.media_support import lesson


async def test_media_events_refuse_bad_input(start_app: AppFactory) -> None:
    url, services = await start_app()
    teacher, (student,) = await lesson(url, "refusals", 1)
    try:
        cases = [
            (student, "media:publish", {"sdp": "v=0\r\n" * 5}, "forbidden"),
            (teacher, "media:publish", {"sdp": "this is not an SDP offer"}, "bad_sdp"),
            (teacher, "media:publish", {"sdp": "v=0\r\n" + "a=x\r\n" * 7000}, "too_large"),
            (teacher, "media:publish", {"sdp": "v=0\r\n" * 5, "stream": "webcam"}, "invalid"),
            (teacher, "media:publish", {}, "invalid"),
            (student, "media:answer", {"sdp": "v=0\r\n" * 5}, "invalid_state"),
            (student, "media:watch", {"extra": 1}, "invalid"),
            (student, "stage:invite", {"user_id": "s0"}, "forbidden"),
            (teacher, "stage:invite", {"user_id": "not a user id!"}, "invalid"),
            (student, "stage:remove", {"user_id": "t1"}, "forbidden"),
        ]
        for member, event, payload, code in cases:
            ack = await member.call(event, payload)
            assert not ack["ok"] and ack["error"]["code"] == code, (event, payload, ack)
        figures = services.media.figures()
        assert (figures.publishers, figures.viewers, figures.tracks) == (0, 0, 0)
        assert not any(room.stage for room in services.media.rooms.values())
    finally:
        await teacher.close()
        await student.close()
