"""Live coupons: staff create them during the lesson; students claim them only while the room is live, up
to the coupon's total quota and its per-student limit, and use a claim on one order."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting import tables as t
from gifting.catalogue import CURRENCY_RE, MAX_PRICE, Catalogue
from gifting.sales import require_staff
from rooms.engine import now_ms
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity
from rooms.service import Room, RoomStatus
from rooms.tables import autocommit


class CouponService:
    """Create, stop and claim coupons; find a student's unused claim for an order."""

    def __init__(self, db: AsyncEngine, catalogue: Catalogue) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.catalogue = catalogue

    async def create(
        self,
        staff: Identity | None,
        room: Room,
        *,
        title: str,
        kind: str,
        quota: int,
        per_student: int = 1,
        amount_off: int | None = None,
        percent_off: int | None = None,
        min_spend: int | None = None,
        currency: str | None = None,
        course_id: str | None = None,
    ) -> dict[str, Any]:
        """A coupon of the room (``staff`` None: the admin API)."""
        if staff is not None:
            require_staff(staff, "creating coupons")
        if room.status is RoomStatus.ENDED:
            raise RoomError("room_ended", "this lesson has ended")
        title = title.strip()
        if not 1 <= len(title) <= 100:
            raise RoomError("invalid", "title must be 1-100 characters")
        if kind not in ("fixed", "percent", "threshold"):
            raise RoomError("invalid", "kind is fixed, percent or threshold")
        if not 1 <= quota <= 1_000_000 or not 1 <= per_student <= 100:
            raise RoomError("invalid", "quota must be 1-1000000 and per_student 1-100")
        if course_id is not None:
            course = await self.catalogue.sellable(room.id, course_id)
            if currency is not None and currency != course.currency:
                raise RoomError("invalid", "the coupon's currency must be the course's")
            currency = course.currency
        row: dict[str, Any] = {"amount_off": None, "percent_off": None, "min_spend": None, "currency": None}
        if kind == "percent":
            if percent_off is None or not 1 <= percent_off <= 100 or amount_off is not None or min_spend is not None:
                raise RoomError("invalid", "a percent coupon has percent_off (1-100) and nothing else")
            row["percent_off"] = percent_off
        else:
            if amount_off is None or not 1 <= amount_off <= MAX_PRICE or percent_off is not None:
                raise RoomError("bad_amount", f"a {kind} coupon has amount_off (minor units, 1-{MAX_PRICE})")
            if currency is None or not CURRENCY_RE.match(currency):
                raise RoomError("invalid", f"a {kind} coupon needs the currency of its amounts")
            if kind == "threshold":
                if min_spend is None or not amount_off <= min_spend <= MAX_PRICE:
                    raise RoomError("bad_amount", "a threshold coupon has min_spend of at least amount_off")
                row["min_spend"] = min_spend
            elif min_spend is not None:
                raise RoomError("invalid", "only threshold coupons have min_spend")
            row.update(amount_off=amount_off, currency=currency)
        coupon = {
            "id": "cpn_" + secrets.token_hex(8),
            "room_id": room.id,
            "course_id": course_id,
            "title": title,
            "kind": kind,
            **row,
            "quota": quota,
            "claimed": 0,
            "per_student": per_student,
            "created_by": staff.user_id if staff is not None else "admin",
            "created_at": now_ms(),
        }
        async with self.db.begin() as conn:
            await conn.execute(insert(t.coupons).values(**coupon))
        return coupon

    async def stop(self, staff: Identity, room: Room, coupon_id: str) -> None:
        require_staff(staff, "stopping coupons")
        c = t.coupons
        async with self.db.begin() as conn:
            done = await conn.execute(
                update(c)
                .where(c.c.id == coupon_id, c.c.room_id == room.id, c.c.stopped_at.is_(None))
                .values(stopped_at=now_ms())
            )
        if done.rowcount != 1:
            raise RoomError("not_found", "no such coupon running in this room")

    async def claim(self, student: Identity, room: Room, coupon_id: str) -> dict[str, Any]:
        """Claim a coupon: only while the room is live, within the quota and the per-student limit."""
        if not student.grants.buy:
            raise forbidden("claiming coupons")
        if room.status is not RoomStatus.LIVE:
            raise RoomError("not_live", "coupons can be claimed only while the lesson is live")
        c, cc = t.coupons, t.coupon_claims
        async with self.reads.connect() as conn:
            coupon = (await conn.execute(select(c).where(c.c.id == coupon_id, c.c.room_id == room.id))).first()
            if coupon is None:
                raise RoomError("not_found", "no such coupon in this room")
            mine = (
                await conn.execute(
                    select(func.count()).where(cc.c.coupon_id == coupon_id, cc.c.user_id == student.user_id)
                )
            ).scalar() or 0
        if coupon.stopped_at is not None:
            raise RoomError("coupon_stopped", "this coupon is no longer offered")
        if mine >= coupon.per_student:
            raise RoomError("claim_limit", f"you may claim this coupon {coupon.per_student} time(s)")
        claim = {
            "id": "clm_" + secrets.token_hex(8),
            "coupon_id": coupon_id,
            "user_id": student.user_id,
            "n": mine + 1,
            "claimed_at": now_ms(),
        }
        try:
            async with self.db.begin() as conn:
                taken = await conn.execute(
                    update(c)
                    .where(c.c.id == coupon_id, c.c.claimed < c.c.quota, c.c.stopped_at.is_(None))
                    .values(claimed=c.c.claimed + 1)
                )
                if taken.rowcount != 1:
                    raise RoomError("coupon_exhausted", "this coupon has all been claimed")
                await conn.execute(insert(cc).values(**claim))
        except IntegrityError:
            # The same student claiming twice at once: the UNIQUE slot lets one through.
            raise RoomError("claim_limit", f"you may claim this coupon {coupon.per_student} time(s)") from None
        return {"claim": claim["id"], "coupon": _public(dict(coupon._mapping))}

    async def unused_claim(self, user_id: str, coupon_id: str) -> tuple[dict[str, Any], str]:
        """The coupon and the user's oldest claim of it not used on an order (else ``coupon_not_claimed``)."""
        c, cc = t.coupons, t.coupon_claims
        async with self.reads.connect() as conn:
            row = (
                await conn.execute(
                    select(c, cc.c.id.label("claim_id"))
                    .join(cc, cc.c.coupon_id == c.c.id)
                    .where(c.c.id == coupon_id, cc.c.user_id == user_id, cc.c.order_id.is_(None))
                    .order_by(cc.c.n)
                    .limit(1)
                )
            ).first()
        if row is None:
            raise RoomError("coupon_not_claimed", "claim this coupon first (while the lesson is live)")
        coupon = dict(row._mapping)
        return coupon, coupon.pop("claim_id")

    async def claims_of(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        """The user's unused claims in the room, with their coupons (the buy sheet offers them)."""
        c, cc = t.coupons, t.coupon_claims
        async with self.reads.connect() as conn:
            rows = await conn.execute(
                select(c, cc.c.id.label("claim_id"))
                .join(cc, cc.c.coupon_id == c.c.id)
                .where(c.c.room_id == room_id, cc.c.user_id == user_id, cc.c.order_id.is_(None))
                .order_by(cc.c.claimed_at)
            )
            return [{"claim": r.claim_id, "coupon": _public(dict(r._mapping))} for r in rows]


def _public(coupon: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "course_id", "title", "kind", "amount_off", "percent_off", "min_spend", "currency", "per_student")
    return {k: coupon[k] for k in keys}
