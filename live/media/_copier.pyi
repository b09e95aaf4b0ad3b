"""Viewers' copies of forwarded RTP packets (``live/media/_copier.c``)."""

import socket
from typing import Any

#: Passes of fewer copies (copiers times packets) run in the calling thread alone.
PARALLEL_MIN: int

class Copier:
    """One viewer's outgoing stream of one track: its copies, counters and history."""

    seq_offset: int
    ts_offset: int
    last_seq: int
    last_ts: int
    @property
    def packets(self) -> int: ...
    @property
    def octets(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def segmenting(self) -> int: ...
    def __init__(
        self,
        template: bytes,
        protect: int,
        session: int,
        owner: Any,
        sock: socket.socket,
        payload_type: int,
        history: int,
        segmenting: bool,
    ) -> None: ...
    def retransmit(self, seqs: list[int], /) -> int: ...

def send_burst(copiers: list[Copier], packets: list[tuple[int, int, int, bytes]], /) -> None:
    """Every copier's copy of each (sequence number, timestamp, marker, payload), sent."""

def set_threads(threads: int, /) -> None:
    """Threads per pass over many copiers, the calling one included."""

def split_passes() -> int: ...
