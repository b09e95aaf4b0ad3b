"""Flash-sale storm: thousands of buyers hit one sale through the socket path at the moment it opens, over two
instances sharing Redis (the seat gate) and PostgreSQL (the truth).

A teacher pins a course and starts a flash sale (10 s countdown, a few hundred seats, one per student). Every
buyer is connected and joined beforehand, half on each instance, held by load-generator processes; each has
a wallet funded well beyond the price. At `opens_at` (the sale's, as the start's answer gives it; the
servers run on this machine, so no clock correction) each buyer sends `course:buy` (wallet, a fresh key per
attempt) `--attempts` times, the attempts of all buyers spread evenly, in random order, over `--window`
seconds. Measured per attempt: the time from sending to the acknowledgement, and its outcome (paid,
sold_out, limit_reached, ...). Then checked: in PostgreSQL directly, the paid orders of the sale are exactly
min(seats, buyers), no buyer holds two live orders in it, the sale's seat count never passed its seats,
every acknowledged order is there and paid, and the ledger is balanced; each instance reports 0 seats left
(`sales:get`) once the sale is sold out.

    python bench/flash_sale.py            # 5,000 buyers x 2 attempts within 1 s, 500 seats
    python bench/flash_sale.py --quick    # 1,000 buyers x 2 attempts within 1 s, 100 seats: under a minute
    python bench/flash_sale.py --profile /tmp/prof   # also py-spy each instance during the storm

`by_outcome` gives the latency per answer (paid, sold_out, limit_reached, ...) and when those answers came
(ms after opening); a buyer's second attempt is handled after their first (a connection's events are handled
in order), so limit_reached waits for the paid order before it. `server_log_errors` lists what the instances
logged as errors (e.g. room events not published); `room_events_until_last_ack` counts what the buyers
received until the last answer (orders go as `sales:order` to staff and the buyer only, so they are not here).

CPU sharing: the machine has 2 cores; two instances, Redis, PostgreSQL and the generators all run on them,
so `server_cpu_s`, `generator_cpu_s` and `foreign_cpu` (cores taken by processes outside the benchmark during
the storm) say who had the cores; `noisy` flags a storm during which others took over 0.25 core.

Last line, JSON: {"attempts", "seats", "paid", "oversold", "p99_ms", "attempts_per_s", ...}.
Target: zero oversold always; p99 under 200 ms for 10,000 attempts arriving within one second.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from _common import STUDENT, TEACHER, mint, percentile
from _servers import (
    admin_auth,
    create_pg_database,
    drop_pg_database,
    log,
    machine_busy,
    py_spy,
    server_env,
    start_live_instances,
    start_redis,
    tree_cpu_seconds,
    wait_ready,
)
from _sio import SioClient

ROOM = "flash-bench"
COURSE = "flash-course"
INSTANCES = 2
LIST_PRICE = 4900  # usd cents; one coin per cent (LIVE_COIN_RATES default)
SALE_PRICE = 990
FUND_COINS = 10 * LIST_PRICE  # far beyond one seat: only the seat rules may refuse a buyer
COUNTDOWN_S = 10
NOISY_CPU = 0.25
ACK_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- generator process


class Buyers:
    """One generator's buyers (each on its own instance's port): connects them, then fires the attempts of
    its share of the plan at their times and records every acknowledgement."""

    def __init__(self, specs: list[tuple[int, str, str]]) -> None:
        self.specs = specs  # (port, token, user id)
        self.room_events = Counter[str]()
        self.clients = [SioClient(self._on_room_event, transport="raw") for _ in specs]
        self.outcomes: list[tuple[str, float, float]] = []  # (outcome, ack latency in ms, wall time of the ack)
        self.paid: list[tuple[str, str, str]] = []  # (buyer, order id, base_source) of each paid answer
        self.pending = 0
        self.last_ack = 0.0

    def _on_room_event(self, data: bytes, now: float) -> None:
        # Only counted, never parsed: the generators must stay cheap.
        self.room_events["all"] += 1
        if b'"type":"skip"' in data:
            self.room_events["skip"] += 1
        elif b'"type":"sales.seats"' in data:
            self.room_events["sales.seats"] += 1

    async def connect(self, chunk: int = 50) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        for i in range(0, len(self.clients), chunk):
            part = range(i, min(i + chunk, len(self.clients)))
            results = await asyncio.gather(
                *(self.clients[j].connect("127.0.0.1", self.specs[j][0], self.specs[j][1], 90) for j in part),
                return_exceptions=True,
            )
            joined = [j for j, r in zip(part, results, strict=True) if not isinstance(r, BaseException)]
            errors.update(f"connect: {r!r}"[:200] for r in results if isinstance(r, BaseException))
            answers = await asyncio.gather(
                *(self.clients[j].call("join", {}, 90) for j in joined), return_exceptions=True
            )
            for a in answers:
                if isinstance(a, BaseException) or not a.get("ok"):
                    errors[f"join: {a!r}"[:200]] += 1
        return {"connected": sum(c.connected for c in self.clients), "errors": dict(errors.most_common(5))}

    def _send(self, i: int, attempt: int) -> None:
        buyer = self.specs[i][2]
        body = {"course_id": COURSE, "method": "wallet", "key": f"fs-{buyer}-{attempt}", "accept_refund_policy": True}
        sent = time.monotonic()

        def on_ack(answer: Any) -> None:
            now = time.monotonic()
            self.pending -= 1
            self.last_ack = time.time()
            ms = (now - sent) * 1000
            if not isinstance(answer, dict):
                self.outcomes.append(("bad_answer", ms, self.last_ack))
            elif answer.get("ok"):
                if answer.get("replayed"):
                    self.outcomes.append(("replayed", ms, self.last_ack))
                else:
                    self.outcomes.append(("paid", ms, self.last_ack))
                    self.paid.append((buyer, answer["order"]["id"], answer["quote"]["base_source"]))
            else:
                self.outcomes.append((str(answer.get("error", {}).get("code")), ms, self.last_ack))

        self.pending += 1
        self.clients[i].emit("course:buy", body, on_ack)

    async def storm(self, opens_at: float, plan: list[tuple[float, int, int]]) -> dict[str, Any]:
        """``plan``: (seconds after opening, client index, attempt number), in time order."""
        self.room_events.clear()
        cpu0 = time.process_time()
        lags: list[float] = []
        first_send = last_send = 0.0
        k = 0
        while k < len(plan):
            now = time.time()
            due = opens_at + plan[k][0]
            if due > now:
                await asyncio.sleep(min(due - now, 0.002))
                continue
            if not first_send:
                first_send = now
            while k < len(plan) and opens_at + plan[k][0] <= now:
                offset, i, attempt = plan[k]
                lags.append((now - opens_at - offset) * 1000)
                self._send(i, attempt)
                k += 1
            last_send = now
            await asyncio.sleep(0)  # let acks in between bursts
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while self.pending and time.monotonic() < deadline:  # noqa: ASYNC110 - acks come by callback
            await asyncio.sleep(0.005)
        return {
            "outcomes": self.outcomes,
            "paid": self.paid,
            "unacked": self.pending,
            "first_send": first_send,
            "last_send": last_send,
            "last_ack": self.last_ack,
            "send_lag_max_ms": max(lags, default=0.0),
            "room_events": dict(self.room_events),
            "cpu_s": time.process_time() - cpu0,
            "disconnected": sum(not c.connected for c in self.clients),
        }


def generator_main(conn: Connection, specs: list[tuple[int, str, str]]) -> None:
    async def main() -> None:
        buyers = Buyers(specs)
        conn.send(("ready", await buyers.connect()))
        gc.collect()
        gc.freeze()  # nothing allocated from here on needs the cyclic GC: no multi-ms pauses in the storm
        loop = asyncio.get_running_loop()
        go: asyncio.Future[Any] = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: go.done() or go.set_result(conn.recv()))
        _, opens_at, plan = await go
        loop.remove_reader(conn.fileno())
        conn.send(("result", await buyers.storm(opens_at, plan)))
        await asyncio.to_thread(conn.recv)  # quit
        await asyncio.gather(*(c.close() for c in buyers.clients), return_exceptions=True)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass


# --------------------------------------------------------------------------- parent


class Admin:
    """The admin API of one instance (HTTP Basic with the bench servers' key and secret)."""

    def __init__(self, http: aiohttp.ClientSession, ports: list[int]) -> None:
        self.http = http
        self.ports = ports

    async def call(self, method: str, path: str, body: Any, port: int | None = None) -> Any:
        url = f"http://127.0.0.1:{port or self.ports[0]}{path}"
        async with self.http.request(method, url, json=body) as r:
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {(await r.text())[:300]}")
            return await r.json()

    async def fund(self, users: list[str], coins: int, concurrency: int = 64) -> float:
        """Credit every user's wallet, ``concurrency`` requests at a time spread over the instances (the
        credits of one instance commit together in ledger batches). Returns the seconds it took."""
        began = time.monotonic()
        queue = list(enumerate(users))

        async def worker(w: int) -> None:
            while queue:
                i, user = queue.pop()
                body = {"coins": coins, "idempotency_key": f"fund-{user}"}
                await self.call("POST", f"/api/wallets/{user}/credit", body, self.ports[i % len(self.ports)])

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return time.monotonic() - began


async def seats_left(client: SioClient, expected: int | None, timeout: float = 3.0) -> int | None:
    """What the instance reports (`sales:get`), polled until it says ``expected`` (the last `sales.seats`
    publication comes up to 200 ms after the last seat changes)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await client.call("sales:get", {})
        left = answer["state"]["seats_left"] if answer.get("ok") else None
        if left == expected or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


async def sql_facts(dsn: str, sale_id: str, paid_orders: list[tuple[str, str, str]]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        by_status = {
            r["status"]: r["n"]
            for r in await conn.fetch(
                "SELECT status, COUNT(*) AS n FROM orders WHERE sale_id = $1 GROUP BY status", sale_id
            )
        }
        doubled = await conn.fetchval(
            "SELECT COUNT(*) FROM (SELECT buyer FROM orders WHERE sale_id = $1 AND status <> 'expired'"
            " GROUP BY buyer HAVING COUNT(*) > 1) d",
            sale_id,
        )
        sale = await conn.fetchrow("SELECT seats, seats_taken FROM flash_sales WHERE id = $1", sale_id)
        outside = await conn.fetchval("SELECT COUNT(*) FROM orders WHERE course_id = $1 AND sale_id IS NULL", COURSE)
        wrong_price = await conn.fetchval(
            "SELECT COUNT(*) FROM orders WHERE sale_id = $1 AND status = 'paid' AND amount_minor <> $2",
            sale_id,
            SALE_PRICE,
        )
        ledger_total = await conn.fetchval("SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts")
        negative = await conn.fetchval("SELECT COUNT(*) FROM ledger_accounts WHERE balance < 0 AND NOT may_go_negative")
        earned = await conn.fetchval(
            "SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts WHERE id IN ('earnings:teacher', 'platform:revenue')"
        )
        entitled = await conn.fetchval(
            "SELECT COUNT(*) FROM entitlements WHERE course_id = $1 AND status = 'active'", COURSE
        )
        acked = {order_id: buyer for buyer, order_id, _ in paid_orders}
        rows = await conn.fetch("SELECT id, buyer, status FROM orders WHERE id = ANY($1::text[])", list(acked))
        acked_paid = sum(1 for r in rows if r["status"] == "paid" and acked[r["id"]] == r["buyer"])
    finally:
        await conn.close()
    paid = by_status.get("paid", 0)
    return {
        "paid": paid,
        "orders_by_status": by_status,
        "buyers_with_two_orders": doubled,
        "seats": sale["seats"],
        "seats_taken": sale["seats_taken"],
        "orders_outside_sale": outside,
        "paid_not_at_sale_price": wrong_price,
        "ledger_total": int(ledger_total),
        "negative_balances": negative,
        "earned_coins": int(earned),
        "entitlements": entitled,
        "acked_orders_paid_in_sql": acked_paid,
    }


def postgres_pids() -> list[int]:
    """The PostgreSQL server (postmaster) on this machine, if visible: its backends serve both instances (and
    anyone else using the cluster). Backends that exit before the end of the storm are not counted."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/comm").read_text().strip() if ppid > 1 else ""
        except (OSError, ValueError, IndexError):
            continue
        if comm in ("postgres", "postmaster") and parent not in ("postgres", "postmaster"):
            pids.append(int(entry))
    return pids


async def start_profilers(out: Path | None, procs: list[Any], seconds: float) -> list[asyncio.subprocess.Process]:
    """py-spy each instance for at most ``seconds`` (stopped once every attempt is answered) into ``out``."""
    return [await py_spy(proc.pid, out / f"{proc.name}.txt", seconds) for proc in procs] if out is not None else []


def server_errors(text: str) -> dict[str, int]:
    """The errors an instance logged (JSON lines), by message without ids, with the exception's last line."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if '"level": "error"' not in line and '"level": "critical"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            found[line[:200]] += 1
            continue
        msg = re.sub(r"\b(ord|sale|rfd)_[0-9a-f]+", r"\1_…", str(entry.get("msg", "")))
        exc = str(entry.get("exc", "")).strip().splitlines()
        found[msg + (f" ({exc[-1]})" if exc else "")] += 1
    return dict(found.most_common(5))


def copy_logs(work: Path, dest: Path) -> None:
    for f in work.glob("*.log"):
        (dest / f.name).write_bytes(f.read_bytes())


def make_plan(buyers: int, attempts: int, window: float, seed: int) -> list[tuple[float, int, int]]:
    """Every attempt (buyer, attempt number) at its own slot, evenly spread over ``window``, in random order."""
    pairs = [(b, a) for b in range(buyers) for a in range(attempts)]
    random.Random(seed).shuffle(pairs)
    step = window / len(pairs)
    return [(k * step, b, a) for k, (b, a) in enumerate(pairs)]


def summarize_latency(outcomes: list[tuple[str, float, float]], opens_at: float) -> dict[str, Any]:
    """Per outcome: how many, the ack latency, and when the acks came (ms after the sale opened)."""
    by: dict[str, list[tuple[float, float]]] = {}
    for code, ms, acked in outcomes:
        by.setdefault(code, []).append((ms, (acked - opens_at) * 1000))
    return {
        code: {
            "n": len(v),
            "p50_ms": round(percentile([ms for ms, _ in v], 50), 1),
            "p99_ms": round(percentile([ms for ms, _ in v], 99), 1),
            "acked_after_open_ms": [round(min(t for _, t in v)), round(max(t for _, t in v))],
        }
        for code, v in sorted(by.items())
    }


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    async with AsyncExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flash-bench-")))
        redis, redis_port = start_redis(work)
        stack.callback(redis.stop)
        db_name, db_url = await create_pg_database()
        stack.push_async_callback(drop_pg_database, db_name)
        (work / "data").mkdir()
        env, secret, api_secret = server_env(
            db_url,
            work / "data",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            # Set here: two instances creating these in the shared data directory at once can race
            # (live/config.py _local_secret: FileExistsError).
            LIVE_SANDBOX_SECRET=secrets.token_urlsafe(32),
            LIVE_HOST_WEBHOOK_SECRET=secrets.token_urlsafe(32),
        )
        instances = start_live_instances(INSTANCES, env, work)
        for proc, _ in instances:
            stack.callback(proc.stop)
        ports = [port for _, port in instances]
        procs = [proc for proc, _ in instances]
        await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{p}/readyz", procs, 60) for p in ports))

        # The room (the teacher's join creates it, with them as its teacher), the course it sells, and staff
        # on the other instance to ask it for the seats left.
        teacher = SioClient(None, transport="raw")
        await teacher.connect("127.0.0.1", ports[0], mint(secret, ROOM, "teacher", "teacher", TEACHER))
        assert (await teacher.call("join", {}))["ok"]
        assistant = SioClient(None, transport="raw")
        await assistant.connect("127.0.0.1", ports[1], mint(secret, ROOM, "assistant", "assistant", TEACHER))
        assert (await assistant.call("join", {}))["ok"]
        stack.push_async_callback(teacher.close)
        stack.push_async_callback(assistant.close)
        auth = {"Authorization": admin_auth(api_secret)}
        http = await stack.enter_async_context(aiohttp.ClientSession(headers=auth))
        admin = Admin(http, ports)
        course = {
            "id": COURSE,
            "title": "Flash-sale course",
            "price_minor": LIST_PRICE,
            "currency": "usd",
            "teacher_id": "teacher",
        }
        await admin.call("POST", "/api/courses", course)
        await admin.call("PUT", f"/api/rooms/{ROOM}/courses/{COURSE}", None)
        users = [f"b{i}" for i in range(args.buyers)]
        fund_s = await admin.fund(users, FUND_COINS)
        log(f"{INSTANCES} instances on {ports}; {args.buyers} wallets funded in {fund_s:.1f} s; connecting buyers")

        # Buyers: buyer i on instance i % 2, held by generator i % generators.
        ctx = mp.get_context("spawn")
        gens: list[tuple[Any, Connection, list[int]]] = []
        began = time.monotonic()
        for g in range(args.generators):
            mine = list(range(g, args.buyers, args.generators))
            specs = [(ports[i % INSTANCES], mint(secret, ROOM, users[i], "student", STUDENT), users[i]) for i in mine]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=generator_main, args=(child, specs), name=f"buyers-{g}", daemon=True)
            proc.start()
            stack.callback(proc.kill)
            gens.append((proc, parent, mine))
        connected, connect_errors = 0, Counter[str]()
        for _, conn, _ in gens:
            _, ready = await asyncio.to_thread(conn.recv)
            connected += ready["connected"]
            connect_errors.update(ready["errors"])
        log(
            f"{connected}/{args.buyers} buyers joined in {time.monotonic() - began:.1f} s"
            + (f"; errors {dict(connect_errors)}" if connect_errors else "")
        )

        # The sale: pinned, then started; its countdown runs while the plan goes to the generators.
        answer = await teacher.call("sales:pin", {"course_id": COURSE})
        assert answer["ok"], answer
        answer = await teacher.call(
            "sales:start",
            {
                "price_minor": SALE_PRICE,
                "countdown_s": COUNTDOWN_S,
                "duration_s": 600,
                "seats": args.seats,
                "per_student_limit": 1,
            },
        )
        assert answer["ok"], answer
        sale = answer["state"]["sale"]
        opens_at = sale["opens_at"] / 1000  # same machine, same clock
        log(
            f"sale {sale['id']}: {args.seats} seats, opens in {opens_at - time.time():.1f} s; "
            f"{args.buyers * args.attempts} attempts within {args.window} s"
        )
        plan = make_plan(args.buyers, args.attempts, args.window, args.seed)
        local = {i: (g, k) for g, (_, _, mine) in enumerate(gens) for k, i in enumerate(mine)}
        shares: list[list[tuple[float, int, int]]] = [[] for _ in gens]
        for offset, buyer, attempt in plan:
            g, k = local[buyer]
            shares[g].append((offset, k, attempt))
        for (_, conn, _), share in zip(gens, shares, strict=True):
            conn.send(("go", opens_at, share))

        pg = postgres_pids()
        pids = [p.pid for p in procs] + [redis.pid] + pg
        gen_pids = [p.pid for p, _, _ in gens]
        spies = await start_profilers(args.profile, procs, opens_at + args.window + 120 - time.time())
        await asyncio.sleep(max(0.0, opens_at - time.time() - 0.2))
        cpu0, busy0, wall0, main0 = (
            tree_cpu_seconds(pids + gen_pids),
            machine_busy(),
            time.monotonic(),
            time.process_time(),
        )
        results = []
        for _, conn, _ in gens:
            _, result = await asyncio.to_thread(conn.recv)
            results.append(result)
        cpu1, busy1, wall = tree_cpu_seconds(pids + gen_pids), machine_busy(), time.monotonic() - wall0
        main_cpu = time.process_time() - main0
        for _, conn, _ in gens:
            conn.send(("quit",))
        for spy in spies:  # py-spy writes its profile on SIGINT
            spy.send_signal(signal.SIGINT)
            await spy.wait()

        outcomes = [o for r in results for o in r["outcomes"]]
        paid_acks = [p for r in results for p in r["paid"]]
        codes = Counter(code for code, _, _ in outcomes)
        unacked = sum(r["unacked"] for r in results)
        first_send = min(r["first_send"] for r in results if r["first_send"])
        last_send = max(r["last_send"] for r in results)
        last_ack = max(r["last_ack"] for r in results)
        latencies = [ms for _, ms, _ in outcomes]
        expected_paid = min(args.seats, args.buyers)
        sold_out = expected_paid == args.seats

        left = [await seats_left(c, 0 if sold_out else None) for c in (teacher, assistant)]
        facts = await sql_facts(db_url, sale["id"], paid_acks)
        if args.keep_logs:
            copy_logs(work, args.keep_logs)
        log_errors = {p.name: server_errors(p.tail(1_000_000)) for p in procs}

    used = {pid: cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0) for pid in cpu0}
    names = ["live-0", "live-1", "redis"] + ["postgres"] * len(pg)
    server_cpu: dict[str, float] = {}
    for name, pid in zip(names, pids, strict=True):
        server_cpu[name] = round(server_cpu.get(name, 0.0) + used.get(pid, 0.0), 2)
    bench_cores = (sum(used.values()) + main_cpu) / wall
    busy = (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1])
    foreign = round(max(0.0, busy * (os.cpu_count() or 1) - bench_cores), 2)
    room_events: Counter[str] = Counter()
    for r in results:
        room_events.update(r["room_events"])

    oversold = max(0, facts["paid"] - args.seats)
    problems = []
    if oversold or facts["seats_taken"] > facts["seats"]:
        problems.append(f"oversold: {facts['paid']} paid, seats_taken {facts['seats_taken']} of {facts['seats']}")
    if facts["paid"] != expected_paid:
        problems.append(f"{facts['paid']} paid orders in SQL, expected min(seats, buyers) = {expected_paid}")
    if facts["buyers_with_two_orders"]:
        problems.append(f"{facts['buyers_with_two_orders']} buyers hold two orders in the sale")
    if codes["paid"] != facts["paid"] or facts["acked_orders_paid_in_sql"] != codes["paid"]:
        problems.append(
            f"{codes['paid']} paid answers, {facts['acked_orders_paid_in_sql']} of them paid in SQL, "
            f"{facts['paid']} paid in SQL"
        )
    if facts["ledger_total"] != 0 or facts["negative_balances"]:
        problems.append(f"ledger unbalanced: total {facts['ledger_total']}, {facts['negative_balances']} negative")
    if facts["earned_coins"] != facts["paid"] * SALE_PRICE or facts["entitlements"] != facts["paid"]:
        problems.append(
            f"earned {facts['earned_coins']} coins, {facts['entitlements']} entitlements for "
            f"{facts['paid']} seats at {SALE_PRICE}"
        )
    not_sale = sum(1 for _, _, source in paid_acks if source != "sale")
    if not_sale:
        problems.append(f"{not_sale} paid answers quote a base price other than the sale's")
    if facts["orders_outside_sale"] or facts["paid_not_at_sale_price"]:
        problems.append(
            f"{facts['orders_outside_sale']} orders outside the sale, "
            f"{facts['paid_not_at_sale_price']} not at the sale price"
        )
    if sold_out and any(x != 0 for x in left):
        problems.append(f"sold out, but the instances report seats_left {left}")
    if unacked or connected != args.buyers:
        problems.append(f"{unacked} attempts unacknowledged, {args.buyers - connected} buyers not joined")

    attempts = len(outcomes) + unacked
    out = {
        "attempts": attempts,
        "seats": args.seats,
        "paid": facts["paid"],
        "oversold": oversold,
        "p99_ms": round(percentile(latencies, 99), 1),
        "attempts_per_s": round(attempts / max(1e-3, last_ack - first_send)),
        "p50_ms": round(percentile(latencies, 50), 1),
        "max_ms": round(max(latencies, default=float("nan")), 1),
        "buyers": args.buyers,
        "outcomes": dict(codes.most_common()) | ({"no_ack": unacked} if unacked else {}),
        "by_outcome": summarize_latency(outcomes, opens_at),
        "send_window_ms": round((last_send - first_send) * 1000, 1),
        "first_send_after_open_ms": round((first_send - opens_at) * 1000, 1),
        "send_lag_max_ms": round(max(r["send_lag_max_ms"] for r in results), 1),
        "storm_s": round(last_ack - first_send, 3),
        "seats_left": left,
        "sql": facts,
        "checks_ok": not problems,
        "room_events_until_last_ack": dict(room_events),
        "disconnected": sum(r["disconnected"] for r in results),
        "server_cpu_s": server_cpu,
        "generator_cpu_s": [round(r["cpu_s"], 2) for r in results],
        "foreign_cpu": foreign,
        "noisy": foreign > NOISY_CPU,
        "server_log_errors": log_errors,
        "fund_s": round(fund_s, 1),
        "window_s": args.window,
        "generators": args.generators,
    }
    return out, problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 buyers, 100 seats: under a minute")
    p.add_argument("--buyers", type=int, help="default 5000 (1000 with --quick)")
    p.add_argument("--attempts", type=int, default=2, help="course:buy attempts per buyer (default 2)")
    p.add_argument("--seats", type=int, help="seats in the sale (default 500; 100 with --quick)")
    p.add_argument("--window", type=float, default=1.0, help="seconds over which the attempts arrive (default 1)")
    p.add_argument("--generators", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the attempts' order")
    p.add_argument("--profile", type=Path, help="py-spy each instance during the storm into this directory")
    p.add_argument("--keep-logs", type=Path, help="copy the servers' and Redis' logs into this directory")
    args = p.parse_args()
    args.buyers = args.buyers or (1000 if args.quick else 5000)
    args.seats = args.seats or (100 if args.quick else 500)
    for d in (args.profile, args.keep_logs):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    result, problems = asyncio.run(run(args))
    for problem in problems:
        log(f"CHECK FAILED: {problem}")
    for name, errors in result["server_log_errors"].items():
        for msg, n in errors.items():
            log(f"{name} logged {n} x error: {msg}")
    if result["noisy"]:
        log(f"warning: other processes used {result['foreign_cpu']} cores during the storm")
    print(json.dumps(result))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
