"""Sales reports and entitlements for hosts: per-room sales (card impressions, orders, conversion,
revenue), the entitlements that paid orders granted, and the course progress hosts report back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting import tables as t
from rooms.errors import RoomError
from rooms.tables import autocommit


class SalesReports:
    """Read-only SQL over orders and card pins; and the one write hosts make: course progress."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self.reads = autocommit(db)

    async def room(self, room_id: str) -> dict[str, Any]:
        """Per course sold in the room: impressions (students present when its card was pinned, summed
        over pins), orders by status, paying buyers, conversion (paying buyers per impression) and revenue
        net of refunds, per currency."""
        p, o = t.card_pins, t.orders
        async with self.reads.connect() as conn:
            pins = {
                r.course_id: (int(r.pins), int(r.impressions or 0))
                for r in await conn.execute(
                    select(p.c.course_id, func.count().label("pins"), func.sum(p.c.audience).label("impressions"))
                    .where(p.c.room_id == room_id)
                    .group_by(p.c.course_id)
                )
            }
            rows = await conn.execute(
                select(
                    o.c.course_id,
                    o.c.status,
                    o.c.currency,
                    func.count().label("orders"),
                    func.count(func.distinct(o.c.buyer)).label("buyers"),
                    func.sum(o.c.amount_minor - o.c.refunded_minor).label("net"),
                    func.sum(o.c.refunded_minor).label("refunded"),
                )
                .where(o.c.room_id == room_id)
                .group_by(o.c.course_id, o.c.status, o.c.currency)
            )
            courses: dict[str, dict[str, Any]] = {}
            for r in rows:
                c = courses.setdefault(r.course_id, _empty(r.course_id))
                c["orders"][r.status] = int(r.orders)
                if r.status in ("paid", "refunded"):
                    c["buyers"] += int(r.buyers)
                    revenue = c["revenue"].setdefault(r.currency, {"net_minor": 0, "refunded_minor": 0})
                    revenue["net_minor"] += int(r.net or 0)
                    revenue["refunded_minor"] += int(r.refunded or 0)
        for course_id, (count, impressions) in pins.items():
            c = courses.setdefault(course_id, _empty(course_id))
            c["pins"], c["impressions"] = count, impressions
        for c in courses.values():
            c["conversion"] = round(c["buyers"] / c["impressions"], 4) if c["impressions"] else None
        return {"room_id": room_id, "courses": sorted(courses.values(), key=lambda c: c["course_id"])}

    async def entitlements(self, user_id: str | None, course_id: str | None, limit: int = 1000) -> list[dict[str, Any]]:
        e = t.entitlements
        query = select(e).order_by(e.c.granted_at.desc()).limit(limit)
        if user_id is not None:
            query = query.where(e.c.user_id == user_id)
        if course_id is not None:
            query = query.where(e.c.course_id == course_id)
        async with self.reads.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def progress(self, user_id: str, course_id: str, consumed_pct: int) -> dict[str, Any]:
        """Record how much of the course the user consumed (refund policies look at it)."""
        e = t.entitlements
        async with self.db.begin() as conn:
            done = await conn.execute(
                update(e).where(e.c.user_id == user_id, e.c.course_id == course_id).values(consumed_pct=consumed_pct)
            )
        if done.rowcount != 1:
            raise RoomError("not_found", "no entitlement of that user to that course")
        rows = await self.entitlements(user_id, course_id, 1)
        return rows[0]


def _empty(course_id: str) -> dict[str, Any]:
    return {"course_id": course_id, "pins": 0, "impressions": 0, "orders": {}, "buyers": 0, "revenue": {}}
