"""live/media/internals.py leans on aiortc, aioice and pylibsrtp internals. These tests fail loudly if an
upgrade changes them: exact pins, the private attributes and methods we touch, and their behaviour."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import socket
import struct
import tomllib
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import aioice.ice
import pylibsrtp
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from pylibsrtp import Policy, Session

from live.media._copier import Copier, send_burst
from live.media.forwarding import TrackSink
from live.media.internals import SO_TIMESTAMPNS, SrtpWriter, sender_cname
from live.media.room import MediaRoom
from tests.media_support import DecodingPeer, SyntheticPublisher, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_media_libraries_are_pinned_to_the_versions_installed() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("aiortc", "aioice", "pylibsrtp"):
        pins = [d for d in deps if re.match(rf"{name}==", d)]
        assert pins, f"{name} must be pinned exactly: live/media/internals.py uses its internals"
        assert pins[0] == f"{name}=={version(name)}", f"installed {name} differs from the pin; re-check internals.py"


def test_private_members_still_have_the_shapes_we_use() -> None:
    source = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__jitter_buffer.add(packet)" in source, "the tap replaces the jitter buffer's add()"
    assert "unwrap_rtx" in source.split("self.__jitter_buffer.add(packet)")[0], "RTX is unwrapped before the tap"
    assert list(inspect.signature(RTCRtpReceiver._send_rtcp_pli).parameters) == ["self", "media_ssrc"]
    assert list(inspect.signature(RTCRtpSender._handle_rtcp_packet).parameters) == ["self", "packet"]
    start = inspect.getsource(RTCRtpSender.send)
    assert "asyncio.ensure_future(self._run_rtcp())" in start, "the RTCP task we take over is started by send()"
    stop = inspect.getsource(RTCRtpSender.stop)
    assert "self.__rtcp_started.wait()" in stop and "self.__rtcp_exited.wait()" in stop, "stop() waits on both"
    assert "self.__cname" in inspect.getsource(RTCRtpSender._run_rtcp), "the CNAME of sender reports"
    assert "self._tx_srtp" in inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "self._rtp_router.route_rtcp(packet)" in inspect.getsource(RTCDtlsTransport._handle_rtcp_data)
    assert "recipient._handle_rtcp_packet(packet)" in inspect.getsource(RTCDtlsTransport._handle_rtcp_data)
    connection_init = inspect.getsource(aioice.ice.Connection.__init__)
    assert "self._nominated" in connection_init and "self._protocols" in connection_init
    assert "self.receiver.data_received(data" in inspect.getsource(aioice.ice.StunProtocol.datagram_received)
    assert "await self.recvfrom()" in inspect.getsource(aioice.ice.Connection.recv)
    assert "self.protocol = protocol" in inspect.getsource(aioice.ice.CandidatePair.__init__)
    assert isinstance(aioice.ice.CandidatePair.remote_addr, property)
    process = inspect.getsource(Session._Session__process)  # type: ignore[attr-defined]
    assert "self._cdata" in process and "self._buffer" in process and "self._srtp[0]" in process
    assert 16 <= pylibsrtp.SRTP_MAX_TRAILER_LEN <= 144, "live/media/_copier.c leaves 144 bytes for it"
    loop = asyncio.new_event_loop()
    try:
        assert callable(loop._add_reader) and callable(loop._remove_reader)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_the_copier_protects_as_the_library_does() -> None:
    """Our C copier calls libsrtp's srtp_protect through pylibsrtp's binding: its packets must be what
    pylibsrtp's own ``protect`` gives for the same header and payload."""
    key = os.urandom(30)
    ours = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    theirs = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    writer = SrtpWriter(ours)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        tx.connect(rx.getsockname())
        template = struct.pack("!BBHII", 0x80, 0, 0, 0, 0x1234)
        copier = Copier(template, writer.protect_address, writer.session_address, writer, tx, 96, 16, False)
        expected = []
        burst = []
        for seq in range(5):
            payload = os.urandom(900)
            burst.append((seq, seq * 3000, seq % 2, payload))
            expected.append(
                theirs.protect(struct.pack("!BBHII", 0x80, 96 | (seq % 2) << 7, seq, seq * 3000, 0x1234) + payload)
            )
        send_burst([copier], burst)
        assert [rx.recv(2048) for _ in expected] == expected
        assert copier.retransmit([3]) == 1 and rx.recv(2048) == expected[3]
        send_burst([copier], [(5, 0, 0, bytes(2048))])
        assert copier.dropped == 1 and copier.packets == 5, "too large for one packet: dropped, not sent"
    finally:
        rx.close()
        tx.close()


async def test_forwarding_taps_receivers_and_sends_through_the_viewers_own_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One publisher, one viewer, both aiortc: the tap gets packets, the viewer's sink is resolved on
    a connected socket, kernel timestamps are on, and the sender reports the viewer gets are ours."""
    delays: list[tuple[float, float, float]] = []
    room = MediaRoom("internals", republish_grace_s=5, observe_delay=lambda *d: delays.append(d))
    publisher = SyntheticPublisher()
    screen = SyntheticPublisher(audio=False)
    viewer = DecodingPeer()
    try:
        await publisher.accept(await room.publish("teacher", "main", await publisher.offer()))

        answers: list[asyncio.Task[None]] = []

        async def send_offer(v: object, payload: dict[str, object]) -> None:
            sdp = await viewer.answer(payload)
            if sdp is not None:
                answers.append(asyncio.ensure_future(room.accept_answer("v1", sdp)))

        await room.watch("v1", "s1", send_offer)
        await wait_for(lambda: viewer.frames["video"] > 5, 10, "decoded frames")
        sinks = [slot.sink for slot in room.viewers["v1"].slots]
        assert all(sink is not None and sink.packets > 0 for sink in sinks)

        pub_connection = room.publishers[("teacher", "main")].tracks[0].transceiver.receiver.transport.transport
        for protocol in pub_connection._connection._protocols:
            sock: socket.socket = protocol.transport._sock
            assert sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 1
        arrival, start, end = delays[-1]
        assert 0 <= start - arrival < 1 and end >= start, "arrival is a kernel time on the time.time() clock"

        slot = room.viewers["v1"].slots[0]
        nominated = slot.transceiver.sender.transport.transport._connection._nominated[1]
        assert nominated.protocol.transport._sock.getpeername()[:2] == tuple(nominated.remote_addr)

        # aiortc's own task would have sent a sender report every 0.5-1.5 s by now: it is quiet, we send them.
        await asyncio.sleep(1.6)
        assert await remote_outbound(viewer) == {}, "no sender report but ours"
        room.send_sender_reports()

        async def both_reported() -> bool:
            return len(await remote_outbound(viewer)) == 2

        await wait_for_async(both_reported, 5, "the sender reports of both streams")
        reported = await remote_outbound(viewer)
        counts = {s.source.info.kind: s.sink.packets for s in room.viewers["v1"].slots}  # type: ignore[union-attr]
        assert set(reported) == {"audio", "video"}
        for kind, packets_sent in reported.items():
            assert 0 < packets_sent <= counts[kind], "the figures of what we sent"
        assert sender_cname(slot.transceiver.sender), "with the CNAME"

        # A track added later (a screen share) gets a slot that may start before aiortc starts its sender:
        # its reports carry the CNAME too.
        await screen.accept(await room.publish("teacher", "screen", await screen.offer()))
        await wait_for(lambda: len(room.viewers["v1"].slots) == 3, 10, "the screen's slot")
        await wait_for(lambda: all(s.sink is not None and s.sink.packets for s in room.viewers["v1"].slots), 10, "it")
        await asyncio.gather(*answers)
        cnames: list[str | None] = []
        send_report = TrackSink.send_sender_report

        def recording(sink: TrackSink, now: float, sent_at: float, cname: str | None) -> None:
            cnames.append(cname)
            send_report(sink, now, sent_at, cname)

        monkeypatch.setattr(TrackSink, "send_sender_report", recording)
        room.send_sender_reports()
        await asyncio.sleep(0.2)
        assert len(cnames) == 3 and all(cnames), cnames
    finally:
        await viewer.close()
        await screen.close()
        await publisher.close()
        await room.close()


async def remote_outbound(peer: DecodingPeer) -> dict[str, int]:
    """Packets sent, per kind, as the last sender report that reached ``peer`` said."""
    reported: dict[str, int] = {}
    for transceiver in peer.pc.getTransceivers():
        for stats in (await transceiver.receiver.getStats()).values():
            if stats.type == "remote-outbound-rtp":
                reported[stats.kind] = stats.packetsSent
    return reported


async def wait_for_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_fresh_peer_connection_has_the_attributes_we_read() -> None:
    async def check() -> None:
        pc = RTCPeerConnection()
        transceiver = pc.addTransceiver("video", direction="sendonly")
        assert transceiver._codecs == [] and transceiver._headerExtensions == []
        assert hasattr(transceiver, "_offerDirection")
        assert hasattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer")
        assert hasattr(transceiver.sender, "_ssrc")
        assert transceiver.sender.transport._tx_srtp is None  # set once DTLS is up
        await pc.close()

    asyncio.run(check())
