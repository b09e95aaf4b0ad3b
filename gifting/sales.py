"""The course card and flash sales of a room, and the live coupons offered in it.

Every change is announced as a ``sales.card`` room event carrying the room's whole sales state (the card,
the sale, the live coupons), so a client, or an instance's room view, simply keeps the newest one. Seats
left during a sale change far more often: they go as ``sales.seats``, coalesced per room.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting import accounts as acct
from gifting import tables as t
from gifting.catalogue import Catalogue
from gifting.ledger import create_accounts
from gifting.seat_gate import SeatGate
from rooms.engine import Publication, now_ms
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity
from rooms.service import Room, RoomStatus
from rooms.tables import autocommit

log = logging.getLogger(__name__)

#: Publishes one room event: (room id, type, data).
Publisher = Callable[[str, str, dict[str, Any]], Awaitable[None]]

SEATS_EVERY_S = 0.2
#: Coupon claim counts reach the room at most this often (per instance).
CLAIMS_EVERY_S = 1.0
MAX_COUPONS_SHOWN = 20
SALE_COLUMNS = (
    "id",
    "course_id",
    "price_minor",
    "currency",
    "starts_at",
    "opens_at",
    "ends_at",
    "seats",
    "per_student_limit",
    "stopped_at",
)
COUPON_COLUMNS = (
    "id",
    "course_id",
    "title",
    "kind",
    "amount_off",
    "percent_off",
    "min_spend",
    "currency",
    "quota",
    "claimed",
    "per_student",
)


def sale_is_open(sale: dict[str, Any] | None, now: int) -> bool:
    return sale is not None and sale["stopped_at"] is None and sale["opens_at"] <= now < sale["ends_at"]


def require_staff(who: Identity, what: str) -> None:
    if not who.is_staff:
        raise forbidden(what)


class SalesService:
    """Pin and unpin the course card, run flash sales, and tell the room."""

    def __init__(self, db: AsyncEngine, catalogue: Catalogue, gate: SeatGate, publish: Publisher) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.catalogue = catalogue
        self.gate = gate
        self.publish = publish
        self._seat_flush: dict[str, asyncio.Task[None]] = {}
        self._card_flush: dict[str, asyncio.Task[None]] = {}

    # the card
    async def pin(self, staff: Identity, room: Room, course_id: str, audience: int) -> dict[str, Any]:
        """Pin a course the room sells; ``audience`` (the head count now) is the card's impressions."""
        require_staff(staff, "pinning a course")
        _not_ended(room)
        await self.catalogue.sellable(room.id, course_id)
        now = now_ms()
        p = t.card_pins
        async with self.db.begin() as conn:
            await conn.execute(
                update(p).where(p.c.room_id == room.id, p.c.unpinned_at.is_(None)).values(unpinned_at=now)
            )
            await conn.execute(
                insert(p).values(
                    room_id=room.id, course_id=course_id, audience=audience, pinned_by=staff.user_id, pinned_at=now
                )
            )
        return await self.announce(room.id)

    async def unpin(self, staff: Identity, room: Room) -> dict[str, Any]:
        require_staff(staff, "unpinning a course")
        p = t.card_pins
        async with self.db.begin() as conn:
            await conn.execute(
                update(p).where(p.c.room_id == room.id, p.c.unpinned_at.is_(None)).values(unpinned_at=now_ms())
            )
        return await self.announce(room.id)

    # flash sales
    async def start_sale(
        self,
        staff: Identity,
        room: Room,
        *,
        price_minor: int,
        countdown_s: int,
        duration_s: int,
        seats: int,
        per_student_limit: int,
        starts_at: int | None = None,
    ) -> dict[str, Any]:
        """A flash sale of the pinned course: its countdown starts at ``starts_at`` (now by default), it
        opens ``countdown_s`` later and lasts ``duration_s`` or until sold out."""
        require_staff(staff, "starting a flash sale")
        _not_ended(room)
        state = await self.state(room.id)
        course = state["course"]
        if course is None:
            raise RoomError("no_card", "pin the course first: a flash sale runs on the pinned course")
        now = now_ms()
        if state["sale"] is not None and state["sale"]["stopped_at"] is None and state["sale"]["ends_at"] > now:
            raise RoomError("sale_running", "a flash sale is already scheduled or running; stop it first")
        if not 10 <= countdown_s <= 300:
            raise RoomError("invalid", "countdown_s must be 10-300 seconds")
        if not 10 <= duration_s <= 86_400:
            raise RoomError("invalid", "duration_s must be 10-86400 seconds")
        if not 0 <= price_minor < course["price_minor"]:
            raise RoomError("bad_amount", "a sale price is below the list price (0 allowed)")
        if not 1 <= seats <= 1_000_000:
            raise RoomError("invalid", "seats must be 1-1000000")
        if course["seats_left"] is not None and seats > course["seats_left"]:
            raise RoomError("invalid", f"the course has {course['seats_left']} seats left")
        if not 1 <= per_student_limit <= 10:
            raise RoomError("invalid", "per_student_limit must be 1-10")
        start = now if starts_at is None else starts_at
        if not now - 1000 <= start <= now + 7 * 86_400_000:
            raise RoomError("invalid", "starts_at must be now or within the next 7 days (ms since the epoch)")
        sale = {
            "id": "sale_" + secrets.token_hex(8),
            "room_id": room.id,
            "course_id": course["id"],
            "price_minor": price_minor,
            "currency": course["currency"],
            "starts_at": start,
            "opens_at": start + countdown_s * 1000,
            "ends_at": start + (countdown_s + duration_s) * 1000,
            "seats": seats,
            "seats_taken": 0,
            "per_student_limit": per_student_limit,
            "created_by": staff.user_id,
            "created_at": now,
        }
        found = await self.catalogue.get(course["id"])
        teacher = (found.teacher_id if found is not None else None) or room.teacher_id
        async with self.db.begin() as conn:
            await conn.execute(insert(t.flash_sales).values(**sale))
            # The accounts every purchase credits, created now rather than by the first batches of the
            # sale's opening burst (where instances creating the same row would wait for each other).
            await create_accounts(conn, [acct.PLATFORM, *([acct.earnings(teacher)] if teacher else [])], now)
        await self.gate.restore(sale["id"], seats, {}, self._gate_ttl(sale))
        return await self.announce(room.id)

    async def stop_sale(self, staff: Identity, room: Room) -> dict[str, Any]:
        """End the running (or scheduled) sale now."""
        require_staff(staff, "stopping a flash sale")
        s = t.flash_sales
        now = now_ms()
        async with self.db.begin() as conn:
            done = await conn.execute(
                update(s)
                .where(s.c.room_id == room.id, s.c.stopped_at.is_(None), s.c.ends_at > now)
                .values(stopped_at=now)
            )
        if done.rowcount == 0:
            raise RoomError("invalid_state", "no flash sale is scheduled or running")
        return await self.announce(room.id)

    @staticmethod
    def _gate_ttl(sale: dict[str, Any]) -> int:
        # Long enough for every unpaid order of the sale to expire and give its seat back.
        return max(3600, int(sale["ends_at"] - now_ms()) // 1000 + 86_400)

    async def ensure_gate(self, sale_id: str) -> None:
        """Rebuild a sale's gate from SQL, the truth (Redis lost it): seats not taken by orders that
        have not expired, and who holds them."""
        s, o = t.flash_sales, t.orders
        async with self.reads.connect() as conn:
            sale = (await conn.execute(select(s).where(s.c.id == sale_id))).first()
            if sale is None:
                raise RoomError("not_found", "no such sale")
            holders = {
                r.buyer: 1
                for r in await conn.execute(select(o.c.buyer).where(o.c.sale_id == sale_id, o.c.status != "expired"))
            }
        await self.gate.restore(sale_id, sale.seats - sale.seats_taken, holders, self._gate_ttl(dict(sale._mapping)))

    # state
    async def state(self, room_id: str) -> dict[str, Any]:
        """The room's sales state as ``sales.card`` carries it."""
        p, s, c = t.card_pins, t.flash_sales, t.coupons
        async with self.reads.connect() as conn:
            pin = (
                await conn.execute(
                    select(p.c.course_id, p.c.pinned_at)
                    .where(p.c.room_id == room_id, p.c.unpinned_at.is_(None))
                    .order_by(p.c.id.desc())
                    .limit(1)
                )
            ).first()
            sale_row = None
            if pin is not None:
                sale_row = (
                    await conn.execute(
                        select(*(s.c[n] for n in SALE_COLUMNS))
                        .where(s.c.room_id == room_id, s.c.course_id == pin.course_id, s.c.created_at >= pin.pinned_at)
                        .order_by(s.c.created_at.desc())
                        .limit(1)
                    )
                ).first()
            coupons = [
                dict(r._mapping)
                for r in await conn.execute(
                    select(*(c.c[n] for n in COUPON_COLUMNS))
                    .where(c.c.room_id == room_id, c.c.stopped_at.is_(None), c.c.claimed < c.c.quota)
                    .order_by(c.c.created_at.desc())
                    .limit(MAX_COUPONS_SHOWN)
                )
            ]
        course = None
        if pin is not None:
            found = await self.catalogue.get(pin.course_id)
            course = found.card() if found is not None else None
        sale = dict(sale_row._mapping) if sale_row is not None else None
        seats_left = None
        if sale is not None:
            seats_left = await self.gate.left(sale["id"])
            if seats_left is None:
                await self.ensure_gate(sale["id"])
                seats_left = await self.gate.left(sale["id"])
        return {
            "course": course,
            "pinned_at": pin.pinned_at if pin is not None else None,
            "sale": sale,
            "seats_left": seats_left,
            "coupons": coupons,
        }

    async def announce(self, room_id: str) -> dict[str, Any]:
        """Publish the room's sales state to everyone in it; returns it."""
        state = await self.state(room_id)
        await self.publish(room_id, "sales.card", {**state, "server_time": now_ms()})
        return state

    def seats_changed(self, room_id: str, sale_id: str) -> None:
        """A seat was taken or given back: announce the count soon (many changes go as one event)."""
        if room_id in self._seat_flush:
            return
        self._seat_flush[room_id] = asyncio.create_task(self._flush_seats(room_id, sale_id))

    async def _flush_seats(self, room_id: str, sale_id: str) -> None:
        try:
            await asyncio.sleep(SEATS_EVERY_S)
            left = await self.gate.left(sale_id)
            if left is not None:
                await self.publish(room_id, "sales.seats", {"sale_id": sale_id, "seats_left": left})
        finally:
            del self._seat_flush[room_id]

    def claims_changed(self, room_id: str) -> None:
        """A coupon was claimed: announce the card (with the claim counts) within a second, once for
        all the claims of that second, so a crowd claiming costs one SQL read and one event per instance."""
        if room_id not in self._card_flush:
            self._card_flush[room_id] = asyncio.create_task(self._flush_card(room_id))

    async def _flush_card(self, room_id: str) -> None:
        try:
            await asyncio.sleep(CLAIMS_EVERY_S)
            await self.announce(room_id)
        except Exception:  # the next claim announces again; the claim itself is already stored
            log.warning("sales card of %s not announced after claims", room_id, exc_info=True)
        finally:
            del self._card_flush[room_id]

    async def close(self) -> None:
        for task in [*self._seat_flush.values(), *self._card_flush.values()]:
            task.cancel()


class SalesView:
    """The sales part of an instance's room view (rooms/views.py): loaded once, then kept current by the
    room's publications, so a join's snapshot and a buy's first checks cost no SQL."""

    def __init__(self, sales: SalesService) -> None:
        self.sales = sales

    async def load(self, room_id: str) -> dict[str, Any]:
        return {**await self.sales.state(room_id), "server_time": now_ms()}

    def apply(self, state: Any, pub: Publication) -> Any:
        if pub.type == "sales.card":
            return pub.data
        if pub.type == "sales.seats" and state and state.get("sale") and state["sale"]["id"] == pub.data["sale_id"]:
            return {**state, "seats_left": pub.data["seats_left"]}
        return state


def _not_ended(room: Room) -> None:
    if room.status is RoomStatus.ENDED:
        raise RoomError("room_ended", "this lesson has ended")
