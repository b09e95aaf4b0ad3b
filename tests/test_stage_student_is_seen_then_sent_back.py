"""Staff invite a student on stage: the student may then publish and everyone, the teacher included,
receives them; sent back to the audience, their tracks stop everywhere and they may not publish again.
Students can neither invite nor send others back."""

from __future__ import annotations

import aiohttp

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.media_support import SocketViewer, SyntheticPublisher, close_all, wait_for
from tests.support import ADMIN_AUTH, Member, token


def users_in(viewer: SocketViewer) -> set[str]:
    """Whose tracks the viewer's latest offer says it carries."""
    return {t["user_id"] for t in (viewer.offers[-1]["tracks"] if viewer.offers else {}).values()}


async def test_student_on_stage_is_seen_then_sent_back(start_app: AppFactory) -> None:
    url, services = await start_app()
    async with aiohttp.ClientSession() as http:
        await http.post(f"{url}/api/rooms", json={"id": "stage", "title": "Stage"}, headers=ADMIN_AUTH)
    teacher = Member(url, token("stage", "t1", Role.TEACHER))
    alice = Member(url, token("stage", "alice"))
    bob = Member(url, token("stage", "bob"))
    members = [teacher, alice, bob]
    teacher_cam, alice_cam = SyntheticPublisher(), SyntheticPublisher()
    viewers: list[SocketViewer] = []
    try:
        for m in members:
            await m.connect()
            await m.join()
        ack = await teacher.call("media:publish", {"sdp": await teacher_cam.offer()})
        await teacher_cam.accept(ack["sdp"])
        bob_view, teacher_view = SocketViewer(bob), SocketViewer(teacher)
        viewers += [bob_view, teacher_view]
        await bob_view.watch()
        await teacher_view.watch()
        await wait_for(lambda: bob_view.peer.frames["video"] > 5, 15, "bob sees the teacher")

        refused = await alice.call("media:publish", {"sdp": await alice_cam.offer()})
        assert refused["error"]["code"] == "forbidden", "not on stage: no publishing"
        assert (await bob.call("stage:invite", {"user_id": "bob"}))["error"]["code"] == "forbidden"

        invited = await teacher.call("stage:invite", {"user_id": "alice"})
        assert invited == {"ok": True, "stage": ["alice"]}
        await wait_for(lambda: any(e["type"] == "stage.changed" for e in bob.events), 5, "the stage event")
        assert [e["data"] for e in bob.events if e["type"] == "stage.changed"] == [{"users": ["alice"]}]
        fresh = Member(url, token("stage", "carol"))
        members.append(fresh)
        await fresh.connect()
        assert (await fresh.join())["stage"] == ["alice"], "the join snapshot says who is on stage"

        alice_cam = SyntheticPublisher()
        ack = await alice.call("media:publish", {"sdp": await alice_cam.offer()})
        assert ack["ok"], ack
        await alice_cam.accept(ack["sdp"])
        await wait_for(lambda: users_in(bob_view) == {"t1", "alice"}, 10, "bob offered alice's tracks")
        await wait_for(lambda: users_in(teacher_view) == {"alice"}, 10, "the teacher offered alice, not himself")
        frames = bob_view.peer.frames["video"]
        await wait_for(lambda: teacher_view.peer.frames["video"] > 5, 15, "the teacher sees alice")
        await wait_for(lambda: bob_view.peer.frames["video"] > frames + 40, 15, "bob decodes both cameras")

        assert (await alice.call("stage:remove", {"user_id": "bob"}))["error"]["code"] == "forbidden"
        sent_back = await teacher.call("stage:remove", {"user_id": "alice"})
        assert sent_back == {"ok": True, "stage": []}
        await wait_for(lambda: users_in(bob_view) == {"t1"}, 10, "alice's tracks gone for bob")
        await wait_for(lambda: users_in(teacher_view) == set(), 10, "alice's tracks gone for the teacher")
        assert sorted(services.media.rooms["stage"].sources) == ["t1:camera", "t1:microphone"]
        await wait_for(lambda: alice_cam.pc.connectionState in ("closed", "failed"), 10, "alice's connection closed")
        again = await alice.call("media:publish", {"sdp": await SyntheticPublisher().offer()})
        assert again["error"]["code"] == "forbidden"
    finally:
        await close_all(viewers, teacher_cam, alice_cam, members)
