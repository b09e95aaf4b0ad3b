def protect_rtp(
    protect: int,
    session: int,
    template: bytes,
    seq: int,
    timestamp: int,
    marker_pt: int,
    payload: bytes | bytearray | memoryview,
    /,
) -> bytes | None: ...
