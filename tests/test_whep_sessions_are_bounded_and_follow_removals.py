"""WHEP and WHIP sessions have no socket, so their limits are their own: a member removed from the room
is refused (403 ``banned``) and loses the sessions they had; a viewer that never connects is closed after
``CONNECT_DEADLINE_S``; one user holds at most ``VIEWERS_PER_USER`` viewers (a new one ends their oldest)
and sends WHEP requests at a bounded rate;
an offer aiortc cannot answer is a 400, not a 500. The sandbox checkout's Pay calls our webhook on our
own socket, whatever Host header the browser sent.

Real parts: the app on a TCP port, aiortc peers, WHIP/WHEP over HTTP, python-socketio clients."""

from __future__ import annotations

import asyncio

import aiohttp
import aiohttp.web
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from live import media_http
from live.app import Services
from live.media import room as media_room
from live.media import viewer as media_viewer
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.media_support import SocketViewer, SyntheticPublisher, close_all, create_room, lesson, wait_for
from tests.support import Member, joined, token, wait_until

ROOM = "maths"


async def whep_offer() -> str:
    """An offer whose ICE never completes: its candidates are never used (the peer is closed at once)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def post(http: aiohttp.ClientSession, url: str, jwt: str, sdp: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {jwt}"}
    async with http.post(url, data=sdp, headers=headers) as response:
        return response.status, response.headers.get("Location", "")


async def publishing(http: aiohttp.ClientSession, url: str, services: Services) -> SyntheticPublisher:
    publisher = SyntheticPublisher()
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token(ROOM, 't1', Role.TEACHER)}"}
    async with http.post(f"{url}/whip/{ROOM}", data=await publisher.offer(), headers=headers) as response:
        assert response.status == 201, await response.text()
        await publisher.accept(await response.text())
    await wait_until(
        lambda: ROOM in services.media.rooms and bool(services.media.rooms[ROOM].sources), what="the tracks"
    )
    return publisher


async def test_removed_members_lose_their_sessions_and_are_refused(start_app: AppFactory) -> None:
    url, services = await start_app()
    await create_room(url, ROOM)
    teacher = Member(url, token(ROOM, "t2", Role.TEACHER))
    async with aiohttp.ClientSession() as http:
        publisher = await publishing(http, url, services)
        try:
            await joined(teacher)
            sdp = await whep_offer()
            status, _ = await post(http, f"{url}/whep/{ROOM}", token(ROOM, "bad-1"), sdp)
            assert status == 201
            room = services.media.rooms[ROOM]
            assert [v.user_id for v in room.viewers.values()] == ["bad-1"]

            answer = await teacher.sio.call("member:remove", {"user_id": "bad-1", "reason": "spam"}, timeout=10)
            assert answer["ok"], answer
            await wait_until(lambda: not room.viewers, what="the removed member's WHEP session to end")
            assert (await post(http, f"{url}/whep/{ROOM}", token(ROOM, "bad-1"), sdp))[0] == 403
            on_stage = token(ROOM, "bad-1", Role.TEACHER)  # even with a publish grant
            assert (await post(http, f"{url}/whip/{ROOM}", on_stage, sdp))[0] == 403
            assert not room.viewers
        finally:
            await close_all(publisher, teacher)


async def test_viewers_that_never_connect_are_closed_and_each_user_has_five_at_most(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_viewer, "CONNECT_DEADLINE_S", 2)
    url, services = await start_app()
    await create_room(url, ROOM)
    async with aiohttp.ClientSession() as http:
        publisher = await publishing(http, url, services)
        try:
            sdp = await whep_offer()
            sessions = [await post(http, f"{url}/whep/{ROOM}", token(ROOM, "s1"), sdp) for _ in range(8)]
            assert all(status == 201 for status, _ in sessions)
            room = services.media.rooms[ROOM]
            kept = [location.rsplit("/", 1)[1] for _, location in sessions[-media_room.VIEWERS_PER_USER :]]
            assert list(room.viewers) == kept, "the newest five, the oldest ended"
            assert (await post(http, f"{url}/whep/{ROOM}", token(ROOM, "s2"), sdp))[0] == 201  # others unaffected
            assert len(room.viewers) == media_room.VIEWERS_PER_USER + 1

            await wait_until(lambda: not room.viewers, timeout=15, what="viewers that never connected to close")
            assert services.media.figures().viewers == 0
        finally:
            await close_all(publisher)


async def test_a_player_that_offers_video_only_gets_video(start_app: AppFactory) -> None:
    url, services = await start_app()
    await create_room(url, ROOM)
    async with aiohttp.ClientSession() as http:
        publisher = await publishing(http, url, services)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            status, _ = await post(http, f"{url}/whep/{ROOM}", token(ROOM, "s1"), str(pc.localDescription.sdp))
            assert status == 201
            [viewer] = services.media.rooms[ROOM].viewers.values()
            assert [slot.kind for slot in viewer.slots] == ["video"]
        finally:
            await pc.close()
            await close_all(publisher)


async def test_a_viewer_waiting_for_anyone_to_publish_is_not_closed_by_the_deadline(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room page watches as the student joins; the deadline counts from the first offer, not before."""
    monkeypatch.setattr(media_viewer, "CONNECT_DEADLINE_S", 1)
    url, services = await start_app()
    teacher, [student] = await lesson(url, "early", 1)
    viewer = SocketViewer(student)
    publisher = SyntheticPublisher()
    try:
        await viewer.watch()  # nobody publishes yet: "Waiting for the teacher..."
        await asyncio.sleep(2.5)
        assert len(services.media.rooms["early"].viewers) == 1
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token('early', 't1', Role.TEACHER)}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/whip/early", data=await publisher.offer(), headers=headers) as response,
        ):
            assert response.status == 201, await response.text()
            await publisher.accept(await response.text())
        await wait_for(lambda: viewer.peer.frames["video"] > 0, 10, "the early watcher's first frame")
    finally:
        await close_all(viewer, publisher, teacher, student)


async def test_whep_requests_are_rate_limited_per_user(start_app: AppFactory) -> None:
    url, services = await start_app()
    await create_room(url, ROOM)
    async with aiohttp.ClientSession() as http:
        publisher = await publishing(http, url, services)
        try:
            sdp = await whep_offer()
            statuses = [(await post(http, f"{url}/whep/{ROOM}", token(ROOM, "s3"), sdp))[0] for _ in range(12)]
            assert statuses[: media_http.REQUEST_BURST] == [201] * media_http.REQUEST_BURST
            assert statuses[media_http.REQUEST_BURST :] == [429, 429]
            assert (await post(http, f"{url}/whep/{ROOM}", token(ROOM, "s4"), sdp))[0] == 201, "others are not"
        finally:
            await close_all(publisher)


async def test_an_offer_that_cannot_be_answered_is_a_400(start_app: AppFactory) -> None:
    url, services = await start_app()
    await create_room(url, ROOM)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp).replace("a=mid:1", "a=mid:0")  # two media sections, one mid
    await pc.close()
    async with aiohttp.ClientSession() as http:
        assert (await post(http, f"{url}/whip/{ROOM}", token(ROOM, "t1", Role.TEACHER), sdp))[0] == 400
    assert services.media.figures().publishers == 0


async def test_sandbox_pay_calls_our_own_webhook_whatever_the_host_header(start_app: AppFactory) -> None:
    url, _ = await start_app()
    await create_room(url, ROOM)
    student = Member(url, token(ROOM, "s1"))
    calls: list[str] = []

    async def elsewhere(request: aiohttp.web.Request) -> aiohttp.web.Response:
        calls.append(request.path)
        return aiohttp.web.Response(text="ok")

    other = aiohttp.web.Application()
    other.router.add_post("/{tail:.*}", elsewhere)
    runner = aiohttp.web.AppRunner(other)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await joined(student)
        started = await student.call("wallet:checkout", {"pack": "coins-100"})
        assert started["ok"], started
        async with aiohttp.ClientSession() as http:
            # The Host header names another server: our webhook must still be the one called.
            async with http.post(url + started["url"] + "/pay", headers={"Host": f"127.0.0.1:{other_port}"}) as r:
                assert r.status == 200 and "Coins added" in await r.text()
        assert calls == []
        assert (await student.call("wallet:get", {}))["wallet"]["balance"] == 100
    finally:
        await student.close()
        await runner.cleanup()
