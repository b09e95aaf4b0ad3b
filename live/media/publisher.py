"""A publishing peer connection: answers a publisher's offer and taps every track it sends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecParameters, RTCRtpTransceiver, RTCSessionDescription

from live.media.errors import MediaError
from live.media.internals import ArrivalClock, answer_as_dtls_server, negotiated_codecs, offered_direction, send_pli

log = logging.getLogger(__name__)

STREAM_LABELS = {"main": {"video": "camera", "audio": "microphone"}, "screen": {"video": "screen"}}
SUPPORTED_CODECS = {"VP8", "H264", "OPUS"}


@dataclass(frozen=True)
class PublishedTrack:
    """A track negotiated with a publisher, before it is bound to a source."""

    label: str
    kind: str
    codec: RTCRtpCodecParameters
    transceiver: RTCRtpTransceiver


class Publisher:
    """One user's publishing connection. Tracks are handed to the room, which forwards them."""

    def __init__(self, user_id: str, stream: str, on_closed: Callable[[Publisher], None]) -> None:
        if stream not in STREAM_LABELS:
            raise MediaError("invalid", "stream must be 'main' or 'screen'")
        self.user_id = user_id
        self.stream = stream
        self.owner: str | None = None  # the connection that published it
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.arrival = ArrivalClock()
        self.tracks: list[PublishedTrack] = []
        self._on_closed = on_closed
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    async def answer(self, offer_sdp: str) -> str:
        """Apply the publisher's offer and return our answer; ``self.tracks`` lists what it sends."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, OperationError or InvalidStateError
            raise MediaError("bad_sdp", f"cannot use this offer: {exc}") from None
        labels = dict(STREAM_LABELS[self.stream])
        for transceiver in self.pc.getTransceivers():
            label = labels.pop(transceiver.kind, None)
            if label is None or offered_direction(transceiver) not in ("recvonly", "sendrecv"):
                transceiver.direction = "inactive"  # a second camera, a data channel: not forwarded
                continue
            transceiver.direction = "recvonly"
            codec = negotiated_codecs(transceiver)[0]
            if codec.name.upper() not in SUPPORTED_CODECS:
                raise MediaError("bad_sdp", f"unsupported codec {codec.mimeType}")
            self.tracks.append(PublishedTrack(label, transceiver.kind, codec, transceiver))
        if not self.tracks:
            raise MediaError("bad_sdp", f"the offer sends nothing a {self.stream} stream carries")
        answer_as_dtls_server(self.pc)
        try:
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as exc:  # e.g. two media sections with one mid: aiortc's answer does not match
            raise MediaError("bad_sdp", f"cannot answer this offer: {exc}") from None
        self.arrival.attach(self.tracks[0].transceiver.receiver)
        return str(self.pc.localDescription.sdp)

    def keyframe_requester(self, track: PublishedTrack) -> Callable[[int], None]:
        receiver = track.transceiver.receiver

        def request(media_ssrc: int) -> None:
            if self._closed:
                return
            task = asyncio.ensure_future(send_pli(receiver, media_ssrc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return request

    async def _state_changed(self) -> None:
        if self.pc.connectionState in ("failed", "closed") and not self._closed:
            await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.shield(self.pc.close())  # see Viewer.close
        self._on_closed(self)
