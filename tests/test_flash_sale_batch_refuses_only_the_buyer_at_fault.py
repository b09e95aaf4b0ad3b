"""A flash sale's purchases are written many per ledger batch (one statement per kind of row, the seat count
once): a buyer at fault in the batch is refused alone and writes nothing, and a seat gate that lets more
buyers through than SQL has seats (rebuilt from stale data) still cannot oversell. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import func, select, update

from gifting import tables as t
from live.app import Services
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.sales_support import buy, course_in_room, fund
from tests.support import Member, joined, joined_together, token

ROOM = "flash-batch"
COURSE = "batch101"
SEATS = 30
LIST_PRICE = 5000
SALE_PRICE = 1990  # coins: one per cent (LIVE_COIN_RATES default)


async def facts(services: Services, sale_id: str) -> dict[str, Any]:
    o, e, a = t.orders, t.entitlements, t.accounts
    async with services.db.connect() as conn:

        async def one(query: Any) -> Any:
            return (await conn.execute(query)).scalar()

        in_sale = select(o.c.buyer).where(o.c.sale_id == sale_id, o.c.status == "paid")
        wallets = {r.id: r.balance for r in await conn.execute(select(a.c.id, a.c.balance).where(a.c.kind == "wallet"))}
        return {
            "seats_taken": await one(select(t.flash_sales.c.seats_taken).where(t.flash_sales.c.id == sale_id)),
            "sale_buyers": sorted(r.buyer for r in await conn.execute(in_sale)),
            "orders": await one(select(func.count()).select_from(o)),
            "operations": await one(select(func.count()).select_from(t.operations)),
            "webhooks": await one(select(func.count()).select_from(t.host_webhooks)),
            "owners": sorted(r.user_id for r in await conn.execute(select(e.c.user_id).where(e.c.status == "active"))),
            "total": await one(select(func.coalesce(func.sum(a.c.balance), 0))),
            "earned": await one(select(func.sum(a.c.balance)).where(a.c.kind.in_(["earnings", "platform"]))),
            "wallets": wallets,
        }


async def test_a_batch_refuses_only_the_buyer_at_fault_and_never_oversells(start_app: AppFactory, db_url: str) -> None:
    url, services = await start_app(LIVE_DATABASE_URL=db_url)
    teacher = Member(url, token(ROOM, "tom", Role.TEACHER))
    good = [Member(url, token(ROOM, f"g{i:02}")) for i in range(20)]
    owner, again, poor = (Member(url, token(ROOM, name)) for name in ("owner", "again", "poor"))
    late = [Member(url, token(ROOM, f"late{i}")) for i in range(10)]
    students = [*good, owner, again, poor, *late]
    try:
        await joined(teacher)
        await joined_together(students)
        await course_in_room(url, ROOM, COURSE, LIST_PRICE)
        await fund(url, [f"g{i:02}" for i in range(20)], SALE_PRICE)
        await fund(url, ["owner", "again"], LIST_PRICE + SALE_PRICE)  # enough for a seat after the course
        await fund(url, [f"late{i}" for i in range(10)], SALE_PRICE)
        await fund(url, ["poor"], SALE_PRICE - 1)

        # Before the sale, at the list price: "owner" owns the course, "again" too, under the key it repeats.
        assert (await owner.call("course:buy", buy(COURSE, "before")))["ok"]
        first = await again.call("course:buy", buy(COURSE, "same"))
        assert first["ok"] and first["order"]["sale_id"] is None

        assert (await teacher.call("sales:pin", {"course_id": COURSE}))["ok"]
        started = await teacher.call(
            "sales:start",
            {"price_minor": SALE_PRICE, "countdown_s": 10, "duration_s": 120, "seats": SEATS, "per_student_limit": 1},
        )
        assert started["ok"], started
        sale = started["state"]["sale"]
        await asyncio.sleep(max(0.0, sale["opens_at"] / 1000 - time.time()) + 0.05)
        before = await facts(services, sale["id"])

        # One burst: twenty buyers who may buy, and three at fault.
        answers = await asyncio.gather(
            *(m.call("course:buy", buy(COURSE, "k1")) for m in good),
            owner.call("course:buy", buy(COURSE, "k1")),
            again.call("course:buy", buy(COURSE, "same")),
            poor.call("course:buy", buy(COURSE, "k1")),
        )
        paid, (owned, replayed, broke) = answers[:20], answers[20:]
        assert all(a["ok"] and not a.get("replayed") for a in paid), paid
        assert {a["order"]["amount_minor"] for a in paid} == {SALE_PRICE}
        assert {a["order"]["sale_id"] for a in paid} == {sale["id"]}
        assert owned["error"]["code"] == "already_owned", owned
        assert replayed["ok"] and replayed["replayed"] and replayed["order"]["id"] == first["order"]["id"], replayed
        assert broke["error"]["code"] == "insufficient_funds", broke

        after = await facts(services, sale["id"])
        assert after["seats_taken"] == 20
        assert after["sale_buyers"] == [f"g{i:02}" for i in range(20)]
        assert after["orders"] == before["orders"] + 20
        assert after["operations"] == before["operations"] + 20, "one ledger operation per purchase, none refused"
        assert after["webhooks"] == before["webhooks"] + 2 * 20, "order.paid and entitlement.granted per purchase"
        assert after["owners"] == sorted([*(f"g{i:02}" for i in range(20)), "owner", "again"])
        assert after["total"] == 0
        assert after["earned"] == before["earned"] + 20 * SALE_PRICE
        at_fault = ("wallet:owner", "wallet:again", "wallet:poor")
        assert [after["wallets"][w] for w in at_fault] == [before["wallets"][w] for w in at_fault]
        assert all(after["wallets"][f"wallet:g{i:02}"] == 0 for i in range(20))
        gate = services.sales.orders.gate
        assert await gate.left(sale["id"]) == SEATS - 20, "the refused buyers' seats went back to the gate"

        # A gate that knows of fewer taken seats than SQL (rebuilt from stale data): SQL has 3 seats left.
        async with services.db.begin() as conn:
            await conn.execute(
                update(t.flash_sales).where(t.flash_sales.c.id == sale["id"]).values(seats_taken=SEATS - 3)
            )
        rush = await asyncio.gather(*(m.call("course:buy", buy(COURSE, "k1")) for m in late))
        winners = [f"late{i}" for i, a in enumerate(rush) if a["ok"]]
        assert len(winners) == 3, rush
        assert {a["error"]["code"] for a in rush if not a["ok"]} == {"sold_out"}
        final = await facts(services, sale["id"])
        assert final["seats_taken"] == SEATS
        assert final["sale_buyers"] == sorted([*after["sale_buyers"], *winners])
        assert final["operations"] == after["operations"] + 3
        assert final["webhooks"] == after["webhooks"] + 2 * 3
        assert final["total"] == 0 and final["earned"] == after["earned"] + 3 * SALE_PRICE
        for i in range(10):
            name = f"late{i}"
            assert final["wallets"][f"wallet:{name}"] == (0 if name in winners else SALE_PRICE)
            assert (name in final["owners"]) == (name in winners)
    finally:
        await asyncio.gather(teacher.close(), *(m.close() for m in students))
