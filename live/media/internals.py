"""Every use of aiortc's and aioice's private internals, in one place.

The pass-through SFU needs four things aiortc does not expose:

- the publisher's RTP packets after SRTP, RTX unwrapping and NACK generation, but before the jitter
  buffer and decoder (we forward packets, we never decode them);
- the arrival time of each datagram, to measure how long forwarding takes;
- a viewer's SRTP session and the UDP socket and address of its selected ICE pair, so that a packet
  is rewritten, protected and sent with no coroutine per packet;
- a viewer's RTCP (PLI, FIR, NACK, receiver reports) and the figures in its sender reports.

aiortc and aioice are pinned exactly in pyproject.toml; ``tests/test_aiortc_internals.py`` fails
loudly when an upgrade changes anything used here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import AnyRtcpPacket, RtcpByePacket, RtpPacket


class PacketTap(Protocol):
    """Receives each RTP packet of a published track, in arrival order."""

    def __call__(self, packet: RtpPacket) -> None: ...


class _JitterBufferTap:
    """Stands in for a receiver's jitter buffer: hands packets on and never builds frames."""

    __slots__ = ("tap",)

    def __init__(self, tap: PacketTap) -> None:
        self.tap = tap

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self.tap(packet)
        return False, None


def tap_receiver(receiver: RTCRtpReceiver, tap: PacketTap) -> None:
    """Route a receiver's packets to ``tap`` instead of its jitter buffer and decoder.

    The receiver keeps what a publisher needs from it: receiver reports, NACKs for lost packets,
    REMB bandwidth estimates and RTX unwrapping. Nothing is decoded, so no frame piles up.
    """
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
        raise RuntimeError("aiortc internals changed: RTCRtpReceiver has no jitter buffer to tap")
    state: Any = receiver
    state._RTCRtpReceiver__jitter_buffer = _JitterBufferTap(tap)


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the publisher of ``media_ssrc`` for a keyframe (RTCP PLI)."""
    await receiver._send_rtcp_pli(media_ssrc)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
READS_PER_WAKEUP = 64


class ArrivalClock:
    """When the datagram being handled arrived: the kernel's receive timestamp (``time.time()`` clock).

    A packet can wait in the socket buffer while the event loop forwards the one before it, and then in
    aioice's queue; both waits are part of the forwarding delay. The publisher's sockets are read with
    ``recvmsg`` and ``SO_TIMESTAMPNS`` instead of asyncio's ``recvfrom``, and each datagram's stamp
    follows it through aioice's queue to the forwarder.
    """

    def __init__(self) -> None:
        self._stamps: collections.deque[float] = collections.deque()
        self._last = time.time()
        self.current = self._last

    def attach(self, receiver: RTCRtpReceiver) -> None:
        """Call once the connection has gathered its candidates (after setLocalDescription)."""
        connection: Any = receiver.transport.transport._connection
        loop: Any = asyncio.get_running_loop()
        for protocol in connection._protocols:
            sock: socket.socket = protocol.transport._sock
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                continue  # this socket keeps asyncio's reader; its datagrams are stamped when read
            # asyncio's own reader for this transport is replaced; closing the transport removes ours.
            loop._remove_reader(sock.fileno())
            loop._add_reader(sock.fileno(), self._read, sock, protocol)
        stamps = self._stamps
        data_received = connection.data_received
        recvfrom = connection.recvfrom

        def stamped_data_received(data: bytes, component: int) -> None:
            stamps.append(self._last)
            data_received(data, component)

        async def stamped_recvfrom() -> tuple[bytes, int]:
            result: tuple[bytes, int] = await recvfrom()
            self.current = stamps.popleft() if stamps else time.time()
            return result

        connection.data_received = stamped_data_received
        connection.recvfrom = stamped_recvfrom

    def _read(self, sock: socket.socket, protocol: Any) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancillary, _, address = sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            stamp = None
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= TIMESPEC.size:
                    seconds, nanoseconds = TIMESPEC.unpack_from(raw)
                    stamp = seconds + nanoseconds / 1e9
            self._last = stamp if stamp is not None else time.time()
            protocol.datagram_received(data, address)


SRTP_PROTECT_TYPE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"


class SrtpWriter:
    """A pylibsrtp session as the forwarder uses it: the addresses of its libsrtp context and of
    ``srtp_protect``, which ``live/media/_copier.c`` calls for each viewer's copy of a packet.

    ``Session.protect`` takes several interpreter calls per packet (copies into and out of a cffi buffer,
    a cffi call); the C copier builds and protects a copy in one.
    """

    __slots__ = ("_session", "protect_address", "session_address")

    def __init__(self, session: Any) -> None:
        from pylibsrtp import _binding

        ffi, lib = _binding.ffi, _binding.lib
        if str(ffi.typeof(lib.srtp_protect)) != f"<ctype '{SRTP_PROTECT_TYPE}'>":
            raise RuntimeError(f"pylibsrtp internals changed: srtp_protect is {ffi.typeof(lib.srtp_protect)}")
        self._session = session  # keeps the context alive
        self.session_address = int(ffi.cast("uintptr_t", session._srtp[0]))
        self.protect_address = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))

    def protect_rtcp(self, packet: bytes) -> bytes:
        """``packet`` (RTCP) protected with the same session."""
        protected: bytes = self._session.protect_rtcp(packet)
        return protected


@dataclass(frozen=True)
class Egress:
    """What a viewer's sender needs to put a packet on the wire without aiortc's send path."""

    payload_type: int
    ssrc: int
    mid: str | None
    mid_extension_id: int | None
    srtp: SrtpWriter
    #: The viewer's ICE socket, connected to its address: media and sender reports go out on it.
    sock: socket.socket


MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def egress_of(transceiver: RTCRtpTransceiver) -> Egress:
    """Resolve a connected send transceiver's negotiated codec, SRTP session and selected ICE pair.

    The pair's UDP socket is connected to the viewer's address: a connected socket sends without a
    route lookup per packet, and after ICE has chosen the pair nothing else arrives on it that matters.
    """
    sender = transceiver.sender
    dtls = sender.transport
    if dtls.state != "connected":
        raise ConnectionError("viewer transport is not connected")
    srtp: Any = dtls._tx_srtp
    pair: Any = dtls.transport._connection._nominated.get(1)
    if srtp is None or pair is None:
        raise ConnectionError("viewer transport has no SRTP session or selected ICE pair")
    sock: socket.socket = pair.protocol.transport._sock
    address = pair.remote_addr
    if _peer_of(sock) != (address[0], address[1]):
        sock.connect(address)
    codecs = negotiated_codecs(transceiver)
    mid_id = next((ext.id for ext in transceiver._headerExtensions if ext.uri == MID_URI), None)
    return Egress(
        payload_type=int(codecs[0].payloadType or 0),
        ssrc=sender._ssrc,
        mid=transceiver.mid,
        mid_extension_id=mid_id,
        srtp=SrtpWriter(srtp),
        sock=sock,
    )


def _peer_of(sock: socket.socket) -> tuple[str, int] | None:
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return (peer[0], peer[1])


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs a transceiver negotiated, first the one in use; empty before negotiation."""
    return list(transceiver._codecs)


def offered_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction a remote offer asked of this transceiver (``recvonly`` when the remote sends)."""
    return transceiver._offerDirection


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """After applying a remote offer whose DTLS role is open (``actpass``), answer ``setup:passive``.

    aiortc would answer ``active`` and, as DTLS client, offer ECDSA cipher suites only, which a peer
    with an RSA certificate (GStreamer's webrtcbin) cannot accept. As the DTLS server aiortc picks a
    suite from the client's list, so both kinds of peers connect.
    """
    for transceiver in pc.getTransceivers():
        dtls: Any = transceiver.receiver.transport
        if dtls._role == "auto":
            dtls._set_role("server")


RtcpHandler = Callable[[AnyRtcpPacket], Awaitable[None]]


def intercept_rtcp(sender: RTCRtpSender, handler: RtcpHandler) -> None:
    """Deliver the RTCP that a viewer sends about ``sender``'s stream to ``handler`` instead."""
    if not callable(getattr(sender, "_handle_rtcp_packet", None)):
        raise RuntimeError("aiortc internals changed: RTCRtpSender has no _handle_rtcp_packet")
    state: Any = sender  # an instance attribute shadows the method
    state._handle_rtcp_packet = handler


def take_over_sender_reports(sender: RTCRtpSender) -> None:
    """Keep aiortc's RTCP task of ``sender`` (started by ``send()``) from sending sender reports: we send
    them, for every viewer from one timer, through the same path as the media (``TrackSink``). aiortc's
    task costs a coroutine wake-up and its whole send path per report, and it would report aiortc's own
    counts, which are zero for a sender whose packets we send. Ours only waits, and says BYE when the
    sender stops, as aiortc's does. Call before the transceiver is negotiated."""
    if not callable(getattr(sender, "_run_rtcp", None)) or not hasattr(sender, "_RTCRtpSender__rtcp_exited"):
        raise RuntimeError("aiortc internals changed: RTCRtpSender has no _run_rtcp task to take over")
    state: Any = sender

    async def run_rtcp() -> None:
        state._RTCRtpSender__rtcp_started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.get_running_loop().create_future()  # until stop() cancels it
        with contextlib.suppress(Exception):
            await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
        state._RTCRtpSender__rtcp_exited.set()

    state._run_rtcp = run_rtcp  # an instance attribute shadows the method


def sender_cname(sender: RTCRtpSender) -> str | None:
    """The CNAME the peer connection gave ``sender`` (its sender reports carry it)."""
    cname: str | None = getattr(sender, "_RTCRtpSender__cname", None)
    return cname


class SilentTrack(MediaStreamTrack):
    """Placeholder for a sender's track whose packets we send ourselves.

    aiortc's sender task awaits ``recv()`` until the track stops, so it costs nothing per packet.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._ended
        raise MediaStreamError

    def stop(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)
        super().stop()
