#!/usr/bin/env python3
"""Chat fan-out benchmark: one room, N members over two server instances sharing one Redis.

    python bench/fanout.py               # 1,000 members, 20 msgs/s for 30 s, ours then the reference
    python bench/fanout.py --quick       # 200 members, 5 s: the whole thing in under a minute
    python bench/fanout.py --saturate    # also raise the rate until p99 > 100 ms or deliveries lag
    python bench/fanout.py --only reference --quick   # just the Node reference (no live/ needed)

Teacher-role senders (one identity per 3 msgs/s: the staff chat limit is 100 per 30 s per user)
send `chat:send` at a steady rate; student members, held by load-generator processes, count the
`room:event`s they receive and the send-to-receive latency (the send time, wall clock in us,
travels in the chat text; every process is on this machine). The same load then runs against
bench/reference/server.js: Node Socket.IO 4 with @socket.io/redis-adapter, two instances, the
same event names.

CPU sharing (the machine has 2 cores, and nothing is pinned): two server instances, Redis, two
generator processes and this process (the senders) all compete, and the scheduler shares the
cores. The generators are kept cheap rather than isolated: a hand-written websocket client that
finds a marker in the raw frame (no JSON parse, no task switch per delivery), about 20-25 us of
CPU per received message, GC frozen after setup. At the full load they still take about as much
CPU as the servers, so each step reports who used what, from /proc: `server_cpu` per instance
and Redis, `gen_cpu_total` (generators and senders), and `foreign_cpu`, the cores taken by
processes outside the benchmark (tests, builds, another benchmark); a run where that exceeded
0.25 core is flagged `"noisy": true`.

Which figures to compare. Below both servers' capacity, deliveries/s equals the offered load for
both, so `ratio` at a fixed rate is 1 whenever both keep up and says only that; what differs
there is latency (`p50_ms`, `p99_ms`, `ack_*`) and server CPU per delivery
(`cpu_us_per_delivery`, `cpu_cost_ratio`), the figure least disturbed by the shared machine.
`--saturate` gives the throughput comparison: the highest deliveries/s each server sustains with
p99 <= 100 ms, >= 95% delivered within the send window, no losses and no send errors
(`sat_deliveries_per_s`, `sat_ratio`), same machine, same generators; `sat_limit` says what the
first failing step ran out of. On 2 shared cores that limit is usually the machine, so the
saturation ratio mostly reflects CPU per delivery plus how each server's latency degrades.

Servers run one after the other by default. `--interleave` keeps both up and alternates their
steps, so that bursts of outside load fall on both alike; but the idle server's background work
then lands on the other's steps (`idle_target_cpu`). At the time of writing ours, idle with 1,000
members, used about 0.1 core, which cost the Node reference about a third of its saturation
figure (p99 tails), so interleaving is not the default.

The last line of stdout is one JSON object with the figures; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loadgen
from _common import mint
from _loadgen import MemberSpec, chat_text, merge_counts, percentile
from _servers import (
    Proc,
    create_pg_database,
    drop_pg_database,
    ensure_reference_installed,
    log,
    machine_busy,
    start_live_instances,
    start_redis,
    start_reference_instances,
    tree_cpu_seconds,
    wait_ready,
)
from _sio import SioClient

SENDER_RATE = 3.0  # msgs/s per teacher identity, under the staff limit of 100 per 30 s
P99_LIMIT_MS = 100.0
KEEP_UP = 0.95  # deliveries inside the send window / offered, below which a step has fallen behind
MAX_MISSING = 0.001  # fraction of expected deliveries that may be missing after the drain
INSTANCES = 2
NOISY_CPU = 0.25  # cores used by processes outside the benchmark above which a run is flagged noisy

TEACHER_GRANTS = {"publish": True, "chat": True, "ask": True, "gift": False, "buy": False, "room_admin": True}
STUDENT_GRANTS = {"publish": False, "chat": True, "ask": True, "gift": True, "buy": True, "room_admin": False}


# --------------------------------------------------------------------------- servers under test


@dataclass
class Target:
    name: str  # "live" or "reference"
    secret: str
    instances: list[tuple[Proc, int]]
    redis: Proc
    go_live: bool  # our rooms start "scheduled"; the reference has no room status

    def named_pids(self) -> dict[str, int]:
        """Server instances and Redis, by the names used in `server_cpu`."""
        return {p.name: p.pid for p, _ in self.instances} | {"redis": self.redis.pid}


async def start_target(kind: str, args: argparse.Namespace, stack: AsyncExitStack, work: Path) -> Target:
    redis, redis_port = start_redis(work)
    stack.callback(redis.stop)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    secret = secrets.token_urlsafe(48)[:48]
    if kind == "live":
        env = {
            "LIVE_REDIS_URL": redis_url,
            "LIVE_SECRET": secret,
            "LIVE_API_KEY": "bench",
            "LIVE_API_SECRET": secrets.token_urlsafe(24),
            "LIVE_DATA_DIR": str(work / "data"),
            "LIVE_DATABASE_URL": await _database_url(args, stack, work),
        }
        (work / "data").mkdir(exist_ok=True)
        instances = start_live_instances(INSTANCES, env, work)
    else:
        ensure_reference_installed()
        instances = start_reference_instances(INSTANCES, redis_url, work)
    for proc, _ in instances:
        stack.callback(proc.stop)
    procs = [p for p, _ in instances]
    await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{port}/readyz", procs, 60) for _, port in instances))
    log(f"{kind}: {INSTANCES} instances ready on ports {[port for _, port in instances]}, redis {redis_port}")
    return Target(kind, secret, instances, redis, go_live=kind == "live")


async def _database_url(args: argparse.Namespace, stack: AsyncExitStack, work: Path) -> str:
    if args.sqlite:
        return f"sqlite:///{work / 'data' / 'live.db'}"
    name, url = await create_pg_database()
    stack.push_async_callback(drop_pg_database, name)
    log(f"created PostgreSQL database {name}")
    return url


# --------------------------------------------------------------------------- generator processes


async def _recv(conn: Connection, timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(conn.fileno())
        try:
            fut.set_result(conn.recv())
        except Exception as exc:  # EOFError when the generator died
            fut.set_exception(exc)

    loop.add_reader(conn.fileno(), readable)
    try:
        async with asyncio.timeout(timeout):
            return await fut
    finally:
        loop.remove_reader(conn.fileno())


class Generators:
    def __init__(self, procs: list[Any], conns: list[Connection]) -> None:
        self.procs = procs
        self.conns = conns

    @classmethod
    def spawn(cls, members: list[MemberSpec], n_procs: int, transport: str) -> Generators:
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        for i in range(n_procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_loadgen.run, args=(child, members[i::n_procs], transport), name=f"loadgen-{i}", daemon=True
            )
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        return cls(procs, conns)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def collect(self, expect: str, timeout: float) -> list[Any]:
        replies = await asyncio.gather(*(_recv(c, timeout) for c in self.conns))
        for kind, _ in replies:
            if kind != expect:
                raise RuntimeError(f"generator answered {kind!r}, expected {expect!r}")
        return [payload for _, payload in replies]

    async def request(self, msg: tuple[Any, ...], expect: str, timeout: float = 30) -> list[Any]:
        for c in self.conns:
            c.send(msg)
        return await self.collect(expect, timeout)

    async def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("quit",))
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            await asyncio.to_thread(p.join, max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5)


# --------------------------------------------------------------------------- senders


@dataclass
class SendReport:
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unacked: int = 0
    max_lag_ms: float = 0.0  # how far behind schedule the send loop fell
    ack_ms: list[float] = field(default_factory=list)


class Senders:
    """Teacher-role connections that send the chat; spread over the instances."""

    def __init__(self, target: Target, room: str, transport: str) -> None:
        self.target = target
        self.room = room
        self.transport = transport
        self.clients: list[SioClient] = []
        self.received = 0  # room events the senders themselves got (they are in the room too)

    def _on_event(self, _data: bytes, _now: float) -> None:
        self.received += 1

    async def ensure(self, n: int) -> None:
        while len(self.clients) < n:
            j = len(self.clients)
            port = self.target.instances[j % len(self.target.instances)][1]
            token = mint(self.target.secret, self.room, f"bench-teacher-{j}", "teacher", TEACHER_GRANTS)
            client = SioClient(self._on_event, self.transport)
            await client.connect("127.0.0.1", port, token, timeout=60)
            ack = await client.call("join", {}, timeout=60)
            if not (isinstance(ack, dict) and ack.get("ok")):
                raise RuntimeError(f"sender join refused: {json.dumps(ack)[:500]}")
            if j == 0 and self.target.go_live:
                ack = await client.call("room:go_live", {}, timeout=10)
                if not (isinstance(ack, dict) and ack.get("ok")):
                    log(f"room:go_live answered {json.dumps(ack)[:300]} (continuing)")
            self.clients.append(client)

    def other_packets(self) -> int:
        return sum(c.other_packets for c in self.clients)

    async def send_step(self, rate: float, duration: float, step: int, t0: float) -> SendReport:
        n_msgs = max(1, round(rate * duration))
        k = min(len(self.clients), math.ceil(rate / SENDER_RATE))
        report = SendReport()
        all_acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent_at: dict[int, float] = {}

        def on_ack(seq: int, res: Any) -> None:
            report.ack_ms.append((time.time() - sent_at.pop(seq)) * 1000)
            if isinstance(res, dict) and res.get("ok"):
                report.ok += 1
            else:
                code = res.get("error", {}).get("code") if isinstance(res, dict) else None
                report.errors[str(code or res)[:80]] += 1
            if report.ok + sum(report.errors.values()) == n_msgs and not all_acked.done():
                all_acked.set_result(None)

        for seq in range(n_msgs):
            delay = t0 + seq / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                report.max_lag_ms = max(report.max_lag_ms, -delay * 1000)
            now = time.time()
            sent_at[seq] = now
            text = chat_text(step, seq, int(now * 1e6))
            self.clients[seq % k].emit("chat:send", {"text": text}, functools.partial(on_ack, seq))
            report.sent += 1
        try:
            async with asyncio.timeout(15):
                await all_acked
        except TimeoutError:
            report.unacked = len(sent_at)
        return report

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


# --------------------------------------------------------------------------- one load step


@dataclass
class StepResult:
    rate: float
    duration_s: float
    members: int
    sent: int
    accepted: int
    send_errors: dict[str, int]
    expected: int  # accepted messages x members
    delivered: int
    missing: int  # expected deliveries never seen (the drain waits until deliveries stop)
    duplicates: int
    offered_per_s: float
    deliveries_per_s: float  # received inside the send window / window
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    server_cpu: dict[str, float]  # fraction of one core over the step
    cpu_us_per_delivery: float | None  # server instances only (not Redis), per delivery incl. senders'
    gen_cpu_max: float  # busiest generator process, fraction of one core
    gen_cpu_total: float  # all generators plus this process (the senders), in cores
    machine_busy: float  # all cores, 0..1
    foreign_cpu: float  # cores used by processes that are not part of this benchmark
    idle_target_cpu: float  # cores used meanwhile by the other server under test (idle, interleaved)
    send_lag_ms: float
    slow_moments: list[list[float]]  # [from s, to s, worst ms]: when deliveries took over the p99 limit
    disconnected: int
    keeps_up: bool
    why_not: str


@dataclass
class CpuWindow:
    """CPU used during one step, from /proc."""

    wall: float
    server_cpu: dict[str, float]  # cores, per instance of the target and its Redis
    server_cpu_s: float  # seconds, the target's instances only
    idle_target_cpu: float  # cores, the other target's servers and generators
    bench_cores: float  # everything this benchmark runs, both targets
    machine_busy: float  # 0..1 of all cores


class Bench:
    """One server under test with its members and senders. `turn` is shared by all targets: one
    step runs at a time, and since asyncio.Lock is FIFO, two targets' steps alternate."""

    def __init__(
        self,
        target: Target,
        gens: Generators,
        senders: Senders,
        members: int,
        turn: asyncio.Lock,
        bench_pids: list[int],
    ) -> None:
        self.target = target
        self.gens = gens
        self.senders = senders
        self.members = members
        self.turn = turn
        self.bench_pids = bench_pids  # every process either target runs (servers, Redis, generators)
        self.step_no = 0

    async def wait_quiet(self, timeout: float = 90.0) -> float:
        """Wait until the room is idle, so that presence storms after joins, or the backlog of a step
        that fell behind, do not count in the next step. Returns the seconds waited."""
        threshold = 5 + self.members // 50  # packets per 0.5 s: presence:count and pings only
        started = time.monotonic()
        deadline, next_note = started + timeout, started + 10
        await self.gens.request(("quiet",), "quiet")
        last_sender = self.senders.other_packets() + self.senders.received
        calm = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            replies = await self.gens.request(("quiet",), "quiet", timeout=60)
            sender_now = self.senders.other_packets() + self.senders.received
            packets = sum(n for n, _ in replies) + sender_now - last_sender
            by_event = merge_counts([e for _, e in replies])
            last_sender = sender_now
            calm = calm + 1 if packets <= threshold else 0
            if calm >= 2:
                return time.monotonic() - started
            if time.monotonic() > next_note:
                log(f"{self.target.name}: room still busy ({packets * 2}/s packets to members: {by_event}), waiting")
                next_note += 10
        log(f"{self.target.name}: room still busy after {timeout:.0f}s; measuring anyway")
        return time.monotonic() - started

    async def drain(self, expected: int, minimum: float, maximum: float = 30.0) -> None:
        """Wait for late deliveries: at least `minimum` seconds, then until all expected arrived or
        nothing arrived for a second, so that `missing` counts losses rather than a backlog."""
        started = time.monotonic()
        await asyncio.sleep(minimum)
        last, still = -1, 0
        while time.monotonic() - started < maximum:
            got = sum(await self.gens.request(("count",), "count"))
            if got >= expected:
                return
            still = still + 1 if got == last else 0
            if still >= 2:
                return
            last = got
            await asyncio.sleep(0.5)

    async def step(self, rate: float, duration: float, drain: float) -> StepResult:
        async with self.turn:
            return await self._step(rate, duration, drain)

    async def _step(self, rate: float, duration: float, drain: float) -> StepResult:
        self.step_no += 1
        await self.senders.ensure(math.ceil(rate / SENDER_RATE))
        await self.wait_quiet()
        t0 = time.time() + 0.3
        await self.gens.request(("start", self.step_no, t0), "started")
        cpu0, busy0, mono0 = tree_cpu_seconds(self.bench_pids), machine_busy(), time.monotonic()
        main_cpu0 = time.process_time()
        sender_recv0 = self.senders.received
        report = await self.senders.send_step(rate, duration, self.step_no, t0)
        await self.drain(report.ok * self.members, drain)
        cpu1, busy1, wall = tree_cpu_seconds(self.bench_pids), machine_busy(), time.monotonic() - mono0
        main_cpu = time.process_time() - main_cpu0
        stats = await self.gens.request(("stop",), "stats")
        sender_deliveries = self.senders.received - sender_recv0
        cpu = self._cpu_window(cpu0, cpu1, main_cpu, wall, busy0, busy1)
        return self._summarize(rate, duration, report, stats, cpu, sender_deliveries, main_cpu)

    def _cpu_window(
        self,
        cpu0: dict[int, float],
        cpu1: dict[int, float],
        main_cpu: float,
        wall: float,
        busy0: tuple[float, float],
        busy1: tuple[float, float],
    ) -> CpuWindow:
        used = {pid: cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0) for pid in cpu0}
        named = self.target.named_pids()
        mine = set(named.values()) | set(self.gens.pids())
        return CpuWindow(
            wall=wall,
            server_cpu={name: round(used.get(pid, 0.0) / wall, 3) for name, pid in named.items()},
            server_cpu_s=sum(used.get(pid, 0.0) for name, pid in named.items() if name != "redis"),
            idle_target_cpu=sum(v for pid, v in used.items() if pid not in mine) / wall,
            bench_cores=(sum(used.values()) + main_cpu) / wall,
            machine_busy=(busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]),
        )

    def _summarize(
        self,
        rate: float,
        duration: float,
        report: SendReport,
        stats: list[dict[str, Any]],
        cpu: CpuWindow,
        sender_deliveries: int,
        main_cpu: float,
    ) -> StepResult:
        per_member = [n for s in stats for n in s["per_member"]]
        members = len(per_member)
        expected_each = report.ok
        delivered = sum(per_member)
        missing = sum(max(0, expected_each - n) for n in per_member)
        duplicates = sum(max(0, n - expected_each) for n in per_member)
        bins = merge_counts([s["bins"] for s in stats])
        in_window = sum(n for slot, n in bins.items() if 0 <= slot < round(duration * 10))
        hist = merge_counts([s["hist"] for s in stats])
        all_deliveries = delivered + sender_deliveries
        ack_sorted = sorted(report.ack_ms)
        load_cpu = sum(s["cpu_s"] / s["wall_s"] for s in stats) + main_cpu / cpu.wall
        res = StepResult(
            rate=rate,
            duration_s=duration,
            members=members,
            sent=report.sent,
            accepted=report.ok,
            send_errors=dict(report.errors) | ({"unacked": report.unacked} if report.unacked else {}),
            expected=expected_each * members,
            delivered=delivered,
            missing=missing,
            duplicates=duplicates,
            offered_per_s=round(expected_each * members / duration, 1),
            deliveries_per_s=round(in_window / duration, 1),
            p50_ms=percentile(hist, 0.50),
            p90_ms=percentile(hist, 0.90),
            p99_ms=percentile(hist, 0.99),
            max_ms=round(max(hist) / _loadgen.HIST_PER_MS, 1) if hist else None,
            ack_p50_ms=_quantile(ack_sorted, 0.5),
            ack_p99_ms=_quantile(ack_sorted, 0.99),
            server_cpu=cpu.server_cpu,
            cpu_us_per_delivery=round(cpu.server_cpu_s / all_deliveries * 1e6, 2) if all_deliveries else None,
            gen_cpu_max=round(max(s["cpu_s"] / s["wall_s"] for s in stats), 3),
            gen_cpu_total=round(load_cpu, 3),
            machine_busy=round(cpu.machine_busy, 3),
            foreign_cpu=round(max(0.0, cpu.machine_busy * (os.cpu_count() or 1) - cpu.bench_cores), 2),
            idle_target_cpu=round(cpu.idle_target_cpu, 3),
            send_lag_ms=round(report.max_lag_ms, 1),
            slow_moments=_slow_moments(stats),
            disconnected=sum(s["disconnected"] for s in stats),
            keeps_up=False,
            why_not="",
        )
        res.why_not = _why_not(res, report)
        res.keeps_up = not res.why_not
        return res


def _slow_moments(stats: list[dict[str, Any]]) -> list[list[float]]:
    """When in the step deliveries took over the p99 limit, as [from s, to s, worst ms] ranges of
    100 ms slots since t0: tells steady queueing from periodic stalls (GC, housekeeping, neighbours)."""
    worst: dict[int, int] = {}
    for s in stats:
        for slot, bucket in s["worst"].items():
            worst[slot] = max(bucket, worst.get(slot, 0))
    limit = P99_LIMIT_MS * _loadgen.HIST_PER_MS
    ranges: list[list[float]] = []
    for slot in sorted(k for k, v in worst.items() if v > limit):
        ms = worst[slot] / _loadgen.HIST_PER_MS
        if ranges and round(ranges[-1][1] * 10) == slot - 1:
            ranges[-1][1], ranges[-1][2] = slot / 10, max(ranges[-1][2], ms)
        else:
            ranges.append([slot / 10, slot / 10, ms])
    return ranges


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)


def _why_not(res: StepResult, report: SendReport) -> str:
    reasons = []
    if report.errors or report.unacked:
        reasons.append(f"send errors {res.send_errors}")
    if res.p99_ms is None or res.p99_ms > P99_LIMIT_MS:
        reasons.append(f"p99 {res.p99_ms} ms > {P99_LIMIT_MS:.0f}")
    if res.deliveries_per_s < KEEP_UP * res.offered_per_s:
        reasons.append(f"behind: {res.deliveries_per_s:.0f}/s of {res.offered_per_s:.0f}/s offered")
    if res.missing > MAX_MISSING * max(1, res.expected):
        reasons.append(f"{res.missing} deliveries missing")
    if res.disconnected:
        reasons.append(f"{res.disconnected} members disconnected")
    return "; ".join(reasons)


def _step_line(name: str, r: StepResult) -> str:
    return (
        f"{name:9} rate {r.rate:7.1f}/s  deliveries {r.deliveries_per_s:9.1f}/s of {r.offered_per_s:9.1f}"
        f"  p50 {r.p50_ms} p99 {r.p99_ms} ms  missing {r.missing}  server cpu {r.server_cpu}"
        f"  {r.cpu_us_per_delivery} us/delivery  gen {r.gen_cpu_max}  busy {r.machine_busy}"
        f"  foreign {r.foreign_cpu}"
        f"  {'ok' if r.keeps_up else 'FAIL: ' + r.why_not}"
    )


# --------------------------------------------------------------------------- saturation


async def saturate(
    run: Callable[[float], Awaitable[StepResult]],
    name: str,
    start: float,
    max_rate: float,
    refine: int,
    confirm: int,
    first: StepResult | None = None,
) -> tuple[StepResult | None, list[StepResult]]:
    """The highest rate that keeps up: bracket it (x1.5 up from `start`, or /2 down if `start`
    already fails), then bisect `refine` times. A failed rate is tried `confirm` more times and
    passes if any try does: p99 over a few seconds on a shared 2-core machine is noisy, and one
    unlucky step must not end the search (both servers get the same rule). `first`, a step already
    run at `start` (the fixed-rate step), is reused."""
    steps: list[StepResult] = []

    async def attempt(rate: float) -> StepResult:
        for _ in range(1 + confirm):
            r = await run(round(rate, 1))
            steps.append(r)
            log(_step_line(name, r))
            if r.keeps_up:
                break
        return r

    best: StepResult | None = None
    if first is None or not first.keeps_up:
        first = await attempt(start)
    if first.keeps_up:
        best, rate = first, start * 1.5
        while rate <= max_rate:
            r = await attempt(rate)
            if not r.keeps_up:
                break
            best, rate = r, rate * 1.5
        hi = rate
    else:
        hi, rate = start, start / 2
        while rate >= 0.5:
            r = await attempt(rate)
            if r.keeps_up:
                best = r
                break
            hi, rate = rate, rate / 2
    if best is None or hi > max_rate:
        return best, steps
    lo = best.rate
    for _ in range(refine):
        mid = (lo + hi) / 2
        if hi - lo < max(1.0, 0.03 * lo):
            break
        r = await attempt(mid)
        if r.keeps_up:
            lo = mid
            if r.deliveries_per_s > best.deliveries_per_s:
                best = r
        else:
            hi = mid
    return best, steps


# --------------------------------------------------------------------------- one server, all steps


@dataclass
class Prepared:
    kind: str
    bench: Bench
    join_s: float
    settle_s: float


async def prepare(
    kind: str, args: argparse.Namespace, stack: AsyncExitStack, turn: asyncio.Lock, bench_pids: list[int]
) -> Prepared:
    """Start one server under test and fill its room; everything is stopped when `stack` closes."""
    log(f"=== {kind}: {args.members} members over {INSTANCES} instances")
    work = Path(tempfile.mkdtemp(prefix=f"lc-bench-{kind}-"))
    if args.keep_logs:
        log(f"{kind}: logs in {work}")
    else:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
    target = await start_target(kind, args, stack, work)
    bench_pids += target.named_pids().values()
    room = f"bench-{secrets.token_hex(4)}"
    senders = Senders(target, room, args.transport)
    stack.push_async_callback(senders.close)
    await senders.ensure(1)  # the first teacher's join creates the room
    members = [
        MemberSpec(
            "127.0.0.1",
            target.instances[i % INSTANCES][1],
            mint(target.secret, room, f"bench-student-{i}", "student", STUDENT_GRANTS),
        )
        for i in range(args.members)
    ]
    gens = Generators.spawn(members, args.procs, args.transport)
    stack.push_async_callback(gens.close)
    bench_pids += gens.pids()
    join_started = time.monotonic()
    ready = await gens.collect("ready", timeout=60 + args.members * 0.3)
    join_s = round(time.monotonic() - join_started, 1)
    connected = sum(r["connected"] for r in ready)
    log(f"{kind}: {connected}/{args.members} members joined room {room} in {join_s}s")
    for r in ready:
        if r["failed"]:
            log(f"{kind}: {r['failed']} members failed: {r['errors']}")
    if connected == 0:
        raise RuntimeError("no member could join")
    bench = Bench(target, gens, senders, connected, turn, bench_pids)
    settle = await bench.wait_quiet(timeout=120 + args.members * 0.3)
    log(f"{kind}: room quiet {settle:.1f}s after the last join")
    return Prepared(kind, bench, join_s, round(settle, 1))


async def measure(p: Prepared, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"connected": p.bench.members, "join_s": p.join_s, "settle_s": p.settle_s}
    if not args.saturate_only:
        fixed = await p.bench.step(args.rate, args.duration, args.drain)
        log(_step_line(p.kind, fixed))
        out["fixed"] = fixed
    if args.saturate or args.saturate_only:
        best, steps = await saturate(
            lambda r: p.bench.step(r, args.step_duration, args.drain),
            p.kind,
            args.rate,
            args.max_rate,
            args.refine,
            args.confirm,
            first=out.get("fixed"),
        )
        out["saturation"] = {"best": best, "steps": steps}
    return out


def _failure(kind: str, exc: BaseException) -> dict[str, Any]:
    trace = "".join(traceback.format_exception(exc, limit=-4))
    log(f"{kind} failed: {type(exc).__name__}: {exc}\n{trace}")
    return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


async def run_interleaved(kinds: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Both servers up at once, their steps alternating: load from outside the benchmark then falls
    on both alike. But the idle server's own background work lands on the other's steps too."""
    results: dict[str, dict[str, Any]] = {}
    turn, bench_pids = asyncio.Lock(), list[int]()
    async with AsyncExitStack() as stack:
        prepared = []
        for kind in kinds:
            sub = await stack.enter_async_context(AsyncExitStack())
            try:
                prepared.append(await prepare(kind, args, sub, turn, bench_pids))
            except Exception as exc:
                results[kind] = _failure(kind, exc)
                await sub.aclose()  # stop what did start now, not after the other server's run
        outs = await asyncio.gather(*(measure(p, args) for p in prepared), return_exceptions=True)
        for p, res in zip(prepared, outs, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            results[p.kind] = _failure(p.kind, res) if isinstance(res, BaseException) else res
    return results


async def run_sequential(kinds: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One server at a time, each stopped before the next starts."""
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        try:
            async with AsyncExitStack() as stack:
                bench_pids: list[int] = []
                results[kind] = await measure(await prepare(kind, args, stack, asyncio.Lock(), bench_pids), args)
        except Exception as exc:
            results[kind] = _failure(kind, exc)
    return results


# --------------------------------------------------------------------------- report


def _pick(r: StepResult | None, prefix: str) -> dict[str, Any]:
    if r is None:
        return {prefix + k: None for k in ("deliveries_per_s", "p50_ms", "p99_ms", "lost")}
    return {
        prefix + "deliveries_per_s": r.deliveries_per_s,
        prefix + "p50_ms": r.p50_ms,
        prefix + "p99_ms": r.p99_ms,
        prefix + "lost": r.missing,
        prefix + "ack_p50_ms": r.ack_p50_ms,
        prefix + "ack_p99_ms": r.ack_p99_ms,
        prefix + "cpu_us_per_delivery": r.cpu_us_per_delivery,
        prefix + "server_cpu": r.server_cpu,
        prefix + "gen_cpu_total": r.gen_cpu_total,
        prefix + "foreign_cpu": r.foreign_cpu,
        prefix + "keeps_up": r.keeps_up,
    }


def _limit(best: StepResult | None, steps: list[StepResult]) -> dict[str, Any] | None:
    """What the first failing step above the best one ran out of."""
    above = [r for r in steps if not r.keeps_up and (best is None or r.rate > best.rate)]
    if not above:
        return None
    r = min(above, key=lambda x: x.rate)
    instances = {k: v for k, v in r.server_cpu.items() if k != "redis"}
    if max(instances.values(), default=0) >= 0.9:
        bound = "a server instance used a whole core"
    elif r.machine_busy >= 0.75:  # rough: with ~6 busy processes on 2 cores, run queues form before 100%
        bound = "machine CPU (servers, Redis, generators and other processes share 2 cores)"
    else:
        bound = "latency or lag with CPU to spare"
    return {
        "rate": r.rate,
        "why": r.why_not,
        "bound": bound,
        "server_cpu": r.server_cpu,
        "gen_cpu_total": r.gen_cpu_total,
        "foreign_cpu": r.foreign_cpu,
        "machine_busy": r.machine_busy,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summary(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    live, ref = results.get("live", {}), results.get("reference", {})
    out: dict[str, Any] = {"members": args.members, "rate": args.rate, "duration_s": args.duration}
    if not args.saturate_only:
        out |= _pick(live.get("fixed"), "") | _pick(ref.get("fixed"), "ref_")
        out["ratio"] = _ratio(out.get("deliveries_per_s"), out.get("ref_deliveries_per_s"))
        # Same load: server CPU per delivery, ours / reference (>1: ours spends more per delivery).
        out["cpu_cost_ratio"] = _ratio(out.get("cpu_us_per_delivery"), out.get("ref_cpu_us_per_delivery"))
    if args.saturate or args.saturate_only:
        for prefix, res in (("", live), ("ref_", ref)):
            sat = res.get("saturation", {})
            best = sat.get("best")
            out[prefix + "sat_deliveries_per_s"] = best.deliveries_per_s if best else None
            out[prefix + "sat_rate"] = best.rate if best else None
            out[prefix + "sat_p99_ms"] = best.p99_ms if best else None
            out[prefix + "sat_cpu_us_per_delivery"] = best.cpu_us_per_delivery if best else None
            out[prefix + "sat_limit"] = _limit(best, sat.get("steps", []))
        out["sat_ratio"] = _ratio(out.get("sat_deliveries_per_s"), out.get("ref_sat_deliveries_per_s"))
    steps: list[StepResult] = []
    for kind, res in results.items():
        prefix = "" if kind == "live" else "ref_"
        for key in ("join_s", "settle_s"):
            if key in res:
                out[prefix + key] = res[key]
        if "error" in res:
            out[f"{kind}_error"] = res["error"]
        steps += ([res["fixed"]] if "fixed" in res else []) + res.get("saturation", {}).get("steps", [])
    out["max_foreign_cpu"] = max((r.foreign_cpu for r in steps), default=None)
    out["noisy"] = bool(steps) and max(r.foreign_cpu for r in steps) > NOISY_CPU
    if out["noisy"]:
        log(
            f"warning: other processes used up to {out['max_foreign_cpu']} cores during the run; "
            "figures are less comparable (see foreign_cpu per step)"
        )
    return out


def write_details(path: Path, args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    def plain(obj: Any) -> Any:
        if isinstance(obj, StepResult):
            return asdict(obj)
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [plain(v) for v in obj]
        return obj

    path.write_text(json.dumps({"args": vars(args), "results": plain(results)}, indent=2, default=str))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, help="receiving members (default 1000; 200 with --quick)")
    p.add_argument("--rate", type=float, default=20.0, help="chat messages per second (default 20)")
    p.add_argument("--duration", type=float, help="seconds of load at --rate (default 30; 5 with --quick)")
    p.add_argument("--quick", action="store_true", help="small and short: under a minute in all")
    p.add_argument("--saturate", action="store_true", help="also find each server's max sustained rate")
    p.add_argument("--saturate-only", action="store_true", help="skip the fixed-rate step")
    p.add_argument("--step-duration", type=float, help="seconds per saturation step (default 8; 4 quick)")
    p.add_argument("--max-rate", type=float, default=2000.0, help="saturation ceiling, msgs/s")
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the first failure")
    p.add_argument("--confirm", type=int, default=1, help="re-runs of a failed saturation step (default 1)")
    p.add_argument("--drain", type=float, help="min seconds to wait for late deliveries after the last send")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument(
        "--transport",
        choices=("raw", "aiohttp"),
        default="raw",
        help="websocket client used by generators (raw: cheapest)",
    )
    p.add_argument("--only", choices=("live", "reference"), help="benchmark one server only")
    p.add_argument(
        "--interleave", action="store_true", help="both servers up at once, steps alternating (see the caveat above)"
    )
    p.add_argument("--sqlite", action="store_true", help="our server on SQLite instead of PostgreSQL")
    p.add_argument("--keep-logs", action="store_true", help="keep server logs in the temp dir")
    p.add_argument("--details", type=Path, help="write every step's figures to this JSON file")
    args = p.parse_args(argv)
    args.members = args.members or (200 if args.quick else 1000)
    args.duration = args.duration or (5.0 if args.quick else 30.0)
    args.step_duration = args.step_duration or (4.0 if args.quick else 8.0)
    args.drain = args.drain if args.drain is not None else 1.0
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM unwinds like Ctrl-C (asyncio.run cancels the main task), so servers, Redis and the
    # database are cleaned up.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    kinds = [args.only] if args.only else ["live", "reference"]
    run = run_interleaved if args.interleave else run_sequential
    results = await run(kinds, args)
    if args.details:
        write_details(args.details, args, results)
    for kind, res in results.items():
        if "fixed" in res:
            print(_step_line(kind, res["fixed"]))
        for r in res.get("saturation", {}).get("steps", []):
            print(_step_line(kind + "/sat", r))
    return summary(args, results)


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    try:
        out = asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything started was stopped")
        sys.exit(130)
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
