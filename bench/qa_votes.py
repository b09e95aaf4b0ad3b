"""Q&A vote storm: many voters on two instances toggle votes on a handful of questions.

Measures votes/s acknowledged, and for each vote the time from its acknowledgement until every connected
member has seen a count that includes it: the first `qa.votes` publication whose `seq` (the room's vote
sequence at the time of the count) is at least the vote's. Then checks that the final counts are exact:
the votes each voter holds at the end, against the last count every member saw, a fresh join on each
instance, and SQL's record (the admin API export).

    python bench/qa_votes.py            # 1,000 voters, 5,000 votes/s offered for 20 s
    python bench/qa_votes.py --quick    # 500 voters, 5 s: under a minute in all

Last line, JSON: {"votes_per_s", "p99_ms", "counts_exact", ...}. Target: 5,000 votes/s, p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
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
    server_env,
    start_live_instances,
    start_redis,
    tree_cpu_seconds,
    wait_ready,
)
from _sio import SioClient

ROOM = "qa-bench"
INSTANCES = 2
TICK_S = 0.005


# --------------------------------------------------------------------------- generator process


def _int_after(data: bytes, key: bytes) -> int:
    start = data.index(key) + len(key)
    end = start
    while data[end] in b"0123456789":
        end += 1
    return int(data[start:end])


class Voters:
    """One generator's voters, all on one instance: sends votes at a paced rate, records what arrives."""

    def __init__(self, port: int, tokens: list[str], questions: list[str]) -> None:
        self.port = port
        self.questions = questions
        self.clients = [SioClient(self._receiver(i), transport="raw") for i in range(len(tokens))]
        self.tokens = tokens
        self.voted = [[False] * len(questions) for _ in tokens]
        self.busy = [False] * len(tokens)
        self.turn = [0] * len(tokens)
        self.acks: list[tuple[int, float]] = []  # (seq, wall time of the ack) of accepted votes
        self.ack_ms: list[float] = []  # from sending a vote to its acknowledgement
        self.errors: dict[str, int] = {}
        self.seen: dict[int, list[float]] = {}  # offset -> [seq, latest arrival, members that got it]
        self.last_counts: dict[str, int] = {}  # as the first voter saw them

    def _receiver(self, index: int) -> Any:
        # Room events come as raw packets; only the first voter decodes them (for the counts it saw), the
        # others just read the offset and the vote sequence, so the generator stays cheap.
        def on_event(data: bytes, now: float) -> None:
            if b'"type":"qa.votes"' not in data:
                return
            arrival = time.time()
            offset = _int_after(data, b'"offset":')
            entry = self.seen.get(offset)
            if entry is None:
                self.seen[offset] = [_int_after(data, b'"seq":'), arrival, 1]
            else:
                entry[1] = max(entry[1], arrival)
                entry[2] += 1
            if index == 0:
                event = json.loads(data[data.index(b",") + 1 : -1])
                self.last_counts.update(event["data"]["counts"])

        return on_event

    async def connect(self) -> None:
        for i in range(0, len(self.clients), 50):
            chunk = list(range(i, min(i + 50, len(self.clients))))
            await asyncio.gather(*(self.clients[j].connect("127.0.0.1", self.port, self.tokens[j]) for j in chunk))
            answers = await asyncio.gather(*(self.clients[j].call("join", {}) for j in chunk))
            for j, answer in zip(chunk, answers, strict=True):
                assert answer["ok"], answer
                voted = set(answer["qa"]["voted"])
                self.voted[j] = [q in voted for q in self.questions]

    def _send(self, i: int) -> None:
        q = self.turn[i] % len(self.questions)
        self.turn[i] += 1
        up = not self.voted[i][q]
        self.busy[i] = True
        sent = time.monotonic()

        def on_ack(answer: Any) -> None:
            self.busy[i] = False
            self.ack_ms.append((time.monotonic() - sent) * 1000)
            if answer.get("ok"):
                self.voted[i][q] = answer["voted"]
                self.acks.append((answer["seq"], time.time()))
            else:
                code = answer["error"]["code"]
                self.errors[code] = self.errors.get(code, 0) + 1

        self.clients[i].emit("qa:vote", {"id": self.questions[q], "up": up}, on_ack)

    async def run(self, rate: float, start_at: float, duration: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.monotonic()
        sent, cursor, n = 0, 0, len(self.clients)
        while (elapsed := time.monotonic() - began) < duration:
            due = int(rate * elapsed) - sent
            tried = 0
            while due > 0 and tried < n:
                i = cursor
                cursor = (cursor + 1) % n
                tried += 1
                if not self.busy[i]:
                    self._send(i)
                    sent += 1
                    due -= 1
            await asyncio.sleep(TICK_S)
        deadline = time.monotonic() + 10
        while any(self.busy) and time.monotonic() < deadline:  # noqa: ASYNC110 - acks come by callback
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # the last count publications

    def result(self) -> dict[str, Any]:
        totals = [sum(v[q] for v in self.voted) for q in range(len(self.questions))]
        return {
            "acks": self.acks,
            "ack_ms": self.ack_ms,
            "cpu_s": time.process_time(),
            "errors": self.errors,
            "seen": self.seen,
            "members": len(self.clients),
            "held": dict(zip(self.questions, totals, strict=True)),
            "last_counts": self.last_counts,
        }


def generator_main(conn: Connection, port: int, tokens: list[str], questions: list[str]) -> None:
    async def main() -> None:
        voters = Voters(port, tokens, questions)
        await voters.connect()
        conn.send("ready")
        rate, start_at, duration = conn.recv()
        await voters.run(rate, start_at, duration)
        conn.send(voters.result())
        for c in voters.clients:
            await c.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- parent


async def snapshot_counts(port: int, secret: str, who: str) -> dict[str, int]:
    client = SioClient(None, transport="raw")
    await client.connect("127.0.0.1", port, mint(secret, ROOM, who, "assistant", TEACHER))
    answer = await client.call("join", {})
    await client.close()
    return {q["id"]: q["votes"] for q in answer["qa"]["questions"]}


async def exported_counts(port: int, key: str, api_secret: str) -> dict[str, int]:
    auth = {"Authorization": admin_auth(api_secret, key)}
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.get(f"http://127.0.0.1:{port}/api/rooms/{ROOM}/questions") as r,
    ):
        return {row["id"]: row["votes"] for row in (await r.json())["questions"]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qa-bench-")))
        redis, redis_port = start_redis(work)
        stack.callback(redis.stop)
        name, db_url = await create_pg_database()
        stack.push_async_callback(drop_pg_database, name)
        (work / "data").mkdir()
        env, secret, api_secret = server_env(
            db_url,
            work / "data",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            LIVE_QA_VOTE_FLUSH_MS=str(args.flush_ms),
        )
        instances = start_live_instances(INSTANCES, env, work)
        for proc, _ in instances:
            stack.callback(proc.stop)
        ports = [port for _, port in instances]
        await asyncio.gather(
            *(wait_ready(f"http://127.0.0.1:{p}/readyz", [pr for pr, _ in instances], 60) for p in ports)
        )

        teacher = SioClient(None, transport="raw")
        await teacher.connect("127.0.0.1", ports[0], mint(secret, ROOM, "teacher", "teacher", TEACHER))
        assert (await teacher.call("join", {}))["ok"]
        questions = []
        for i in range(args.questions):
            answer = await teacher.call("qa:ask", {"text": f"Question {i}: which topic next?"})
            assert answer["ok"], answer
            questions.append(answer["question"]["id"])
        log(f"{INSTANCES} instances on {ports}; {len(questions)} questions; connecting {args.voters} voters")

        ctx = mp.get_context("spawn")
        gens = []
        for g in range(INSTANCES):
            tokens = [mint(secret, ROOM, f"v{i}", "student", STUDENT) for i in range(g, args.voters, INSTANCES)]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=generator_main, args=(child, ports[g], tokens, questions), daemon=True)
            proc.start()
            stack.callback(proc.kill)
            gens.append((proc, parent))
        for _, conn in gens:
            assert await asyncio.to_thread(conn.recv) == "ready"
        log(f"voters joined; {args.rate:.0f} votes/s offered for {args.duration:.0f} s")

        pids = [p.pid for p, _ in instances] + [redis.pid]
        cpu_before = tree_cpu_seconds(pids)
        start_at = time.time() + 0.5
        for _, conn in gens:
            conn.send((args.rate / INSTANCES, start_at, args.duration))
        results = [await asyncio.to_thread(conn.recv) for _, conn in gens]
        cpu_after = tree_cpu_seconds(pids)

        # Merge: for every count publication, its seq, when the last member got it, how many got it.
        seen: dict[int, list[float]] = {}
        for r in results:
            for offset, (seq, arrival, members) in r["seen"].items():
                entry = seen.setdefault(int(offset), [seq, 0.0, 0])
                entry[1] = max(entry[1], arrival)
                entry[2] += members
        offsets = sorted(seen)
        seqs = [seen[o][0] for o in offsets]
        assert seqs == sorted(seqs), "count publications carry a rising vote sequence"
        all_members = sum(r["members"] for r in results)
        missed = sum(1 for o in offsets if seen[o][2] != all_members)
        latencies, unseen = [], 0
        acks = [a for r in results for a in r["acks"]]
        ack_ms = [a for r in results for a in r["ack_ms"]]
        for seq, acked in acks:
            k = bisect.bisect_left(seqs, seq)
            if k == len(seqs):
                unseen += 1
                continue
            latencies.append(max(0.0, seen[offsets[k]][1] - acked) * 1000)
        first, last = start_at, max((t for _, t in acks), default=start_at)
        votes_per_s = len(acks) / max(args.duration, last - first)

        held = {q: sum(r["held"][q] for r in results) for q in questions}
        views = {f"member-{i}": r["last_counts"] for i, r in enumerate(results)}
        for i, port in enumerate(ports):
            views[f"join-{i}"] = await snapshot_counts(port, secret, f"checker-{i}")
        exported: dict[str, int] = {}
        for _ in range(50):
            exported = await exported_counts(ports[1], "bench", api_secret)
            if exported == held:
                break
            await asyncio.sleep(0.1)
        views["sql"] = exported
        wrong = {k: v for k, v in views.items() if {q: v.get(q) for q in questions} != held}
        await teacher.close()
        errors: dict[str, int] = {}
        for r in results:
            for code, n in r["errors"].items():
                errors[code] = errors.get(code, 0) + n
        cpu = {
            name: round(cpu_after.get(pid, 0) - cpu_before.get(pid, 0), 2)
            for name, pid in zip(["live-0", "live-1", "redis"], pids, strict=True)
        }
        if wrong:
            log(f"counts differ from the votes held {held}: {wrong}")
        return {
            "votes_per_s": round(votes_per_s),
            "p99_ms": round(percentile(latencies, 99), 1),
            "p50_ms": round(percentile(latencies, 50), 1),
            "counts_exact": not wrong and missed == 0 and unseen == 0,
            "offered_per_s": args.rate,
            "voters": args.voters,
            "questions": args.questions,
            "flush_ms": args.flush_ms,
            "votes": len(acks),
            "count_publications": len(offsets),
            "publications_missed_by_someone": missed,
            "votes_never_seen": unseen,
            "ack_p50_ms": round(percentile(ack_ms, 50), 1),
            "ack_p99_ms": round(percentile(ack_ms, 99), 1),
            "errors": errors,
            "server_cpu_s": cpu,
            "generator_cpu_s": [round(r["cpu_s"], 2) for r in results],
            "duration_s": args.duration,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="500 voters for 5 s")
    p.add_argument("--voters", type=int, help="default 1000 (500 with --quick)")
    p.add_argument("--rate", type=float, default=5000.0, help="votes per second offered (default 5000)")
    p.add_argument("--duration", type=float, help="seconds of voting (default 20; 5 with --quick)")
    p.add_argument("--questions", type=int, default=5)
    p.add_argument("--flush-ms", type=int, default=50, help="LIVE_QA_VOTE_FLUSH_MS (default 50)")
    args = p.parse_args()
    args.voters = args.voters or (500 if args.quick else 1000)
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
