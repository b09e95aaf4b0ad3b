"""The per-packet path: one published track fanned out to every viewer, headers rewritten, never decoded.

A ``TrackSource`` is one track a publisher sends (a camera, a microphone, a screen). A ``TrackSink`` is
one viewer's outgoing stream bound to a source. For each packet the source hands the same payload to
every sink; the sink writes its own 12-byte header (its SSRC, payload type and a continuous sequence
number and timestamp) and its mid extension and protects the packet with its SRTP session. Those
copies, their sends and the NACK history are C (``live/media/_copier.c``): one call makes and sends
every sink's copies of the packets that arrived together.

A source collects the packets that arrive together and hands them to its sinks in one pass
(``TrackSource.flush``, scheduled on the event loop). A publisher's pacer spaces a frame's packets by a
few milliseconds, so that is mostly one packet; packets that queued up (a publisher without a pacer, a
keyframe, a busy moment) reach each viewer's socket in as few sends as the kernel allows: a run of
equal-sized packets is one ``sendmsg`` with ``UDP_SEGMENT`` (UDP GSO, Linux 4.18+), which the kernel
splits into datagrams. On the wire nothing changes; per packet per viewer it halves the kernel's send
work, the largest part of a copy's cost, so forwarding gets cheaper as it falls behind. With many sinks
the pass is split over threads (``set_fanout_threads``), so a packet's last viewer gets it sooner. That is
all the per-viewer work there is.

A sink keeps its sequence numbers and timestamps continuous when its source's publisher reconnects or
switches camera, so a viewer's decoder sees one stream. Video sinks start (and restart) on a keyframe.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pylibsrtp
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from live.media._copier import Copier, send_burst, set_threads
from live.media.internals import Egress
from live.media.rtp import keyframe_detector, mid_extension_block, ntp_time, sender_report

NACK_HISTORY = 512  # packets per video sink: about 3 s of 1.2 Mbps video
KEYFRAME_REQUEST_INTERVAL_S = 0.5
#: A source sends what it has collected once this many packets wait (a keyframe's burst), or else once
#: the packets that arrived together are all in.
BURST_LIMIT = 32


_source_keys = itertools.count(1)


def set_fanout_threads(threads: int) -> None:
    """How many threads share a pass over a source's sinks in this process (1: the event loop's alone).
    Small passes run on the event loop's thread whatever this says."""
    set_threads(threads)


class Outlet(Protocol):
    """Another process's viewers of a source (a media worker): it receives each packet once."""

    def forward(self, key: int, arrival: float, ssrc: int, seq: int, ts: int, marker: int, payload: bytes) -> None:
        """Hand one packet of source ``key`` on, with the time it arrived here."""

    def restart(self, key: int) -> None:
        """Source ``key`` changed publisher: its viewers resume at the next keyframe."""

    def drop(self, key: int) -> None:
        """Source ``key`` is gone."""


@dataclass(frozen=True)
class TrackInfo:
    """What viewers are told about a published track."""

    source_id: str
    user_id: str
    label: str  # camera | microphone | screen
    kind: str  # audio | video


@dataclass
class ForwardStats:
    """Counters of one source, read by metrics and benchmarks."""

    packets_in: int = 0
    packets_out: int = 0
    keyframe_requests: int = 0


class TrackSink:
    """One viewer's outgoing stream of one source: what decides how it continues, over the ``Copier``
    (``live/media/_copier.c``) that makes, sends and remembers its copies."""

    __slots__ = ("_send", "_srtp", "_ssrc", "_stopped_at", "clock_rate", "copier", "resync", "video")

    def __init__(self, egress: Egress, *, video: bool, clock_rate: int) -> None:
        extension = mid_extension_block(egress.mid_extension_id, egress.mid)
        # The viewer's header: version 2, the X bit when the mid extension follows, and its SSRC; each
        # copy writes in its marker and payload type, sequence number and timestamp.
        template = struct.pack("!BBHII", 0x90 if extension else 0x80, 0, 0, 0, egress.ssrc) + extension
        self.copier = Copier(
            template,
            egress.srtp.protect_address,
            egress.srtp.session_address,
            egress.srtp,
            egress.sock,
            egress.payload_type,
            NACK_HISTORY if video else 0,
            True,  # runs of equal-sized copies as one segmented send (UDP GSO), where the kernel has it
        )
        self.copier.last_seq = random.randrange(32768)  # lower half: avoids an early SRTP rollover
        self.copier.last_ts = random.randrange(1 << 32)
        self._srtp = egress.srtp
        self._ssrc = egress.ssrc
        self._send = egress.sock.send
        self.video = video
        self.clock_rate = clock_rate
        self._stopped_at: float | None = None
        self.resync = True

    @property
    def packets(self) -> int:
        return self.copier.packets

    @property
    def dropped(self) -> int:
        """Copies lost: too large, refused by libsrtp, or refused by the socket."""
        return self.copier.dropped

    @property
    def segmenting(self) -> bool:
        """Whether runs of copies still go out as segmented sends (the socket has not refused one)."""
        return bool(self.copier.segmenting)

    @property
    def last_timestamp(self) -> int:
        return self.copier.last_ts

    def restart(self) -> None:
        """The source changed publisher: continue after the last packet sent, from the next keyframe."""
        self.resync = True
        self._stopped_at = time.monotonic()

    def rebase(self, seq: int, ts: int) -> None:
        """Map the source's numbering onto this stream's: the next packet follows the last one sent."""
        copier = self.copier
        elapsed = 0.0 if self._stopped_at is None else time.monotonic() - self._stopped_at
        gap = max(1, int(elapsed * self.clock_rate)) if copier.packets else 0
        copier.seq_offset = (copier.last_seq + 1 - seq) & 0xFFFF
        copier.ts_offset = (copier.last_ts + gap - ts) & 0xFFFFFFFF
        self._stopped_at = None
        self.resync = False

    def send_sender_report(self, now: float, sent_at: float, cname: str | None) -> None:
        """An RTCP sender report for this stream (with the CNAME), made at ``now``: the RTP timestamp of
        that instant is the last packet's (sent at ``sent_at``, both ``time.time()``) advanced by the time
        since, so the NTP time and the RTP timestamp name the same instant, by which a viewer aligns audio
        and video (RFC 3550 6.4.1)."""
        copier = self.copier
        rtp_now = copier.last_ts + int(max(0.0, now - sent_at) * self.clock_rate)
        report = sender_report(self._ssrc, ntp_time(now), rtp_now, copier.packets, copier.octets, cname)
        try:
            self._send(self._srtp.protect_rtcp(report))
        except (OSError, pylibsrtp.Error):  # as for media: the report is lost, the next one follows
            pass

    def retransmit(self, sequence_numbers: list[int]) -> int:
        """Send again the packets a viewer reported lost, if still in history; returns how many."""
        return self.copier.retransmit(sequence_numbers)


class TrackSource:
    """One published track and the sinks it feeds."""

    def __init__(self, info: TrackInfo, codec: RTCRtpCodecParameters, key: int | None = None) -> None:
        self.info = info
        self.key = next(_source_keys) if key is None else key  # names the source to media workers
        self.outlets: list[Outlet] = []  # media workers with viewers of this source (shared by a room's sources)
        self.codec = codec  # as negotiated with the publisher; viewers are offered exactly this codec
        self.mime_type: str = codec.mimeType
        self.clock_rate: int = codec.clockRate
        self.sinks: list[TrackSink] = []
        self._copiers: list[Copier] = []  # of the sinks that are not waiting for a keyframe
        self._waiting = 0  # sinks that are
        self.stats = ForwardStats()
        self.media_ssrc: int | None = None
        self._is_keyframe: Callable[[bytes], bool] | None = (
            keyframe_detector(codec.name) if info.kind == "video" else None
        )
        self._request_keyframe: Callable[[int], None] | None = None
        #: When the last burst was sent (``time.time()``): the instant of sinks' sender reports.
        self.last_forward = 0.0
        self._last_keyframe_request = 0.0
        self.keyframe_interval_s = KEYFRAME_REQUEST_INTERVAL_S
        self._deferred: asyncio.TimerHandle | None = None
        self._burst: list[tuple[int, int, int, bytes]] = []  # (seq, ts, marker, payload) not yet sent
        self._arrivals: list[float] = []  # when each of them arrived
        self._flush_handle: asyncio.Handle | None = None
        self._arrival: Callable[[], float] = time.time
        self._observe: Callable[[float, float, float], None] | None = None

    def connect_upstream(self, request_keyframe: Callable[[int], None], arrival: Callable[[], float]) -> None:
        """Bind the source to a (new) publisher; every sink resumes at that publisher's next keyframe."""
        self._request_keyframe = request_keyframe
        self._arrival = arrival
        self.media_ssrc = None
        for sink in self.sinks:
            sink.restart()
        self._sinks_changed()  # the last publisher's packets still go out first
        for outlet in self.outlets:
            outlet.restart(self.key)

    def observe_delays(self, observe: Callable[[float, float, float], None]) -> None:
        """``observe(arrival, start, end)`` per forwarded packet (``time.time()`` clock): the packet
        arrived at ``arrival``, its first copy was sent after ``start`` and its last at ``end``."""
        self._observe = observe

    def add_sink(self, sink: TrackSink) -> None:
        self.sinks.append(sink)
        self._sinks_changed()
        if self._is_keyframe is not None:
            self.request_keyframe()

    def remove_sink(self, sink: TrackSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
            self._sinks_changed()

    def _sinks_changed(self) -> None:
        self.flush()  # the packets collected so far go to the sinks there were when they arrived
        self._copiers = [sink.copier for sink in self.sinks if not sink.resync]
        self._waiting = len(self.sinks) - len(self._copiers)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per 500 ms per track.

        A request that comes too soon is sent when the interval is over, not dropped: the keyframe
        the earlier request brought may already have gone by.
        """
        if self._request_keyframe is None or self.media_ssrc is None:
            return
        now = time.monotonic()
        wait = self._last_keyframe_request + self.keyframe_interval_s - now
        if wait > 0:
            if self._deferred is None:
                self._deferred = asyncio.get_running_loop().call_later(wait, self._send_deferred)
            return
        self._last_keyframe_request = now
        self.stats.keyframe_requests += 1
        self._request_keyframe(self.media_ssrc)

    def _send_deferred(self) -> None:
        self._deferred = None
        self.request_keyframe()

    def close(self) -> None:
        self.flush()
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        self._request_keyframe = None
        for outlet in self.outlets:
            outlet.drop(self.key)

    def on_packet(self, packet: RtpPacket) -> None:
        """Forward one publisher packet to every sink, and once to each outlet (media worker)."""
        payload = packet.payload
        if not payload:  # padding-only: nothing for viewers
            return
        if self.outlets:
            arrival = self._arrival()
            key = self.key
            for outlet in self.outlets:
                outlet.forward(
                    key, arrival, packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker, payload
                )
        self.forward(packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker, payload)

    def forward(self, ssrc: int, seq: int, ts: int, marker: int, payload: bytes) -> None:
        """Forward one packet's payload to every sink (a media worker calls this for the packets it is handed).
        It is sent with the packets that arrived with it, so ``payload`` must not change after the call."""
        if self.media_ssrc is None:
            self.media_ssrc = ssrc
            if self._waiting and self._is_keyframe is not None:
                self.request_keyframe()
        if self._waiting and (self._is_keyframe is None or self._is_keyframe(payload)):
            self.flush()  # sent with the numbering the sinks had when those packets came
            for sink in self.sinks:  # sinks waiting to start (or restart) do so on this packet
                if sink.resync:
                    sink.rebase(seq, ts)
            self._sinks_changed()
        sent = len(self._copiers)
        stats = self.stats
        stats.packets_in += 1
        stats.packets_out += sent
        if not sent:
            return
        burst = self._burst
        burst.append((seq, ts, marker, payload))
        self._arrivals.append(self._arrival())
        if len(burst) >= BURST_LIMIT:
            self.flush()
        elif self._flush_handle is None:
            try:
                self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop: nothing batches, send now
                self.flush()

    def flush(self) -> None:
        """Every sink's copies of the packets collected, sent. Runs once the packets that arrived together
        are in (scheduled by ``forward``), so a frame's packets reach each viewer in one or a few sends."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        burst, arrivals = self._burst, self._arrivals
        if not burst:
            return
        self._burst, self._arrivals = [], []
        start = time.time()
        send_burst(self._copiers, burst)
        end = time.time()
        self.last_forward = start  # with the sinks' last timestamps, which this pass set
        if self._observe is not None:
            for arrival in arrivals:
                self._observe(arrival, start, end)
