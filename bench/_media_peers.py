"""Media peers for bench/media_fanout.py: a 720p VP8 clip publisher and viewers that count RTP cheaply.

The publisher replays a clip encoded once at start (noise, so the encoder spends its whole 1.2 Mbps),
so encoding costs nothing during the run; a keyframe request restarts the clip, whose first frame is
the only keyframe. Counting viewers negotiate with aiortc and then take every SRTP datagram off the ICE
connection before aiortc sees it: the header is in clear, so counting needs no decryption.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import time
from typing import Any

import aiohttp
import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

VIDEO_CLOCK = 90_000


def encode_clip(width: int, height: int, fps: int, frames: int, bitrate: int) -> list[bytes]:
    """VP8 frames of random noise; only the first is a keyframe."""
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = 1_000_000
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "error-resilient": "1",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    out: list[bytes] = []
    ramp = bytes(range(256)) * (width * 2 // 256 + 2)
    block_w, block_h = width // 6, height // 6  # a noisy block moving over a sliding gradient
    for i in range(frames):
        luma = bytearray(width * height)
        for row in range(height):
            start = (row + 3 * i) % 256
            luma[row * width : (row + 1) * width] = ramp[start : start + width]
        x0 = (i * 16) % (width - block_w)
        y0 = (i * 9) % (height - block_h)
        for row in range(y0, y0 + block_h):
            luma[row * width + x0 : row * width + x0 + block_w] = os.urandom(block_w)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.planes[0].update(bytes(luma))
        frame.planes[1].update(bytes([(i * 2) % 256]) * (width * height // 4))
        frame.planes[2].update(bytes([128]) * (width * height // 4))
        frame.pts = i
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    return out


class ClipTrack(MediaStreamTrack):
    """Replays encoded frames at ``fps``; ``restart()`` (a keyframe request) goes back to the keyframe."""

    kind = "video"

    def __init__(self, frames: list[bytes], fps: int = 30) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.index = 0
        self.count = 0
        self.restarts = 0
        self._start: float | None = None

    def restart(self) -> None:
        self.index = 0
        self.restarts += 1

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.count / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        packet = av.Packet(self.frames[self.index])
        packet.pts = self.count * (VIDEO_CLOCK // self.fps)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.index = (self.index + 1) % len(self.frames)
        self.count += 1
        return packet


class Tone(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames (aiortc encodes it to Opus)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self._start: float | None = None
        one = bytearray()
        for i in range(960):
            value = int(6000 * math.sin(2 * math.pi * 440 * i / 48_000))
            one += value.to_bytes(2, "little", signed=True) * 2
        self._pcm = bytes(one)

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.samples / 48_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = 48_000
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, 48_000)
        self.samples += 960
        return frame


def clip_publisher(frames: list[bytes], pace_bps: int = 3_000_000) -> tuple[RTCPeerConnection, ClipTrack]:
    """A peer connection sending the clip and a tone; keyframe requests restart the clip.

    Video packets are paced at ``pace_bps`` (2.5 times the clip's bitrate, as Chrome's pacer does):
    aiortc alone sends each frame's packets back to back, which no browser does.
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = ClipTrack(frames)
    transceiver = pc.addTransceiver(video, direction="sendonly")
    sender = transceiver.sender
    sender._send_keyframe = video.restart  # type: ignore[method-assign]  # bench only: PLI -> keyframe
    pc.addTransceiver(Tone(), direction="sendonly")
    dtls: Any = sender.transport
    send_rtp = dtls._send_rtp
    next_at = 0.0

    async def paced(data: bytes) -> None:
        nonlocal next_at
        is_video_rtp = len(data) > 12 and not 192 <= data[1] <= 223 and (data[1] & 0x7F) in video_pts
        if is_video_rtp:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at = max(now, next_at) + len(data) * 8 / pace_bps
        await send_rtp(data)

    video_pts = {97, 99, 101}  # aiortc's VP8 and H.264 payload types when it offers
    dtls._send_rtp = paced
    return pc, video


async def http_offer(http: aiohttp.ClientSession, url: str, token: str | None, sdp: str) -> str:
    """POST an SDP offer WHIP/WHEP style; returns the answer."""
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, data=sdp.encode(), headers=headers) as response:
        body = await response.text()
        if response.status != 201:
            raise RuntimeError(f"{url}: {response.status} {body[:200]}")
        return body


class CountingViewer:
    """A WHEP viewer that counts the RTP it receives (per SSRC: packets, highest sequence, frames)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.received = 0
        self.video_frames = 0  # packets with the marker bit on the video SSRC: one per frame
        self.first_packet_at: float | None = None
        self._video_pt: int | None = None

    async def start(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await http_offer(http, url, token, self.pc.localDescription.sdp)
        for line in answer.splitlines():
            if line.startswith("m=video"):
                self._video_pt = int(line.split()[3])
        self._hook()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    def _hook(self) -> None:
        """Count SRTP datagrams as the socket hands them over, before aioice tries to parse them as STUN."""
        connection: Any = self.pc.getTransceivers()[0].receiver.transport.transport._connection
        video_pt = self._video_pt
        for protocol in connection._protocols:
            deliver = protocol.datagram_received

            def counting(data: bytes, addr: Any, deliver: Any = deliver) -> None:
                if len(data) > 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
                    self.received += 1
                    if self.first_packet_at is None:
                        self.first_packet_at = time.monotonic()
                    if data[1] == (0x80 | (video_pt or 0)):
                        self.video_frames += 1
                    return
                deliver(data, addr)

            protocol.datagram_received = counting

    async def close(self) -> None:
        await self.pc.close()
