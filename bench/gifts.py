"""Gift storm: many students in one room send gifts through the socket path to one instance, on SQLite and
then on PostgreSQL. Measures gifts/s acknowledged and the p99 from sending a gift to its acknowledgement
(the ledger has committed it), then checks the ledger: the sum over all accounts is zero, every accepted
gift is two transfers, and the teacher and platform hold exactly their split.

    python bench/gifts.py            # 500 students, 5,000 gifts/s offered for 15 s, per database
    python bench/gifts.py --quick    # 300 students, 5 s

Last line, JSON: {"gifts_per_s_sqlite", "gifts_per_s_postgres", "p99_ms", "ledger_balanced", ...}.
Target: 5,000 gifts/s on one instance with p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
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
    py_spy,
    server_env,
    start_live_instances,
    tree_cpu_seconds,
    wait_ready,
)
from _sio import SioClient

from live.config import normalize_database_url

ROOM = "gift-bench"
TICK_S = 0.005
GENERATORS = 2
PRICE = 1  # the "heart" gift


# --------------------------------------------------------------------------- generator process


async def _generate(port: int, tokens: list[str], rate: float, duration: float, conn: Connection) -> dict[str, Any]:
    clients = [SioClient(None, transport="raw") for _ in tokens]
    for i in range(0, len(clients), 50):
        chunk = range(i, min(i + 50, len(clients)))
        await asyncio.gather(*(clients[j].connect("127.0.0.1", port, tokens[j]) for j in chunk))
        answers = await asyncio.gather(*(clients[j].call("join", {}) for j in chunk))
        assert all(a["ok"] for a in answers), answers[:1]
    conn.send("ready")
    conn.recv()  # go
    busy = [False] * len(clients)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    accepted = 0
    seq = 0

    def send(i: int) -> None:
        nonlocal seq
        seq += 1
        busy[i] = True
        sent = time.monotonic()

        def on_ack(answer: Any) -> None:
            nonlocal accepted
            busy[i] = False
            latencies.append((time.monotonic() - sent) * 1000)
            if answer.get("ok"):
                accepted += 1
            else:
                code = answer["error"]["code"]
                errors[code] = errors.get(code, 0) + 1

        clients[i].emit("gift:send", {"gift": "heart", "key": f"b{port}-{i}-{seq}"}, on_ack)

    began = time.monotonic()
    sent_n, cursor = 0, 0
    while (elapsed := time.monotonic() - began) < duration:
        due = int(rate * elapsed) - sent_n
        tried = 0
        while due > 0 and tried < len(clients):
            i, cursor = cursor, (cursor + 1) % len(clients)
            tried += 1
            if not busy[i]:
                send(i)
                sent_n += 1
                due -= 1
        await asyncio.sleep(TICK_S)
    deadline = time.monotonic() + 15
    while any(busy) and time.monotonic() < deadline:  # noqa: ASYNC110 - acks come by callback
        await asyncio.sleep(0.02)
    finished = time.monotonic() - began
    for c in clients:
        await c.close()
    return {
        "accepted": accepted,
        "latencies": latencies,
        "errors": errors,
        "elapsed": finished,
        "sent": sent_n,
        "cpu_s": time.process_time(),
    }


def generator_main(conn: Connection, port: int, tokens: list[str], rate: float, duration: float) -> None:
    conn.send(asyncio.run(_generate(port, tokens, rate, duration, conn)))


# --------------------------------------------------------------------------- parent


async def ledger_facts(db_url: str) -> dict[str, int]:
    from sqlalchemy import text

    from live.db import create_engine

    engine = create_engine(db_url)
    try:
        async with engine.connect() as c:
            total = (await c.execute(text("SELECT COALESCE(SUM(balance), 0) FROM ledger_accounts"))).scalar()
            floored = (
                await c.execute(text("SELECT COUNT(*) FROM ledger_accounts WHERE balance < 0 AND NOT may_go_negative"))
            ).scalar()
            gifts = (await c.execute(text("SELECT COUNT(*) FROM ledger_transfers WHERE kind = 'gift'"))).scalar()
            teacher = (
                await c.execute(text("SELECT balance FROM ledger_accounts WHERE id = 'earnings:teacher'"))
            ).scalar()
            platform = (
                await c.execute(text("SELECT balance FROM ledger_accounts WHERE id = 'platform:revenue'"))
            ).scalar()
    finally:
        await engine.dispose()
    return {
        "total": int(total or 0),
        "negative": int(floored or 0),
        "gift_transfers": int(gifts or 0),
        "teacher": int(teacher or 0),
        "platform": int(platform or 0),
    }


async def start_profiler(out: Path | None, pid: int, kind: str, seconds: float) -> asyncio.subprocess.Process | None:
    """py-spy the instance while it takes gifts (``--profile``): collapsed stacks in ``out/KIND.txt``."""
    return await py_spy(pid, out / f"{kind}.txt", seconds) if out is not None else None


async def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gift-bench-")))
        (work / "data").mkdir()
        if kind == "sqlite":
            db_url = f"sqlite:///{work / 'data' / 'live.db'}"
        else:
            name, db_url = await create_pg_database()
            stack.push_async_callback(drop_pg_database, name)
        env, secret, api_secret = server_env(
            db_url, work / "data", LIVE_SPEND_CAP_DAILY=str(10**12), LIVE_SPEND_CAP_PER_TRANSFER=str(10**9)
        )
        ((proc, port),) = start_live_instances(1, env, work)
        stack.callback(proc.stop)
        await wait_ready(f"http://127.0.0.1:{port}/readyz", [proc], 60)

        teacher = SioClient(None, transport="raw")
        await teacher.connect("127.0.0.1", port, mint(secret, ROOM, "teacher", "teacher", TEACHER))
        assert (await teacher.call("join", {}))["ok"]  # the first teacher to open the room receives its gifts
        auth = {"Authorization": admin_auth(api_secret)}
        coins = int(args.rate * args.duration * 2 / args.students) + 100
        async with aiohttp.ClientSession(headers=auth) as http:

            async def fund(i: int) -> None:
                body = {"coins": coins, "idempotency_key": f"fund-{i}"}
                async with http.post(f"http://127.0.0.1:{port}/api/wallets/s{i}/credit", json=body) as r:
                    assert r.status == 201, await r.text()

            for i in range(0, args.students, 100):
                await asyncio.gather(*(fund(j) for j in range(i, min(i + 100, args.students))))
        log(f"{kind}: {args.students} students funded with {coins} coins each; connecting")

        ctx = mp.get_context("spawn")
        gens = []
        for g in range(GENERATORS):
            tokens = [mint(secret, ROOM, f"s{i}", "student", STUDENT) for i in range(g, args.students, GENERATORS)]
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=generator_main, daemon=True, args=(child, port, tokens, args.rate / GENERATORS, args.duration)
            )
            p.start()
            stack.callback(p.kill)
            gens.append(parent)
        for c in gens:
            assert await asyncio.to_thread(c.recv) == "ready"
        cpu_before = tree_cpu_seconds([proc.pid])
        for c in gens:
            c.send("go")
        spy = await start_profiler(args.profile, proc.pid, kind, args.duration)
        log(f"{kind}: {args.rate:.0f} gifts/s offered for {args.duration:.0f} s")
        results = [await asyncio.to_thread(c.recv) for c in gens]
        if spy is not None:
            await spy.wait()
        cpu = tree_cpu_seconds([proc.pid]).get(proc.pid, 0) - cpu_before.get(proc.pid, 0)
        await teacher.close()
        await asyncio.sleep(0.5)
        facts = await ledger_facts(normalize_database_url(db_url))

    accepted = sum(r["accepted"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    paid = accepted * PRICE
    balanced = (
        facts["total"] == 0
        and facts["negative"] == 0
        and facts["gift_transfers"] >= accepted
        and facts["teacher"] + facts["platform"] == paid
        and facts["teacher"] >= paid * 7 // 10
    )
    return {
        "gifts_per_s": round(accepted / max(args.duration, elapsed)),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "accepted": accepted,
        "errors": errors,
        "balanced": balanced,
        "ledger": facts,
        "server_cpu_s": round(cpu, 2),
        "generator_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "cpu_us_per_gift": round(cpu / max(accepted, 1) * 1e6),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in args.databases:
        r = await run_one(kind, args)
        log(f"{kind}: {json.dumps(r)}")
        out[kind] = r
    summary: dict[str, Any] = {f"gifts_per_s_{k}": v["gifts_per_s"] for k, v in out.items()}
    summary["p99_ms"] = max(v["p99_ms"] for v in out.values())
    summary["ledger_balanced"] = all(v["balanced"] for v in out.values())
    for k, v in out.items():
        summary[f"p99_ms_{k}"] = v["p99_ms"]
        summary[f"p50_ms_{k}"] = v["p50_ms"]
        summary[f"cpu_us_per_gift_{k}"] = v["cpu_us_per_gift"]
        summary[f"errors_{k}"] = v["errors"]
    summary.update(offered_per_s=args.rate, students=args.students, duration_s=args.duration)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300 students for 5 s per database")
    p.add_argument("--students", type=int, help="default 500 (300 with --quick)")
    p.add_argument("--rate", type=float, default=5000.0, help="gifts per second offered (default 5000)")
    p.add_argument("--duration", type=float, help="seconds of gifting per database (default 15; 5 quick)")
    p.add_argument("--only", choices=["sqlite", "postgres"], help="one database only")
    p.add_argument("--profile", type=Path, help="py-spy the instance while it takes gifts, into this directory")
    args = p.parse_args()
    args.students = args.students or (300 if args.quick else 500)
    args.duration = args.duration or (5.0 if args.quick else 15.0)
    args.databases = [args.only] if args.only else ["sqlite", "postgres"]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
