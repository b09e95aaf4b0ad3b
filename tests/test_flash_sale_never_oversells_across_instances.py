"""2,000 purchase attempts from 1,000 students over two server processes (Redis, PostgreSQL) for a flash
sale of 100 seats with a per-student limit of 1: exactly 100 paid orders, no student with two, the seat
count reaches 0 in every member's client on both instances, and the ledger holds exactly the money of 100
sales."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from rooms.identity import Role
from tests.sales_support import buy, course_in_room, fund
from tests.support import Member, ServerProcess, joined, joined_together, token, wait_until

pytestmark = pytest.mark.postgres

ROOM = "flash-storm"
STUDENTS = 1000
SEATS = 100
LIST_PRICE = 5000
SALE_PRICE = 1990


def seats_left(member: Member) -> int | None:
    """What this member's page would show: the join snapshot, then every sales event folded in."""
    state: dict[str, Any] = dict((member.snapshot or {}).get("sales") or {})
    for event in member.events:
        if event["type"] == "sales.card":
            state = dict(event["data"])
        elif event["type"] == "sales.seats" and state.get("sale") and state["sale"]["id"] == event["data"]["sale_id"]:
            state["seats_left"] = event["data"]["seats_left"]
    return state.get("seats_left")


async def test_2000_attempts_for_100_seats(two_instances: tuple[ServerProcess, ServerProcess], pg_url: str) -> None:
    a, b = two_instances
    teacher = Member(a.url, token(ROOM, "teacher", Role.TEACHER))
    early_bird = Member(b.url, token(ROOM, "early"))
    students = [Member((a, b)[i % 2].url, token(ROOM, f"s{i}")) for i in range(STUDENTS)]
    try:
        await joined(teacher, early_bird)
        assert (await teacher.call("room:go_live", {}))["ok"]
        await course_in_room(a.url, ROOM, "flash101", LIST_PRICE)
        await asyncio.gather(
            fund(a.url, [f"s{i}" for i in range(STUDENTS)], SALE_PRICE),
            fund(b.url, ["early"], LIST_PRICE),
            joined_together(students),
        )

        assert (await teacher.call("sales:pin", {"course_id": "flash101"}))["ok"]
        started = await teacher.call(
            "sales:start",
            {"price_minor": SALE_PRICE, "countdown_s": 10, "duration_s": 120, "seats": SEATS, "per_student_limit": 1},
        )
        assert started["ok"], started
        sale = started["state"]["sale"]
        await wait_until(
            lambda: all(seats_left(s) == SEATS for s in students), timeout=15, what="everyone sees the sale"
        )
        early = await early_bird.call("course:buy", buy("flash101", "early"))
        assert early["ok"] and early["order"]["sale_id"] is None, "before it opens the sale price does not apply"
        await asyncio.sleep(max(0.0, sale["opens_at"] / 1000 - time.time()) + 0.05)

        attempts = [s.call("course:buy", buy("flash101", f"k{n}"), timeout=60) for n in range(2) for s in students]
        acks = await asyncio.gather(*attempts)
        paid = [ack for ack in acks if ack["ok"]]
        refusals = {ack["error"]["code"] for ack in acks if not ack["ok"]}
        assert len(paid) == SEATS, f"{len(paid)} paid; refusals {refusals}"
        assert refusals <= {"sold_out", "limit_reached"}, refusals
        assert all(ack["order"]["status"] == "paid" and ack["order"]["amount_minor"] == SALE_PRICE for ack in paid)
        assert len({ack["order"]["buyer"] for ack in paid}) == SEATS, "no student has two"

        await wait_until(lambda: all(seats_left(m) == 0 for m in [teacher, *students]), timeout=15, what="0 left")
        for url in (a.url, b.url):
            late = Member(url, token(ROOM, f"late-{url[-5:]}"))
            await joined(late)
            assert late.snapshot is not None and late.snapshot["sales"]["seats_left"] == 0
            assert (await late.call("sales:get", {}))["state"]["seats_left"] == 0
            await late.close()

        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch(
                "SELECT buyer, status, amount_minor FROM orders WHERE sale_id = $1 AND status <> 'expired'", sale["id"]
            )
            taken = await conn.fetchval("SELECT seats_taken FROM flash_sales WHERE id = $1", sale["id"])
            total = await conn.fetchval("SELECT SUM(balance) FROM ledger_accounts")
            earned = await conn.fetchval("SELECT balance FROM ledger_accounts WHERE id = 'earnings:teacher'")
            owners = await conn.fetchval("SELECT COUNT(*) FROM entitlements WHERE course_id = 'flash101'")
        finally:
            await conn.close()
        assert len(rows) == SEATS and {r["status"] for r in rows} == {"paid"}
        assert len({r["buyer"] for r in rows}) == SEATS
        assert taken == SEATS
        assert total == 0
        assert earned == (SEATS * SALE_PRICE + LIST_PRICE) * 70 // 100
        assert owners == SEATS + 1
    finally:
        await asyncio.gather(teacher.close(), early_bird.close(), *(s.close() for s in students))
