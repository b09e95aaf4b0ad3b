"""Load-generator process: holds a share of the room's members and measures what they receive.

The parent talks to each generator over a multiprocessing Pipe with small tuples:

    parent -> gen                       gen -> parent
    (started by spawn)                  ("ready", {"connected", "failed", "errors"})
    ("quiet",)                          ("quiet", packets received since the last "quiet")
    ("start", step, t0)                 ("started", None)
    ("count",)                          ("count", deliveries so far in this step)
    ("stop",)                           ("stats", StepStats.summary())
    ("quit",)                           (exits)

The sender writes `#bench:<step>:<seq>:<send time, us since epoch>#` into the chat text; a
generator finds that marker in the raw packet, so it never parses JSON per delivery.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from _sio import AiohttpTransport, SioClient

K = TypeVar("K")

MARK = b"#bench:"
HIST_PER_MS = 10  # 0.1 ms buckets
HIST_MAX_MS = 30_000
_HIST_TOP = HIST_MAX_MS * HIST_PER_MS


def chat_text(step: int, seq: int, sent_us: int) -> str:
    return f"#bench:{step}:{seq}:{sent_us}#"


def percentile(hist: dict[int, int], q: float) -> float | None:
    """q-quantile in ms of a sparse histogram {bucket: count} (0.1 ms buckets)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return round((bucket + 0.5) / HIST_PER_MS, 2)
    return HIST_MAX_MS


def merge_counts(parts: list[dict[K, int]]) -> dict[K, int]:
    total: Counter[K] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


@dataclass
class MemberSpec:
    host: str
    port: int
    token: str


@dataclass
class StepStats:
    step: int
    t0: float  # wall clock at the first send of the step
    members: int
    per_member: list[int] = field(init=False)
    hist: list[int] = field(init=False)
    bins: dict[int, int] = field(default_factory=dict)  # deliveries per 100 ms since t0
    worst: dict[int, int] = field(default_factory=dict)  # highest latency bucket per 100 ms of receipt
    cpu0: float = field(default_factory=time.process_time)
    wall0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.per_member = [0] * self.members
        self.hist = [0] * (_HIST_TOP + 1)

    def summary(self, connected: list[int], disconnected: int) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        return {
            "per_member": [self.per_member[i] for i in connected],
            "hist": {i: n for i, n in enumerate(self.hist) if n},
            "bins": self.bins,
            "worst": self.worst,
            "cpu_s": time.process_time() - self.cpu0,
            "wall_s": wall,
            "disconnected": disconnected,
        }


class Collector:
    """Counts deliveries of the current step; one instance per generator process."""

    def __init__(self) -> None:
        self.current: StepStats | None = None
        self.stale = 0  # bench messages of another step (late arrivals)
        self.unmarked = 0  # room events that are not bench chat

    def on_room_event(self, member: int, data: bytes, now: float) -> None:
        i = data.find(MARK)
        if i < 0:
            self.unmarked += 1
            return
        start = i + len(MARK)
        step, _seq, sent_us = data[start : data.find(b"#", start)].split(b":")
        st = self.current
        if st is None or int(step) != st.step:
            self.stale += 1
            return
        st.per_member[member] += 1
        bucket = int((now * 1e6 - int(sent_us)) * (HIST_PER_MS / 1000))
        st.hist[min(max(bucket, 0), _HIST_TOP)] += 1
        slot = int((now - st.t0) * 10)
        st.bins[slot] = st.bins.get(slot, 0) + 1
        if bucket > st.worst.get(slot, -1):
            st.worst[slot] = bucket


async def _connect_member(
    i: int, spec: MemberSpec, collector: Collector, transport: str, sem: asyncio.Semaphore
) -> SioClient:
    async with sem:
        client = SioClient(lambda data, now: collector.on_room_event(i, data, now), transport)
        await client.connect(spec.host, spec.port, spec.token, timeout=90)
        ack = await client.call("join", {}, timeout=90)
        if not (isinstance(ack, dict) and ack.get("ok")):
            await client.close()
            raise RuntimeError(f"join refused: {ack!r}"[:300])
        return client


def _describe(exc: BaseException) -> str:
    data = getattr(exc, "data", None)
    return f"{type(exc).__name__}: {exc}" + (f" {data}" if data else "")


async def _main(conn: Connection, members: list[MemberSpec], transport: str, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))

    collector = Collector()
    sem = asyncio.Semaphore(concurrency)
    results = await asyncio.gather(
        *(_connect_member(i, m, collector, transport, sem) for i, m in enumerate(members)),
        return_exceptions=True,
    )
    clients = [r for r in results if isinstance(r, SioClient)]
    events: Counter[bytes] = Counter()  # non-chat packets by event name, shared by all clients
    for c in clients:
        c.other_events = events
    connected = [i for i, r in enumerate(results) if isinstance(r, SioClient)]
    errors = Counter(_describe(r) for r in results if isinstance(r, BaseException))
    conn.send(
        (
            "ready",
            {"connected": len(clients), "failed": len(members) - len(clients), "errors": dict(errors.most_common(5))},
        )
    )
    # Nothing allocated from here on needs the cyclic GC; freezing avoids multi-ms pauses
    # that would show up as latency.
    gc.collect()
    gc.freeze()

    last_packets = 0
    while True:
        cmd = await commands.get()
        if cmd[0] == "quiet":
            packets = sum(c.other_packets for c in clients) + collector.unmarked + collector.stale
            conn.send(("quiet", (packets - last_packets, {k.decode(): n for k, n in events.items()})))
            last_packets = packets
            events.clear()
        elif cmd[0] == "start":
            collector.current = StepStats(step=cmd[1], t0=cmd[2], members=len(members))
            conn.send(("started", None))
        elif cmd[0] == "count":
            conn.send(("count", sum(collector.current.per_member) if collector.current else 0))
        elif cmd[0] == "stop":
            st, collector.current = collector.current, None
            disconnected = sum(not c.connected for c in clients)
            conn.send(("stats", st.summary(connected, disconnected) if st else None))
        elif cmd[0] == "quit":
            break
    loop.remove_reader(conn.fileno())
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    await AiohttpTransport.close_session()


def run(conn: Connection, members: list[MemberSpec], transport: str = "raw", concurrency: int = 50) -> None:
    """Entry point of a generator process (multiprocessing target)."""
    try:
        asyncio.run(_main(conn, members, transport, concurrency))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
