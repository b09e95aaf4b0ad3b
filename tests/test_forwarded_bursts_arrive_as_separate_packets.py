"""A burst of packets forwarded together (a video frame) reaches each viewer's socket in a few segmented
sends (UDP GSO): the viewer must still receive every packet as its own datagram, in order, byte for byte
what packet-by-packet sending gives. A socket that refuses segmentation gets the same packets one by one.
A pass over many viewers split over threads gives each viewer the same stream as one thread does.

Real parts: loopback UDP sockets, the kernel's segmentation, SRTP sessions on both ends."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import socket
import time
import weakref

import pylibsrtp
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from live.media._copier import PARALLEL_MIN, Copier, send_burst, split_passes
from live.media.forwarding import TrackInfo, TrackSink, TrackSource, set_fanout_threads
from live.media.internals import Egress, SrtpWriter
from live.media.ipc import KIND_PACKET, PACKET
from live.media.worker_main import MediaWorker

KEY = os.urandom(30)
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
SO_NO_CHECK = 11  # asm-generic/socket.h
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


class ViewerEnd:
    """A viewer's UDP socket and SRTP session, and the sink that sends to it."""

    def __init__(self, *, refuse_segments: bool) -> None:
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.rx.setblocking(False)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if refuse_segments:
            # No UDP checksum: the kernel refuses segmentation on this socket (EINVAL), as it does on a
            # device or a route that cannot segment.
            self.tx.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        self.tx.connect(self.rx.getsockname())
        self.tx.setblocking(False)
        outbound = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE)
        inbound = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE)
        self.srtp_in = pylibsrtp.Session(policy=inbound)
        egress = Egress(
            payload_type=96,
            ssrc=0x1234,
            mid="0",
            mid_extension_id=3,
            srtp=SrtpWriter(pylibsrtp.Session(policy=outbound)),
            sock=self.tx,
        )
        self.sink = TrackSink(egress, video=True, clock_rate=90000)

    def received(self) -> list[RtpPacket]:
        out = []
        while True:
            try:
                datagram = self.rx.recv(65536)
            except BlockingIOError:
                return out
            out.append(RtpPacket.parse(self.srtp_in.unprotect(datagram)))

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def payload(size: int, *, keyframe: bool, fill: int) -> bytes:
    head = b"\x10\x00" if keyframe else b"\x00\x01"  # VP8 descriptor: a keyframe's first packet, or not
    return head + bytes([fill % 256]) * (size - 2)


def has_run(sizes: list[int]) -> bool:
    """Whether a burst holds a run for one segmented send: a copy followed by one no larger."""
    return any(later <= first for first, later in itertools.pairwise(sizes))


sizes = st.integers(min_value=2, max_value=1200)
bursts = st.lists(
    st.one_of(
        st.lists(sizes, min_size=1, max_size=12),
        st.integers(2, 1200).flatmap(lambda n: st.lists(st.just(n), min_size=2, max_size=70)),  # a keyframe's run
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None)
@given(bursts)
def test_every_packet_arrives_once_in_order(plan: list[list[int]]) -> None:
    asyncio.run(_forward(plan))


async def _forward(plan: list[list[int]]) -> None:
    ends = [ViewerEnd(refuse_segments=False), ViewerEnd(refuse_segments=True)]
    source = TrackSource(TrackInfo("s", "teacher", "camera", "video"), VP8)
    for end in ends:
        source.add_sink(end.sink)
    sent: list[tuple[bytes, int]] = []
    seq, ts = 100, 9000
    try:
        for number, burst in enumerate(plan):
            for i, size in enumerate(burst):
                data = payload(size, keyframe=i == 0, fill=len(sent))
                marker = int(i == len(burst) - 1)
                source.forward(0xABC, seq, ts, marker, data)
                sent.append((data, marker))
                seq = (seq + 1) & 0xFFFF
            ts += 3000
            if number % 2:
                await asyncio.sleep(0)  # the scheduled flush sends the burst
            else:
                source.flush()
            for end in ends:
                assert end.sink.dropped == 0
        for end in ends:
            got = end.received()
            assert [(p.payload, p.marker) for p in got] == sent
            numbers = [p.sequence_number for p in got]
            assert numbers == [(numbers[0] + k) & 0xFFFF for k in range(len(numbers))]
            assert {p.ssrc for p in got} == {0x1234}
        assert ends[0].sink.segmenting, "loopback accepts segmented sends"
        tried = any(has_run(burst) for burst in plan)
        assert ends[1].sink.segmenting is not tried, "refused once, the sink sends packet by packet"
    finally:
        source.close()
        for end in ends:
            end.close()


@pytest.mark.parametrize("refuse", [False, True])
def test_a_sink_leaving_mid_burst_sends_what_it_was_given(refuse: bool) -> None:
    async def leave_mid_burst() -> None:
        end = ViewerEnd(refuse_segments=refuse)
        source = TrackSource(TrackInfo("s", "teacher", "camera", "video"), VP8)
        source.add_sink(end.sink)
        try:
            for k in range(3):
                source.forward(1, 10 + k, 0, 0, payload(900, keyframe=k == 0, fill=k))
            assert end.received() == [], "the burst waits for its flush"
            source.remove_sink(end.sink)
            assert [p.payload[2] for p in end.received()] == [0, 1, 2]
        finally:
            source.close()
            end.close()

    asyncio.run(leave_mid_burst())


@pytest.mark.parametrize("thread_counts", [[1], [3, 2, 3]])
def test_a_pass_split_over_threads_gives_every_viewer_its_stream(thread_counts: list[int]) -> None:
    """Many viewers, so a pass is split over the threads asked for (the counts changed between passes):
    each viewer still gets every packet once, in order, with its own continuous numbering."""

    async def forward_to_many() -> None:
        ends = [ViewerEnd(refuse_segments=i % 5 == 0) for i in range(PARALLEL_MIN + 2)]
        source = TrackSource(TrackInfo("s", "teacher", "camera", "video"), VP8)
        for end in ends:
            source.add_sink(end.sink)
        sent: list[bytes] = []
        seq = 0
        try:
            for threads in thread_counts:
                set_fanout_threads(threads)
                passes = split_passes()
                keyframe = [payload(1100, keyframe=k == 0, fill=seq + k) for k in range(40)]
                keyframe.append(payload(300, keyframe=False, fill=seq + 40))
                for k, data in enumerate(keyframe):  # a keyframe: one pass, runs of equal sizes
                    source.forward(7, seq, 3000 * seq, int(k == len(keyframe) - 1), data)
                    seq += 1
                source.flush()
                sent += keyframe
                for _ in range(20):  # then a pass per packet
                    data = payload(200 + seq, keyframe=False, fill=seq)
                    source.forward(7, seq, 3000 * seq, 1, data)
                    source.flush()
                    sent.append(data)
                    seq += 1
                assert (split_passes() > passes) is (threads > 1), "many viewers: the pass is split over threads"
            for end in ends:
                got = end.received()
                assert [p.payload for p in got] == sent and end.sink.dropped == 0
                numbers = [p.sequence_number for p in got]
                assert numbers == [(numbers[0] + k) & 0xFFFF for k in range(len(numbers))]
        finally:
            set_fanout_threads(1)
            source.close()
            for end in ends:
                end.close()

    asyncio.run(forward_to_many())


def test_a_worker_forwards_each_datagram_it_reads_as_its_own_packet() -> None:
    """A media worker reads the server's datagrams into one buffer, many per wakeup; the source sends
    them once all are in, so each must keep its own bytes."""

    async def read_three() -> None:
        end = ViewerEnd(refuse_segments=False)
        control, server_control = socket.socketpair()
        data, server_data = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        data.setblocking(False)
        worker = MediaWorker(control, data)
        source = TrackSource(TrackInfo("s", "teacher", "camera", "video"), VP8, key=77)
        source.add_sink(end.sink)
        worker.mirrors[source.key] = source
        try:
            for k in range(3):
                header = PACKET.pack(KIND_PACKET, source.key, time.time(), 0xABC, 0, 10 + k, 0)
                server_data.send(header + payload(900, keyframe=k == 0, fill=k))
            worker.read_packets()
            await asyncio.sleep(0)  # the scheduled flush
            assert [p.payload[2] for p in end.received()] == [0, 1, 2]
        finally:
            source.close()
            end.close()
            for sock in (control, server_control, data, server_data):
                sock.close()

    asyncio.run(read_three())


def test_sender_reports_pair_the_time_of_a_pass_with_its_timestamps() -> None:
    """A sender report names the last timestamp sent and when it was sent: a packet collected but not yet
    sent changes neither."""

    async def report_between() -> None:
        end = ViewerEnd(refuse_segments=False)
        source = TrackSource(TrackInfo("s", "teacher", "camera", "video"), VP8)
        source.add_sink(end.sink)
        try:
            source.forward(1, 10, 3000, 1, payload(500, keyframe=True, fill=0))
            source.flush()
            sent_at, timestamp = source.last_forward, end.sink.last_timestamp
            assert sent_at > 0
            source.forward(1, 11, 6000, 1, payload(500, keyframe=False, fill=1))
            assert (source.last_forward, end.sink.last_timestamp) == (sent_at, timestamp)
            source.flush()
            assert source.last_forward >= sent_at and end.sink.last_timestamp == (timestamp + 3000) & 0xFFFFFFFF
        finally:
            source.close()
            end.close()

    asyncio.run(report_between())


def test_a_burst_with_a_marker_that_is_not_an_int_is_refused_before_anything_runs() -> None:
    """The copier reads the burst's list without Python code running in between: a marker whose truth
    would run code (and could empty the list under it) is refused, and nothing is sent."""
    viewer = ViewerEnd(refuse_segments=False)
    packets: list[tuple[int, int, object, bytes]] = []

    class Emptying:
        def __bool__(self) -> bool:
            packets.clear()
            return True

    try:
        packets += [(1, 10, Emptying(), b"x" * 100), (2, 10, 1, b"y" * 100)]
        with pytest.raises(TypeError, match="marker"):
            send_burst([viewer.sink.copier], packets)  # type: ignore[arg-type]  # what is refused
        assert len(packets) == 2 and viewer.sink.packets == 0 and viewer.received() == []
        send_burst([viewer.sink.copier], [(3, 10, True, b"z" * 100)])  # a bool is an int
        [got] = viewer.received()
        assert got.marker == 1 and got.payload == b"z" * 100
    finally:
        viewer.close()


def test_a_copier_in_a_reference_cycle_is_collected() -> None:
    """A Copier keeps its owner and socket alive; the garbage collector sees those references, so a cycle
    through a copier is freed."""

    class Owner:
        copier: Copier | None = None

    viewer = ViewerEnd(refuse_segments=False)
    try:
        owner = Owner()
        copier = Copier(b"\x80" + bytes(11), 1, 1, owner, viewer.tx, 96, 0, False)
        owner.copier = copier
        gone = weakref.ref(owner)
        del owner, copier
        gc.collect()
        assert gone() is None
    finally:
        viewer.close()
