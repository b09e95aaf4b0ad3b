"""Viewers' copies of forwarded RTP packets (``live/media/_copier.c``)."""

import socket
from typing import Any

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
    def flush(self) -> None: ...
    def retransmit(self, seqs: list[int], /) -> int: ...

def fan_out(
    copiers: list[Copier], seq: int, timestamp: int, marker: int, payload: bytes | bytearray | memoryview, /
) -> None: ...
def flush_all(copiers: list[Copier], /) -> None: ...
