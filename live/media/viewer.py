"""A viewing peer connection: one send-only slot per published track, fed by the forwarder.

Offers come from the server (the room's tracks change during a lesson: a screen share starts, a student
comes on stage) or, for WHEP, from the viewer. A slot keeps its transceiver when its track goes away and
is reused by the next track of the same kind and codec, so most changes need no renegotiation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecCapability, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, AnyRtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket

from live.media.errors import MediaError
from live.media.forwarding import TrackInfo, TrackSink, TrackSource
from live.media.internals import (
    SilentTrack,
    answer_as_dtls_server,
    egress_of,
    intercept_rtcp,
    negotiated_codecs,
    sender_cname,
    take_over_sender_reports,
)

log = logging.getLogger(__name__)

#: Seconds a viewer has to connect after it was created; then it counts as failed and is closed.
CONNECT_DEADLINE_S = 30


def capability_of(source: TrackSource) -> RTCRtpCodecCapability:
    codec = source.codec
    return RTCRtpCodecCapability(
        mimeType=codec.mimeType, clockRate=codec.clockRate, channels=codec.channels, parameters=codec.parameters
    )


@dataclass
class Slot:
    """One send transceiver of a viewer and the source it carries, if any."""

    transceiver: RTCRtpTransceiver
    kind: str
    mime_type: str
    source: TrackSource | None = None
    sink: TrackSink | None = None
    retransmitted: int = 0
    track: Any = field(default=None, repr=False)

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid


#: Sends an offer (or a new track list) to a viewer's client: ``send_offer(viewer, payload)``.
OfferSender = Callable[[Any, dict[str, Any]], Awaitable[None]]
#: Tells a viewer's client that its connection is lost and it must watch again (``media:restart``).
LostHandler = Callable[[], Awaitable[None]]


class ViewerPeer(Protocol):
    """What a room needs of a viewer: a ``Viewer`` here, or one living in a media worker process."""

    viewer_id: str
    user_id: str
    on_failed: Callable[[Any], None] | None

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""

    async def update(self, sources: dict[str, TrackSource]) -> None:
        """The room's tracks changed: rebind, and offer again if needed."""

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the viewer's answer to the last offer."""

    async def answer_offer(self, offer_sdp: str, sources: dict[str, TrackSource]) -> str:
        """Answer the viewer's own offer (WHEP) with ``sources``."""

    def send_sender_reports(self) -> None:
        """Send each stream's RTCP sender report (about once a second)."""

    async def close(self) -> None:
        """Close the peer connection; idempotent."""


class Viewer:
    """One viewer's connection: negotiates slots for the room's tracks and binds sinks to them."""

    def __init__(self, viewer_id: str, user_id: str, send_offer: OfferSender | None) -> None:
        self.viewer_id = viewer_id
        self.user_id = user_id
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.slots: list[Slot] = []
        self.created = time.monotonic()
        self._send_offer = send_offer
        self._negotiating = False
        self._renegotiate = False
        self._closed = False
        self._sources: dict[str, TrackSource] = {}
        self.pc.on("connectionstatechange", self._state_changed)
        self.on_failed: Callable[[Any], None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    def tracks(self) -> dict[str, dict[str, str]]:
        """What each negotiated mid carries, for the client to place its media elements."""
        out: dict[str, dict[str, str]] = {}
        for slot in self.slots:
            if slot.mid is not None and slot.source is not None:
                info: TrackInfo = slot.source.info
                out[slot.mid] = {"user_id": info.user_id, "label": info.label, "kind": info.kind}
        return out

    # binding sources to slots
    def _bind(self, sources: dict[str, TrackSource], room_for: dict[str, int] | None = None) -> bool:
        """Match sources to slots; returns whether new transceivers (a renegotiation) are needed. With
        ``room_for`` (a WHEP offer's media sections by kind), at most that many sources of each kind.

        A viewer is never sent its own user's tracks (a teacher watching students on stage)."""
        sources = {k: s for k, s in sources.items() if s.info.user_id != self.user_id}
        if room_for is not None:
            taken = dict.fromkeys(room_for, 0)
            kept: dict[str, TrackSource] = {}
            for source_id, source in sorted(sources.items()):
                if taken.get(source.info.kind, 0) < room_for.get(source.info.kind, 0):
                    taken[source.info.kind] += 1
                    kept[source_id] = source
            sources = kept
        self._sources = dict(sources)
        wanted = set(sources)
        for slot in self.slots:
            if slot.source is not None and slot.source.info.source_id not in wanted:
                self._unbind(slot)
            elif slot.source is not None and sources[slot.source.info.source_id] is not slot.source:
                self._unbind(slot)  # same id, new codec: the slot is rebound below if it fits
        bound = {slot.source.info.source_id for slot in self.slots if slot.source is not None}
        added = False
        for source_id, source in sorted(sources.items()):
            if source_id in bound:
                continue
            target = self._free_slot(source)
            if target is None:
                target = self._new_slot(source)
                added = True
            target.source = source
            self._activate(target)
        return added

    def _free_slot(self, source: TrackSource) -> Slot | None:
        for slot in self.slots:
            if slot.source is None and slot.kind == source.info.kind and slot.mime_type == source.mime_type:
                return slot
        return None

    def _new_slot(self, source: TrackSource) -> Slot:
        track = SilentTrack(source.info.kind)
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences([capability_of(source)])
        intercept_rtcp(transceiver.sender, self._rtcp_handler_for(transceiver))
        take_over_sender_reports(transceiver.sender)
        slot = Slot(transceiver, source.info.kind, source.mime_type, track=track)
        self.slots.append(slot)
        return slot

    def _unbind(self, slot: Slot) -> None:
        if slot.source is not None and slot.sink is not None:
            slot.source.remove_sink(slot.sink)
        slot.source = None
        slot.sink = None

    def _activate(self, slot: Slot) -> None:
        """Start forwarding into a bound slot once its transport is up and its codec negotiated."""
        if slot.source is None or slot.sink is not None or self._closed:
            return
        if slot.mid is None or not negotiated_codecs(slot.transceiver) or slot.transceiver.currentDirection is None:
            return
        try:
            egress = egress_of(slot.transceiver)
        except ConnectionError:
            return
        slot.sink = TrackSink(egress, video=slot.kind == "video", clock_rate=slot.source.clock_rate)
        slot.source.add_sink(slot.sink)

    def _activate_all(self) -> None:
        for slot in self.slots:
            self._activate(slot)

    # negotiation, server side offering
    async def update(self, sources: dict[str, TrackSource]) -> None:
        """The room's tracks changed: rebind, and offer again if a slot had to be added."""
        if self._closed:
            return
        needs_offer = self._bind(sources)
        if self._negotiating:
            self._renegotiate = self._renegotiate or needs_offer
            return
        if needs_offer:
            await self._offer()
        elif self._send_offer is not None:
            await self._send_offer(self, {"sdp": None, "tracks": self.tracks()})

    async def _offer(self) -> None:
        if self._send_offer is None or self._closed:
            return
        self._negotiating = True
        self._renegotiate = False
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self._start_deadline()
        await self._send_offer(self, {"sdp": self.pc.localDescription.sdp, "tracks": self.tracks()})

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the viewer's answer to our last offer."""
        if not self._negotiating or self.pc.signalingState != "have-local-offer":
            raise MediaError("invalid_state", "no offer is waiting for an answer")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as exc:
            raise MediaError("bad_sdp", f"cannot use this answer: {exc}") from None
        self._negotiating = False
        self._activate_all()
        if self._renegotiate:
            self._bind(self._sources)
            await self._offer()

    # negotiation, viewer side offering (WHEP)
    async def answer_offer(self, offer_sdp: str, sources: dict[str, TrackSource]) -> str:
        """Answer a viewer's offer (WHEP): its receive-only sections get the room's current tracks, as many
        of each kind as it offers sections for (a player that offers video only gets no audio)."""
        sections = [line.split(" ", 1)[0][2:] for line in offer_sdp.splitlines() if line.startswith("m=")]
        self._bind(sources, {kind: sections.count(kind) for kind in ("audio", "video")})
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            answer_as_dtls_server(self.pc)
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as exc:
            raise MediaError("bad_sdp", f"cannot use this offer: {exc}") from None
        self._start_deadline()
        return str(self.pc.localDescription.sdp)

    # viewers' RTCP
    def _rtcp_handler_for(self, transceiver: RTCRtpTransceiver) -> Callable[[AnyRtcpPacket], Awaitable[None]]:
        async def handle(packet: AnyRtcpPacket) -> None:
            slot = next((s for s in self.slots if s.transceiver is transceiver), None)
            if slot is None or slot.source is None or slot.sink is None:
                return
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                slot.source.request_keyframe()
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                slot.retransmitted += slot.sink.retransmit(packet.lost)

        return handle

    def send_sender_reports(self) -> None:
        """Send each forwarding slot's RTCP sender report: the figures of what we actually sent."""
        for slot in self.slots:
            sink, source = slot.sink, slot.source
            if sink is not None and source is not None and sink.packets and not sink.resync:
                # Read each time: a slot activated before aiortc started its sender had no CNAME yet.
                sink.send_sender_report(time.time(), source.last_forward, sender_cname(slot.transceiver.sender))

    # lifecycle
    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._activate_all()
        elif state in ("failed", "closed") and not self._closed and self.on_failed is not None:
            self.on_failed(self)

    def _start_deadline(self) -> None:
        """From the first offer on (ours, or a WHEP player's answered), the viewer has ``CONNECT_DEADLINE_S``
        to connect. A viewer waiting for anyone to publish has nothing to connect to yet."""
        if self._deadline is None and self.pc.connectionState != "connected":
            self._deadline = asyncio.get_running_loop().call_later(CONNECT_DEADLINE_S, self._connect_deadline)

    def _connect_deadline(self) -> None:
        # An offer answered but never connected (its ICE never completes, and aiortc never calls that
        # failed) would hold its peer connection, sockets and slots for good: it counts as failed.
        self._deadline = None
        if not self._closed and self.on_failed is not None:
            log.info("media: viewer %s not connected after %d s; closing it", self.viewer_id, CONNECT_DEADLINE_S)
            self.on_failed(self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        for slot in self.slots:
            self._unbind(slot)
        # Shielded: aiortc's close() awaits a future shared by every caller, which a cancelled caller
        # would cancel for all of them.
        await asyncio.shield(self.pc.close())
        for slot in self.slots:
            if slot.track is not None:
                slot.track.stop()
        self.slots.clear()
        await asyncio.sleep(0)


#: Sender reports go out over each second in this many slices of the viewers, not in one burst (which
#: would hold up the packets being forwarded meanwhile).
REPORT_SLICES = 10
K = TypeVar("K")


def spread_sender_reports(viewer_ids: list[K], lookup: Callable[[K], ViewerPeer | None]) -> None:
    """Send the sender reports of these viewers over the next second, a slice at a time (by id: a viewer
    that leaves meanwhile is skipped, and not kept alive)."""
    loop = asyncio.get_running_loop()
    for i in range(min(REPORT_SLICES, len(viewer_ids))):
        loop.call_later(i / REPORT_SLICES, _send_reports, viewer_ids[i::REPORT_SLICES], lookup)


def _send_reports(viewer_ids: list[K], lookup: Callable[[K], ViewerPeer | None]) -> None:
    for viewer_id in viewer_ids:
        viewer = lookup(viewer_id)
        if viewer is not None and not viewer.closed:
            viewer.send_sender_reports()
