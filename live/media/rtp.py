"""RTP details the forwarder needs: where a keyframe starts, a viewer's header extension block, and the
RTCP sender report that goes with a stream."""

from __future__ import annotations

import struct
from collections.abc import Callable

# One-byte header extension profile (RFC 8285).
ONE_BYTE_PROFILE = 0xBEDE

H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


def vp8_keyframe_start(payload: bytes) -> bool:
    """Whether this VP8 RTP payload (RFC 7741) starts a keyframe."""
    size = len(payload)
    if size < 2:
        return False
    descriptor = payload[0]
    start_of_partition = descriptor & 0x10
    partition_id = descriptor & 0x07
    i = 1
    if descriptor & 0x80:  # X: extended control bits follow
        ext = payload[1]
        i = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if i >= size:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            i += 1
    if not start_of_partition or partition_id != 0 or i >= size:
        return False
    return payload[i] & 0x01 == 0  # P bit of the VP8 payload header: 0 for a keyframe


def h264_keyframe_start(payload: bytes) -> bool:
    """Whether this H.264 RTP payload (RFC 6184) starts an IDR picture or carries its SPS."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (H264_IDR, H264_SPS):
        return True
    if nal_type == H264_STAP_A:
        i = 1
        while i + 2 < len(payload):
            size = (payload[i] << 8) | payload[i + 1]
            if payload[i + 2] & 0x1F in (H264_IDR, H264_SPS):
                return True
            i += 2 + size
        return False
    if nal_type == H264_FU_A and len(payload) > 1:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and fu_header & 0x1F in (H264_IDR, H264_SPS)
    return False


def keyframe_detector(codec_name: str) -> Callable[[bytes], bool]:
    """The keyframe test for a video codec name (VP8 or H264)."""
    name = codec_name.upper()
    if name == "VP8":
        return vp8_keyframe_start
    if name == "H264":
        return h264_keyframe_start
    raise ValueError(f"no keyframe detection for {codec_name}")


def mid_extension_block(extension_id: int | None, mid: str | None) -> bytes:
    """The header extension block a viewer's packets carry: the sdes:mid element, or nothing."""
    if extension_id is None or not mid:
        return b""
    value = mid.encode("ascii")
    if not 1 <= extension_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError("mid does not fit a one-byte header extension")
    elements = bytes([(extension_id << 4) | (len(value) - 1)]) + value
    elements += b"\x00" * (-len(elements) % 4)
    return struct.pack("!HH", ONE_BYTE_PROFILE, len(elements) // 4) + elements


#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET_S = 2_208_988_800


def ntp_time(unix_seconds: float) -> int:
    """A ``time.time()`` instant as a 64-bit NTP timestamp (RFC 3550 section 4)."""
    whole = int(unix_seconds)
    return (whole + NTP_UNIX_OFFSET_S) << 32 | int((unix_seconds - whole) * (1 << 32)) & 0xFFFFFFFF


def sender_report(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int, cname: str | None) -> bytes:
    """A compound RTCP packet: a sender report with no report blocks (RFC 3550 6.4.1) and, with ``cname``,
    an SDES CNAME chunk (6.5), which is how a receiver pairs this stream with the publisher's others."""
    report = struct.pack(
        "!BBHIIIIII",
        0x80,  # V=2, no padding, no report blocks
        200,  # SR
        6,  # length in 32-bit words, minus one
        ssrc,
        ntp >> 32,
        ntp & 0xFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packets & 0xFFFFFFFF,
        octets & 0xFFFFFFFF,
    )
    if not cname:
        return report
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"  # CNAME item, then the end of the list
    chunk += b"\x00" * (-len(chunk) % 4)
    return report + struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk  # one chunk, SDES
