"""A teacher publishes synthetic video and audio from aiortc over the room socket; students' aiortc peers
receive it through the forwarder (never decoded on the server) and decode every track. A student who joins
late decodes a first frame within a second, so keyframe requests reach the publisher."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import AppFactory
from tests.media_support import SocketViewer, SyntheticPublisher, close_all, late_viewer, lesson, wait_for


async def test_every_viewer_decodes_and_a_late_viewer_gets_a_keyframe_within_a_second(start_app: AppFactory) -> None:
    url, services = await start_app()
    teacher, students = await lesson(url, "optics", 6)
    publisher = SyntheticPublisher()
    viewers: list[SocketViewer] = []
    try:
        # Viewers may start watching before anyone publishes: their offer comes when the teacher does.
        for s in students[:3]:
            viewer = SocketViewer(s)
            viewers.append(viewer)
            await viewer.watch()

        ack = await teacher.call("media:publish", {"sdp": await publisher.offer()})
        assert ack["ok"], ack
        await publisher.accept(ack["sdp"])

        for s in students[3:5]:
            viewer = SocketViewer(s)
            viewers.append(viewer)
            await viewer.watch()

        await wait_for(
            lambda: all(v.peer.frames["video"] >= 30 and v.peer.frames["audio"] >= 30 for v in viewers),
            15,
            "every viewer decoding a second of video and audio",
        )
        for v in viewers:
            assert v.peer.sizes == {(320, 240)}
            labels = sorted(t["label"] for t in v.offers[-1]["tracks"].values())
            assert labels == ["camera", "microphone"], v.offers[-1]["tracks"]
            assert all(a["ok"] for a in v.answers), v.answers

        await asyncio.sleep(5)
        late, first_frame_ms = await late_viewer(students[5])
        viewers.append(late)
        assert first_frame_ms < 1000, f"late viewer's first frame after {first_frame_ms:.0f} ms"

        figures = services.media.figures()
        assert figures.viewers == 6 and figures.publishers == 1 and figures.tracks == 2
        assert figures.keyframe_requests >= 1
        assert figures.packets_out > figures.packets_in  # one in, many out: forwarded, not re-encoded
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            text = await response.text()
        assert "lc_media_viewers 6.0" in text

        # Ending the lesson closes every peer connection.
        ended = await teacher.call("room:end", {})
        assert ended["ok"], ended
        await wait_for(lambda: not services.media.rooms, 10, "the room's media to close")
    finally:
        await close_all(viewers, publisher, [teacher, *students])


async def test_h264_is_forwarded_and_a_late_viewer_starts_on_an_idr(start_app: AppFactory) -> None:
    url, services = await start_app()
    teacher, students = await lesson(url, "h264", 2)
    publisher = SyntheticPublisher(video_codec="video/H264")
    viewers: list[SocketViewer] = []
    try:
        ack = await teacher.call("media:publish", {"sdp": await publisher.offer()})
        assert ack["ok"], ack
        assert "H264/90000" in ack["sdp"] and "VP8/90000" not in ack["sdp"]
        await publisher.accept(ack["sdp"])
        first = SocketViewer(students[0])
        viewers.append(first)
        await first.watch()
        await wait_for(lambda: first.peer.frames["video"] >= 30, 15, "H.264 frames decoded")
        await asyncio.sleep(3)
        late, first_frame_ms = await late_viewer(students[1])
        viewers.append(late)
        assert first_frame_ms < 1000, f"first H.264 frame after {first_frame_ms:.0f} ms"
        assert late.peer.sizes == {(320, 240)}
        room = services.media.rooms["h264"]
        assert room.sources["t1:camera"].mime_type == "video/H264"
    finally:
        await close_all(viewers, publisher, [teacher, *students])
