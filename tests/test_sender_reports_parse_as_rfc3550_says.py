"""Our RTCP sender reports (live/media/rtp.py) are what viewers align audio and video by: the NTP time must
be the instant we name, and the packet must parse as RFC 3550's SR followed by an SDES CNAME chunk (aiortc's
parser, independent of ours, reads it back)."""

from __future__ import annotations

import datetime as dt

from aiortc import clock
from aiortc.rtp import RtcpPacket, RtcpSdesPacket, RtcpSrPacket
from hypothesis import given
from hypothesis import strategies as st

from live.media.rtp import ntp_time, sender_report


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_ntp_time_is_the_unix_instant(unix_seconds: float) -> None:
    expected = clock.datetime_to_ntp(dt.datetime.fromtimestamp(unix_seconds, dt.UTC))
    assert abs(ntp_time(unix_seconds) - expected) < 1 << 14  # a few microseconds, the float's precision


@given(
    ssrc=st.integers(0, 2**32 - 1),
    rtp_timestamp=st.integers(0, 2**32 - 1),
    packets=st.integers(0, 2**40),
    octets=st.integers(0, 2**50),
    cname=st.one_of(st.none(), st.text(min_size=1, max_size=80)),
)
def test_the_report_parses_back(ssrc: int, rtp_timestamp: int, packets: int, octets: int, cname: str | None) -> None:
    ntp = ntp_time(1_800_000_000.25)
    parsed = RtcpPacket.parse(sender_report(ssrc, ntp, rtp_timestamp, packets, octets, cname))
    sr = parsed[0]
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == ssrc and sr.reports == []
    info = sr.sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp) == (ntp, rtp_timestamp)
    assert (info.packet_count, info.octet_count) == (packets & 0xFFFFFFFF, octets & 0xFFFFFFFF), "counts wrap"
    if cname is None:
        assert len(parsed) == 1
        return
    sdes = parsed[1]
    assert isinstance(sdes, RtcpSdesPacket) and len(sdes.chunks) == 1
    assert sdes.chunks[0].ssrc == ssrc
    assert sdes.chunks[0].items == [(1, cname.encode()[:255])]
