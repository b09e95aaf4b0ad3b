"""Two server processes on one Redis and PostgreSQL. The teacher publishes through instance A, which then
hosts the room's media; a student whose socket is on B gets the stream (B relays the signalling, the
media flows from A). When A dies, the teacher's page republishes through B and B's student recovers on
its own, without a reload."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from rooms.identity import Role
from tests.media_support import SocketViewer, SyntheticPublisher, close_all, wait_for
from tests.support import ADMIN_AUTH, Member, RedisServer, ServerProcess, token

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


async def publish_until_accepted(member: Member, publisher: SyntheticPublisher, timeout: float) -> None:
    """What the studio page does: publish, and try again while the media server is unreachable."""
    offer = await publisher.offer()

    async def attempt() -> bool:
        ack = await member.call("media:publish", {"sdp": offer})
        if ack["ok"]:
            await publisher.accept(ack["sdp"])
            return True
        assert ack["error"]["code"] == "unavailable", ack
        return False

    deadline = time.monotonic() + timeout
    while not await attempt():
        assert time.monotonic() < deadline, "never accepted"
        await asyncio.sleep(0.5)


async def test_student_on_another_instance_watches_and_survives_the_media_instance(
    two_instances: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
) -> None:
    a, b = two_instances
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{a.url}/api/rooms", json={"id": "across", "title": "Across"}, headers=ADMIN_AUTH) as r:
            assert r.status == 201
    teacher = Member(a.url, token("across", "t1", Role.TEACHER))
    near = Member(a.url, token("across", "s-near"))
    far = Member(b.url, token("across", "s-far"))
    members = [teacher, near, far]
    camera = SyntheticPublisher()
    viewers: list[SocketViewer] = []
    try:
        for m in members:
            await m.connect()
            await m.join()
        far_view = SocketViewer(far)
        viewers.append(far_view)
        await far_view.watch()  # before anyone publishes: B claims the room's media for itself
        await publish_until_accepted(teacher, camera, 10)
        near_view = SocketViewer(near)
        viewers.append(near_view)
        await near_view.watch()
        await wait_for(
            lambda: all(v.peer.frames["video"] > 30 and v.peer.frames["audio"] > 30 for v in viewers),
            20,
            "both students decoding",
        )
        for v in viewers:
            assert {t["label"] for t in v.offers[-1]["tracks"].values()} == {"camera", "microphone"}

        # Whichever instance hosts the media, stage invitations reach it from the other.
        staff_ack = await teacher.call("stage:invite", {"user_id": "s-far"})
        assert staff_ack == {"ok": True, "stage": ["s-far"]}
        await wait_for(lambda: any(e["type"] == "stage.changed" for e in far.events), 5, "stage event on B")
        assert (await teacher.call("stage:remove", {"user_id": "s-far"}))["stage"] == []

        # The instance hosting the media dies (no goodbye: its lease simply runs out).
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}/api/media/stats", headers=ADMIN_AUTH) as r:
            b_hosts = (await r.json())["publishers"] == 1
        host, other = (b, a) if b_hosts else (a, b)
        survivor_student = far if other is b else near
        survivor_view = far_view if other is b else near_view
        assert host.proc is not None
        host.proc.kill()
        host.proc.wait(5)

        # The teacher's page reconnects through the surviving instance and publishes again.
        await teacher.close()
        teacher = Member(other.url, token("across", "t1", Role.TEACHER))
        members[0] = teacher
        await teacher.connect()
        await teacher.join()
        camera_again = SyntheticPublisher()
        await publish_until_accepted(teacher, camera_again, 20)
        await wait_for(lambda: survivor_view.restarts >= 1, 15, "the surviving student told to restart")
        await wait_for(lambda: survivor_view.peer.frames["video"] > 30, 20, "the surviving student decoding again")
        assert survivor_student.sio.connected, "no reload: the same socket"
        await camera_again.close()
    finally:
        await close_all(viewers, camera, members)
