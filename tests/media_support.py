"""Real aiortc peers for media tests: a publisher of synthetic video and audio, and decoding viewers."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from rooms.identity import Role
from tests.support import ADMIN_AUTH, Member, joined, token

VIDEO_CLOCK = 90_000
FPS = 30


class MovingPicture(MediaStreamTrack):
    """A 320x240 picture whose brightness changes every frame, at 30 frames per second."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        self._count += 1
        wait = self._start + self._count / FPS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = VideoFrame(self.width, self.height, "yuv420p")
        shade = (self._count * 4) % 256
        frame.planes[0].update(bytes([shade]) * (self.width * self.height))
        frame.planes[1].update(bytes([128]) * (self.width * self.height // 4))
        frame.planes[2].update(bytes([(255 - shade)]) * (self.width * self.height // 4))
        frame.pts = self._count * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class Tone(MediaStreamTrack):
    """A 440 Hz tone, 20 ms frames of 48 kHz stereo."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / 48_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        count = 960
        samples = bytearray()
        for i in range(count):
            value = int(8000 * math.sin(2 * math.pi * 440 * (self._samples + i) / 48_000))
            samples += value.to_bytes(2, "little", signed=True) * 2
        frame = AudioFrame(format="s16", layout="stereo", samples=count)
        frame.planes[0].update(bytes(samples))
        frame.sample_rate = 48_000
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, 48_000)
        self._samples += count
        return frame


class SyntheticPublisher:
    """An aiortc peer sending a moving picture and a tone (and, if asked, a second video as a screen)."""

    def __init__(self, *, video: bool = True, audio: bool = True, video_codec: str = "video/VP8") -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if video:
            transceiver = self.pc.addTransceiver(MovingPicture(), direction="sendonly")
            codecs = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences([c for c in codecs if c.mimeType == video_codec])
        if audio:
            self.pc.addTransceiver(Tone(), direction="sendonly")

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def close(self) -> None:
        await self.pc.close()


class DecodingPeer:
    """An aiortc peer answering the server's offers and decoding every track it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames: dict[str, int] = {"video": 0, "audio": 0}
        self.first_frame_at: dict[str, float] = {}
        self.sizes: set[tuple[int, int]] = set()
        self.tracks_by_mid: dict[str, dict[str, str]] = {}
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                self.frames[track.kind] += 1
                self.first_frame_at.setdefault(track.kind, time.monotonic())
                if isinstance(frame, VideoFrame):
                    self.sizes.add((frame.width, frame.height))

    async def answer(self, offer: dict[str, Any]) -> str | None:
        """Apply a ``media:offer`` payload; returns the SDP answer to send back, if it carried an offer."""
        self.tracks_by_mid = offer.get("tracks") or {}
        if not offer.get("sdp"):
            return None
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    def transceivers(self) -> list[RTCRtpTransceiver]:
        return list(self.pc.getTransceivers())

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await self.pc.close()


async def close_all(*things: Any) -> None:
    """Close peers and socket clients in the order given: each argument one of them, or a list of them."""
    for thing in things:
        for one in thing if isinstance(thing, list) else [thing]:
            await one.close()


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


OfferHandler = Callable[[Any, dict[str, Any]], Awaitable[None]]


class SocketViewer:
    """A room member that watches the lesson: answers every ``media:offer`` with a decoding aiortc peer."""

    def __init__(self, member: Any) -> None:
        self.member = member
        self.peer = DecodingPeer()
        self.offers: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0
        member.sio.on("media:offer", self._on_offer)
        member.sio.on("media:restart", self._on_restart)

    def _on_restart(self, payload: dict[str, Any]) -> None:
        """The media server changed: start again with a fresh peer, as the room page does."""
        self.restarts += 1
        self._tasks.append(asyncio.ensure_future(self._restart()))

    async def _restart(self) -> None:
        old, self.peer = self.peer, DecodingPeer()
        await old.close()
        await self.watch()

    def _on_offer(self, payload: dict[str, Any]) -> None:
        self.offers.append(payload)
        self._tasks.append(asyncio.ensure_future(self._answer(payload)))

    async def _answer(self, payload: dict[str, Any]) -> None:
        sdp = await self.peer.answer(payload)
        if sdp is not None:
            self.answers.append(await self.member.call("media:answer", {"sdp": sdp}))

    async def watch(self) -> dict[str, Any]:
        ack = await self.member.call("media:watch", {})
        assert ack["ok"], ack
        return dict(ack)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.peer.close()


class WhepViewer:
    """A decoding aiortc viewer that watches through WHEP, the way a player outside our pages would."""

    def __init__(self) -> None:
        self.peer = DecodingPeer()
        self.peer.pc.addTransceiver("video", direction="recvonly")
        self.peer.pc.addTransceiver("audio", direction="recvonly")
        self.location: str | None = None

    async def start(self, http: Any, url: str, room: str, jwt: str) -> int:
        """POST the offer; returns the HTTP status (201 when watching)."""
        pc = self.peer.pc
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {jwt}"}
        async with http.post(f"{url}/whep/{room}", data=pc.localDescription.sdp, headers=headers) as response:
            if response.status != 201:
                return int(response.status)
            self.location = response.headers["Location"]
            answer = await response.text()
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return 201

    async def delete(self, http: Any, url: str, jwt: str) -> int:
        """DELETE the WHEP session; the local peer connection stays open."""
        assert self.location is not None
        async with http.delete(f"{url}{self.location}", headers={"Authorization": f"Bearer {jwt}"}) as response:
            return int(response.status)


async def create_room(url: str, room_id: str) -> None:
    """Create a room through the admin API."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/rooms", json={"id": room_id, "title": room_id}, headers=ADMIN_AUTH) as r:
            assert r.status == 201, await r.text()


async def lesson(url: str, room_id: str, students: int) -> tuple[Any, list[Any]]:
    """A new room with its teacher (``t1``) and ``students`` students (``s0``…) connected and joined."""
    await create_room(url, room_id)
    teacher = Member(url, token(room_id, "t1", Role.TEACHER))
    pupils = [Member(url, token(room_id, f"s{i}")) for i in range(students)]
    await joined(teacher, *pupils)
    return teacher, pupils


async def late_viewer(member: Any) -> tuple[SocketViewer, float]:
    """``member`` starts watching now; returns its viewer and the ms until its first decoded video frame."""
    viewer = SocketViewer(member)
    joined_at = time.monotonic()
    await viewer.watch()
    await wait_for(lambda: viewer.peer.frames["video"] > 0, 5, "the late viewer's first frame")
    return viewer, (viewer.peer.first_frame_at["video"] - joined_at) * 1000
