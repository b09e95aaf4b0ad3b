"""Course orders: buy from the wallet or through the payment provider, expire unpaid ones, refund.

An order is ``pending`` (paying through the provider's checkout: its seat is held until ``expires_at``),
``paid``, ``expired`` (unpaid in time: its seat and coupon claim go back) or ``refunded`` (in full).

A wallet purchase is one ledger operation: the money, the order row (paid at once), the sale's and the
course's seat counts (guarded), the coupon claim, the entitlement and the host webhooks are written in one
transaction or not at all. A flash sale's seats pass the seat gate first (gifting/seat_gate.py), so a sale
that thousands of students hit at once costs SQL only for the buyers who got a seat; theirs is one read
shared by the buys arriving together (the course) and their share of a ledger batch, which writes the
orders, entitlements and webhooks of all its purchases in one statement each and the seat count once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, func, insert, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from gifting import accounts as acct
from gifting import tables as t
from gifting.batch_writes import Count, Row, count_update
from gifting.catalogue import Catalogue, Course
from gifting.coupons import CouponService
from gifting.host_webhooks import HostWebhooks, webhook_row, webhook_values
from gifting.ledger import Ledger
from gifting.payments import CheckoutService
from gifting.plans import Leg, Plan
from gifting.policy import SalesPolicy
from gifting.pricing import Quote, quote
from gifting.sales import Publisher, SalesService, sale_is_open
from gifting.seat_gate import SeatGate, Take
from rooms.engine import EngineUnavailable, now_ms
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity
from rooms.service import Room, RoomStatus
from rooms.tables import autocommit

log = logging.getLogger(__name__)

PROVIDER_REFUND_TIMEOUT_S = 30.0
REFUND_RETRY_MAX_S = 3600.0

DAY_MS = 86_400_000
#: Order fields the buyer and staff see.
PUBLIC = (
    "id",
    "buyer",
    "buyer_name",
    "key",
    "room_id",
    "course_id",
    "sale_id",
    "list_price_minor",
    "discount_minor",
    "amount_minor",
    "currency",
    "method",
    "status",
    "refunded_minor",
    "refund_days",
    "refund_max_consumed_pct",
    "created_at",
    "expires_at",
    "paid_at",
    "closed_at",
)


@dataclass(frozen=True)
class BuyRequest:
    """A student's buy: the idempotency key makes repeating it return the same order."""

    course_id: str
    method: str
    key: str
    coupon_id: str | None = None
    accept_refund_policy: bool = False

    def body_hash(self) -> str:
        body = {"course": self.course_id, "method": self.method, "coupon": self.coupon_id}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def already_owned() -> RoomError:
    return RoomError("already_owned", "you already own this course")


def public(order: dict[str, Any]) -> dict[str, Any]:
    return {k: order[k] for k in PUBLIC}


class OrderService:
    """Buying, paying, expiring and refunding course orders."""

    def __init__(
        self,
        db: AsyncEngine,
        ledger: Ledger,
        catalogue: Catalogue,
        coupons: CouponService,
        sales: SalesService,
        gate: SeatGate,
        checkouts: CheckoutService,
        webhooks: HostWebhooks,
        policy: SalesPolicy,
        notify: Publisher,
    ) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.ledger = ledger
        self.catalogue = catalogue
        self.coupons = coupons
        self.sales = sales
        self.gate = gate
        self.checkouts = checkouts
        self.webhooks = webhooks
        self.policy = policy
        self.notify = notify
        self._dialect = postgresql if db.dialect.name == "postgresql" else sqlite
        e = t.entitlements
        grant = self._dialect.insert(e)
        #: Rows of a wallet purchase (gifting/batch_writes.py): any UNIQUE index refusing the order (the same
        #: key, a second order in the sale) refuses it with ``conflict``; an active entitlement refuses the grant.
        self._order_row = self._dialect.insert(t.orders).on_conflict_do_nothing()
        self._grant_row = grant.on_conflict_do_update(
            index_elements=["user_id", "course_id"],
            set_={
                "order_id": grant.excluded.order_id,
                "status": "active",
                "consumed_pct": 0,
                "granted_at": grant.excluded.granted_at,
                "revoked_at": None,
            },
            where=e.c.status == "revoked",
        )
        self._webhook_row = insert(t.host_webhooks)
        self._sellable_reads: dict[tuple[str, str], asyncio.Future[Course]] = {}
        #: Provider refunds that failed: how often, and when to try each again (this process's back-off).
        self._refund_backoff: dict[str, tuple[int, float]] = {}
        #: Seats of expired orders the gate could not take back (Redis was down): given back next round.
        self._give_back_later: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._key_lookups: list[tuple[str, str, asyncio.Future[dict[str, Any] | None]]] = []
        self._key_reader: asyncio.Task[None] | None = None

    # buying
    async def buy(
        self, buyer: Identity, room: Room, request: BuyRequest, card: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Place an order for a course the room sells; ``card`` is the room's sales state as this instance
        knows it (a flash sale on the course applies while it is open)."""
        if not buyer.grants.buy:
            raise forbidden("buying courses")
        if buyer.minor:
            raise RoomError("minor", "spending is turned off for this account")
        if room.status is RoomStatus.ENDED:
            raise RoomError("room_ended", "this lesson has ended")
        if request.method not in ("wallet", "checkout"):
            raise RoomError("invalid", "method is wallet or checkout")
        if not request.accept_refund_policy:
            raise RoomError("policy_not_accepted", "accept the course's refund policy to buy it")
        now = now_ms()
        sale = (card or {}).get("sale")
        if not (sale_is_open(sale, now) and sale is not None and sale["course_id"] == request.course_id):
            return await self._buy(buyer, room, request, None)
        # A flash sale: the gate first, so the buyers who get no seat cost no SQL.
        taken = await self.gate.take(sale["id"], buyer.user_id, 1)
        if taken.outcome is Take.MISSING:
            await self.sales.ensure_gate(sale["id"])
            taken = await self.gate.take(sale["id"], buyer.user_id, 1)
        if taken.outcome is Take.SOLD_OUT:
            raise RoomError("sold_out", "every seat of this sale is taken", seats_left=0)
        if taken.outcome is Take.HOLDING:
            existing = await self._by_key(buyer.user_id, request.key)
            if existing is not None:
                return self._replay(existing, request)
            raise RoomError("limit_reached", "you already have an order in this sale")
        self.sales.seats_changed(room.id, sale["id"])
        try:
            # No look-up of the key first: the gate says the buyer holds no order in the sale, and an order
            # already stored under this key makes the new one conflict, which answers it (see _buy).
            answer = await self._buy(buyer, room, request, sale, seek_key=False)
        except BaseException:
            await self.gate.give_back(sale["id"], buyer.user_id)
            raise
        if answer.get("replayed"):
            await self.gate.give_back(sale["id"], buyer.user_id)  # an earlier (expired) order: no seat taken
        return answer

    async def _buy(
        self, buyer: Identity, room: Room, request: BuyRequest, sale: dict[str, Any] | None, seek_key: bool = True
    ) -> dict[str, Any]:
        if seek_key:
            existing = await self._by_key(buyer.user_id, request.key)
            if existing is not None:
                return self._replay(existing, request)
        course = await self._sellable(room.id, request.course_id)
        teacher = course.teacher_id or room.teacher_id
        if teacher is None:
            raise RoomError("no_teacher", "this room has no teacher to receive the payment yet")
        if teacher == buyer.user_id:
            raise RoomError("invalid", "you cannot buy your own course")
        rate = self.policy.coin_rate(course.currency)
        if rate is None:
            raise RoomError("unsupported_currency", f"{course.currency} cannot be paid here (LIVE_COIN_RATES)")
        coupon, claim_id = None, None
        if request.coupon_id is not None:
            coupon, claim_id = await self.coupons.unused_claim(buyer.user_id, request.coupon_id)
            if coupon["course_id"] not in (None, course.id) or coupon["currency"] not in (None, course.currency):
                raise RoomError("coupon_not_applicable", "this coupon does not apply to this course")
        price = quote(
            course.price_minor,
            member_price=course.member_price_minor,
            is_member=buyer.is_member,
            sale_price=sale["price_minor"] if sale is not None else None,
            coupon=coupon,
        )
        now = now_ms()
        order = {
            "id": "ord_" + secrets.token_hex(8),
            "buyer": buyer.user_id,
            "buyer_name": buyer.name,
            "key": request.key,
            "body_hash": request.body_hash(),
            "room_id": room.id,
            "course_id": course.id,
            "sale_id": sale["id"] if sale is not None else None,
            "claim_id": claim_id,
            "teacher_id": teacher,
            "teacher_share_bp": self.policy.teacher_share_bp,
            "list_price_minor": price.list_price,
            "discount_minor": price.discount,
            "amount_minor": price.amount,
            "currency": course.currency,
            "method": request.method,
            "coins_per_minor": rate,
            "checkout_id": None,
            "payment_ref": None,
            "refunded_minor": 0,
            "refund_days": course.refund_days,
            "refund_max_consumed_pct": course.refund_max_consumed_pct,
            "created_at": now,
            "paid_at": None,
            "closed_at": None,
        }
        try:
            if request.method == "wallet" or price.amount == 0:
                order.update(method="wallet", status="paid", paid_at=now, expires_at=now)
                await self._pay_from_wallet(order, course, price)
                answer = {"order": public(order), "quote": price.to_dict()}
            else:
                order.update(status="pending", expires_at=now + self.policy.order_hold_s * 1000)
                await self._hold_seat(order, course)
                answer = {
                    "order": public(order),
                    "quote": price.to_dict(),
                    **await self.checkouts.start_course_checkout(order, course.title),
                }
        except RoomError as exc:
            if exc.code not in ("conflict", "already_owned"):
                raise
            # The same key sent twice at once: the first order is the answer to both.
            existing = await self._by_key(buyer.user_id, request.key)
            if existing is not None:
                return self._replay(existing, request)
            if exc.code == "already_owned":
                raise
            # A UNIQUE index refused the order: a second order in the sale.
            raise RoomError("limit_reached", "you already have an order in this sale") from None
        self._spawn(self._announce(order))  # the answer need not wait for the feed
        return answer

    async def _sellable(self, room_id: str, course_id: str) -> Course:
        """``Catalogue.sellable``, read once for all the buys that ask while a read is out (the buyers of a
        flash sale arrive together): each gets an answer read after it asked, or at most one read older."""
        key = (room_id, course_id)
        read = self._sellable_reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self.catalogue.sellable(room_id, course_id))
            self._sellable_reads[key] = read
            read.add_done_callback(lambda _: self._sellable_reads.pop(key, None))
        return await asyncio.shield(read)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _seat_guards(self, order: dict[str, Any], course: Course) -> list[tuple[Executable, RoomError]]:
        """The seats and the coupon claim an order takes, as guards of its own (a pending order's hold)."""
        guards: list[tuple[Executable, RoomError]] = [
            (count_update([count]), count.error) for count in self._seat_counts(order, course)
        ]
        if order["claim_id"] is not None:
            guards.append(self._claim_guard(order))
        return guards

    @staticmethod
    def _claim_guard(order: dict[str, Any]) -> tuple[Executable, RoomError]:
        cc = t.coupon_claims
        return (
            update(cc).where(cc.c.id == order["claim_id"], cc.c.order_id.is_(None)).values(order_id=order["id"]),
            RoomError("coupon_used", "that coupon claim was used on another order"),
        )

    def _grant(self, order: dict[str, Any], now: int) -> tuple[Executable, RoomError]:
        """The entitlement, as a guard: it changes a row only if the buyer does not own the course."""
        return self._grant_row.values(**self._grant_values(order, now)), already_owned()

    @staticmethod
    def _grant_values(order: dict[str, Any], now: int) -> dict[str, Any]:
        return {
            "user_id": order["buyer"],
            "course_id": order["course_id"],
            "order_id": order["id"],
            "status": "active",
            "consumed_pct": 0,
            "granted_at": now,
            "revoked_at": None,
        }

    def _paid_webhooks(self, order: dict[str, Any], now: int) -> list[Executable]:
        return [insert(t.host_webhooks).values(**values) for values in self._paid_webhook_values(order, now)]

    def _legs(self, order: dict[str, Any], payer: str) -> list[Leg]:
        coins = order["amount_minor"] * order["coins_per_minor"]
        shares = [
            (acct.earnings(order["teacher_id"]), order["teacher_share_bp"]),
            (acct.PLATFORM, 10_000 - order["teacher_share_bp"]),
        ]
        return [Leg(payer, to, amount) for to, amount in acct.split(coins, shares)] if coins else []

    def _seat_counts(self, order: dict[str, Any], course: Course) -> list[Count]:
        """The seats an order takes, as counters: a wallet purchase's ledger batch adds them up and writes each
        once; a pending order writes its own (:meth:`_seat_guards`)."""
        counts = []
        if order["sale_id"] is not None:
            counts.append(
                Count(
                    t.flash_sales,
                    order["sale_id"],
                    "seats_taken",
                    "seats",
                    1,
                    RoomError("sold_out", "every seat of this sale is taken", seats_left=0),
                    window=("opens_at", "ends_at"),
                    at=order["created_at"],
                    unset=("stopped_at",),
                )
            )
        if course.seats is not None:
            counts.append(
                Count(
                    t.courses,
                    course.id,
                    "seats_taken",
                    "seats",
                    1,
                    RoomError("sold_out", "every seat of this course is taken", seats_left=0),
                )
            )
        return counts

    def _paid_rows(self, order: dict[str, Any], now: int) -> list[Row]:
        """The order, the entitlement and the host webhooks of a wallet purchase."""
        grant = self._grant_values(order, now)
        conflict = RoomError("conflict", "this order conflicts with another")
        return [
            Row(self._order_row, order, key=("id",), error=conflict),
            Row(self._grant_row, grant, key=("user_id", "course_id"), error=already_owned()),
            *(Row(self._webhook_row, values) for values in self._paid_webhook_values(order, now)),
        ]

    @staticmethod
    def _paid_webhook_values(order: dict[str, Any], now: int) -> list[dict[str, Any]]:
        """The rows :meth:`_paid_webhooks` inserts, as values: a batch inserts them all in one statement."""
        entitlement = {"user_id": order["buyer"], "course_id": order["course_id"], "order_id": order["id"]}
        return [
            webhook_values("order.paid", public(order), now),
            webhook_values("entitlement.granted", entitlement, now),
        ]

    async def _pay_from_wallet(self, order: dict[str, Any], course: Course, price: Quote) -> None:
        now = order["created_at"]
        claims = [self._claim_guard(order)] if order["claim_id"] is not None else []
        plan = Plan(
            key=f"order:{order['id']}",
            kind="course",
            body={"order": order["id"], "coins": order["amount_minor"] * order["coins_per_minor"]},
            actor=order["buyer"],
            actor_name=order["buyer_name"],
            room_id=order["room_id"],
            legs=self._legs(order, acct.wallet(order["buyer"])),
            guards=claims,  # the coupon claim: a row of this buyer's
            result={"order": order["id"]},
        )
        await self.ledger.submit(plan, rows=self._paid_rows(order, now), counts=self._seat_counts(order, course))
        self.webhooks.wake()

    async def _hold_seat(self, order: dict[str, Any], course: Course) -> None:
        """A pending order: its seat and coupon claim are taken now, its money comes by webhook."""
        await self._require_not_owned(order["buyer"], course.id)
        async with self.db.begin() as conn:
            try:
                await conn.execute(insert(t.orders).values(**order))
            except IntegrityError:  # a UNIQUE index: see _buy
                raise RoomError("conflict", "this order conflicts with another") from None
            for statement, error in self._seat_guards(order, course):
                if (await conn.execute(statement)).rowcount != 1:
                    raise error

    async def _require_not_owned(self, user_id: str, course_id: str) -> None:
        e = t.entitlements
        async with self.reads.connect() as conn:
            row = (
                await conn.execute(select(e.c.status).where(e.c.user_id == user_id, e.c.course_id == course_id))
            ).first()
        if row is not None and row.status == "active":
            raise RoomError("already_owned", "you already own this course")

    async def fulfil_checkout(self, checkout: dict[str, Any], payment_ref: str | None) -> str:
        """The provider's verified webhook says the order's checkout is paid."""
        order = await self.get(str(checkout["order_id"]))
        if order is None:
            raise RoomError("not_found", "the checkout pays no order")
        now = now_ms()
        o = t.orders
        paid = {**order, "status": "paid", "paid_at": now, "payment_ref": payment_ref}
        plan = Plan(
            key=f"order:{order['id']}",
            kind="course",
            body={"order": order["id"], "coins": order["amount_minor"] * order["coins_per_minor"]},
            actor="webhook",
            room_id=order["room_id"],
            legs=self._legs(order, acct.world(checkout["provider"])),
            guards=[
                (
                    update(o)
                    .where(o.c.id == order["id"], o.c.status == "pending")
                    .values(status="paid", paid_at=now, payment_ref=payment_ref),
                    RoomError("order_expired", "the order expired before its payment arrived"),
                ),
                self._grant(order, now),
            ],
            effects=self._paid_webhooks(paid, now),
            result={"order": order["id"]},
        )
        try:
            outcome = await self.ledger.submit(plan)
        except RoomError as exc:
            if exc.code not in ("order_expired", "already_owned"):
                raise
            # Paid too late (or twice over): the money goes straight back the way it came.
            log.warning("order %s paid after it %s; refunding the payment", order["id"], exc.code)
            if payment_ref is not None:
                await self.checkouts.provider.refund(payment_ref, order["amount_minor"], f"late-{order['id']}")
            return "refunded_late"
        self.webhooks.wake()
        if not outcome.replayed:
            await self._announce(paid)
        return "duplicate" if outcome.replayed else "paid"

    # expiry
    async def expire_due(self, limit: int = 200) -> int:
        """Expire pending orders past their time: each gives back its seat and its coupon claim."""
        o = t.orders
        async with self.reads.connect() as conn:
            due = [
                dict(r._mapping)
                for r in await conn.execute(
                    select(o).where(o.c.status == "pending", o.c.expires_at <= now_ms()).limit(limit)
                )
            ]
        for sale_id, buyer, room_id in list(self._give_back_later):
            await self._give_back(sale_id, buyer, room_id)
        expired = 0
        for order in due:
            if await self._expire(order):
                expired += 1
        return expired

    async def _give_back(self, sale_id: str, buyer: str, room_id: str) -> None:
        """The gate's seat of an order that ended unpaid; kept for the next round if Redis is down (the SQL
        seat count, the truth, was given back already)."""
        try:
            await self.gate.give_back(sale_id, buyer)
        except EngineUnavailable:
            log.warning("seat of %s in sale %s not given back to the gate yet; retrying", buyer, sale_id)
            self._give_back_later.add((sale_id, buyer, room_id))
            return
        self._give_back_later.discard((sale_id, buyer, room_id))
        self.sales.seats_changed(room_id, sale_id)

    async def _expire(self, order: dict[str, Any]) -> bool:
        o, s, c, cc = t.orders, t.flash_sales, t.courses, t.coupon_claims
        now = now_ms()
        async with self.db.begin() as conn:
            done = await conn.execute(
                update(o).where(o.c.id == order["id"], o.c.status == "pending").values(status="expired", closed_at=now)
            )
            if done.rowcount != 1:
                return False  # paid or expired meanwhile
            if order["sale_id"] is not None:
                await conn.execute(update(s).where(s.c.id == order["sale_id"]).values(seats_taken=s.c.seats_taken - 1))
            await conn.execute(
                update(c)
                .where(c.c.id == order["course_id"], c.c.seats.is_not(None))
                .values(seats_taken=c.c.seats_taken - 1)
            )
            await conn.execute(update(cc).where(cc.c.order_id == order["id"]).values(order_id=None))
        if order["sale_id"] is not None:
            await self._give_back(order["sale_id"], order["buyer"], order["room_id"])
        await self._announce({**order, "status": "expired", "closed_at": now})
        return True

    # refunds
    async def refund(
        self, actor: Identity | None, order_id: str, amount_minor: int | None, reason: str, key: str
    ) -> dict[str, Any]:
        """Refund an order. A student may refund their own order, in full, within the policy they accepted;
        staff of the order's room and the admin API (``actor`` None) any paid order, in part or in full.
        The money goes back the way it came: to the wallet, or through the payment provider."""
        order = await self.get(order_id)
        if order is None:
            raise RoomError("not_found", "no such order")
        if actor is not None and actor.room_id != order["room_id"]:
            raise RoomError("not_found", "no such order")
        plan_key = f"refund:{order_id}:{key}"
        done = await self.ledger.result_of(plan_key)
        if done is not None:  # this refund was made: the same answer, nothing refunded twice
            if amount_minor is not None and amount_minor != done.get("amount_minor"):
                raise RoomError("idempotency_mismatch", "this idempotency key was used for a different refund")
            return {"order": public(order), "refund": done.get("refund"), "replayed": True}
        reason = reason.strip()
        if not 1 <= len(reason) <= 500:
            raise RoomError("invalid", "a refund needs a reason of 1-500 characters")
        if order["status"] != "paid":
            raise RoomError("invalid_state", f"the order is {order['status']}", status=order["status"])
        remaining = order["amount_minor"] - order["refunded_minor"]
        if amount_minor is None:
            amount_minor = remaining
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
            raise RoomError("bad_amount", "a refund is a positive whole number of minor units")
        if amount_minor > remaining:
            raise RoomError("refund_exceeds_paid", f"at most {remaining} can still be refunded", refundable=remaining)
        if actor is not None and not actor.is_staff:
            await self._check_student_refund(actor, order, amount_minor)
        refund_id = "rfd_" + secrets.token_hex(8)
        through_provider = order["method"] == "checkout" and bool(order["payment_ref"])
        before, after = order["refunded_minor"], order["refunded_minor"] + amount_minor
        full = after == order["amount_minor"]
        now = now_ms()
        o, e = t.orders, t.entitlements
        status = "refunded" if full else "paid"
        effects: list[Executable] = [
            insert(t.refunds).values(
                id=refund_id,
                order_id=order_id,
                amount_minor=amount_minor,
                reason=reason,
                actor=actor.user_id if actor is not None else "admin",
                status="pending" if through_provider else "done",
                created_at=now,
            ),
            webhook_row(
                "order.refunded",
                {
                    **public(order),
                    "status": status,
                    "refunded_minor": after,
                    "refund": {"id": refund_id, "amount_minor": amount_minor, "reason": reason},
                },
                now,
            ),
        ]
        if full:
            effects.append(
                update(e)
                .where(e.c.user_id == order["buyer"], e.c.course_id == order["course_id"], e.c.order_id == order_id)
                .values(status="revoked", revoked_at=now)
            )
        payer = acct.wallet(order["buyer"]) if order["method"] == "wallet" else acct.world(self.checkouts.provider.name)
        legs = self._refund_legs(order, before, after, payer)
        plan = Plan(
            key=plan_key,
            kind="refund",
            body={"order": order_id, "amount": amount_minor},
            actor=actor.user_id if actor is not None else "admin",
            room_id=order["room_id"],
            legs=legs,
            guards=[
                (
                    update(o)
                    .where(o.c.id == order_id, o.c.status == "paid", o.c.refunded_minor == before)
                    .values(refunded_minor=after, status=status, closed_at=now if full else None),
                    RoomError("conflict", "the order changed meanwhile; try again"),
                )
            ],
            effects=effects,
            reason=reason,
            result={"order": order_id, "refund": refund_id, "amount_minor": amount_minor},
        )
        outcome = await self.ledger.submit(plan)
        if not outcome.replayed and through_provider:
            await self._refund_at_provider(refund_id, order["payment_ref"], amount_minor)
        self.webhooks.wake()
        updated = await self.get(order_id)
        assert updated is not None
        if not outcome.replayed:
            await self._announce(updated)
        return {"order": public(updated), "refund": outcome.result.get("refund"), "replayed": outcome.replayed}

    async def _refund_at_provider(self, refund_id: str, payment_ref: str, amount_minor: int) -> bool:
        """Pay a recorded refund back through the payment provider (under the refund's own idempotency key,
        so a retry never pays twice); the refund row says whether it went through."""
        r = t.refunds
        try:
            call = self.checkouts.provider.refund(payment_ref, amount_minor, f"refund-{refund_id}")
            await asyncio.wait_for(call, PROVIDER_REFUND_TIMEOUT_S)
            status = "done"
        except Exception:
            log.exception("provider refund %s failed; retried later", refund_id)
            status = "failed"
            tries = self._refund_backoff.get(refund_id, (0, 0.0))[0] + 1
            self._refund_backoff[refund_id] = (tries, time.monotonic() + min(REFUND_RETRY_MAX_S, 30 * 2 ** (tries - 1)))
        async with self.db.begin() as conn:
            await conn.execute(update(r).where(r.c.id == refund_id).values(status=status))
        if status == "done":
            self._refund_backoff.pop(refund_id, None)
        return status == "done"

    async def retry_refunds(self, older_than_ms: int = 30_000, limit: int = 50) -> int:
        """Refunds recorded in the ledger whose payment back through the provider failed (or was cut short):
        tried again, each after a back-off that doubles from 30 s to an hour. Returns how many went through."""
        r, o = t.refunds, t.orders
        cutoff = now_ms() - older_than_ms
        async with self.reads.connect() as conn:
            due = (
                await conn.execute(
                    select(r.c.id, r.c.amount_minor, o.c.payment_ref)
                    .join(o, o.c.id == r.c.order_id)
                    .where(r.c.status.in_(("pending", "failed")), r.c.created_at <= cutoff)
                    .order_by(r.c.created_at)
                    .limit(limit + len(self._refund_backoff))  # those backing off are skipped below
                )
            ).all()
        done = 0
        now = time.monotonic()
        for refund_id, amount_minor, payment_ref in due:
            if self._refund_backoff.get(refund_id, (0, 0.0))[1] > now:
                continue
            if payment_ref and await self._refund_at_provider(refund_id, payment_ref, int(amount_minor)):
                done += 1
        return done

    async def _check_student_refund(self, student: Identity, order: dict[str, Any], amount_minor: int) -> None:
        if student.user_id != order["buyer"]:
            raise RoomError("not_found", "no such order")
        if order["refunded_minor"] or amount_minor != order["amount_minor"]:
            raise RoomError("invalid", "students refund a whole order; ask staff for anything else")
        if now_ms() > order["paid_at"] + order["refund_days"] * DAY_MS:
            raise RoomError("refund_window_closed", f"refunds are possible within {order['refund_days']} days")
        e = t.entitlements
        async with self.reads.connect() as conn:
            consumed = (
                await conn.execute(
                    select(e.c.consumed_pct).where(e.c.user_id == order["buyer"], e.c.course_id == order["course_id"])
                )
            ).scalar() or 0
        if consumed > order["refund_max_consumed_pct"]:
            raise RoomError(
                "refund_window_closed",
                f"refunds are possible until {order['refund_max_consumed_pct']}% of the course is consumed",
            )

    @staticmethod
    def _refund_legs(order: dict[str, Any], before: int, after: int, payer: str) -> list[Leg]:
        """Back to ``payer`` from the teacher and the platform: what the cumulative refund's split adds."""
        rate = order["coins_per_minor"]
        shares = [
            (acct.earnings(order["teacher_id"]), order["teacher_share_bp"]),
            (acct.PLATFORM, 10_000 - order["teacher_share_bp"]),
        ]
        was = dict(acct.split(before * rate, shares)) if before else {}
        now = dict(acct.split(after * rate, shares))
        parts = {a: now.get(a, 0) - was.get(a, 0) for a, _ in shares}
        # Rounding can move a unit between the two parts; keep every leg positive.
        low = min(parts, key=lambda a: parts[a])
        if parts[low] < 0:
            high = max(parts, key=lambda a: parts[a])
            parts[high] += parts[low]
            parts[low] = 0
        return [Leg(a, payer, amount) for a, amount in parts.items() if amount > 0]

    # reads
    async def get(self, order_id: str) -> dict[str, Any] | None:
        async with self.reads.connect() as conn:
            row = (await conn.execute(select(t.orders).where(t.orders.c.id == order_id))).first()
        return dict(row._mapping) if row is not None else None

    async def _by_key(self, buyer: str, key: str) -> dict[str, Any] | None:
        """The buyer's order under this key. The look-ups asked for while a read is out go together in the
        next read (a flash sale's second attempts arrive by the hundred): one query and one connection."""
        found: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._key_lookups.append((buyer, key, found))
        if self._key_reader is None:
            self._key_reader = asyncio.create_task(self._read_keys(), name="order-keys")
        return await found

    async def _read_keys(self) -> None:
        o = t.orders
        try:
            while self._key_lookups:
                batch, self._key_lookups = self._key_lookups[:500], self._key_lookups[500:]
                pairs = list({(b, k) for b, k, _ in batch})
                wanted: Any = pairs
                if self._dialect is postgresql:  # the same SQL for any number of pairs: one prepared statement
                    buyers, keys = (literal([p[i] for p in pairs], ARRAY(Text)) for i in (0, 1))
                    wanted = select(func.unnest(buyers), func.unnest(keys))
                try:
                    async with self.reads.connect() as conn:
                        query = select(o).where(tuple_(o.c.buyer, o.c.key).in_(wanted))
                        rows = {(r.buyer, r.key): dict(r._mapping) for r in await conn.execute(query)}
                except Exception as exc:
                    for *_, found in batch:
                        if not found.done():
                            found.set_exception(exc)
                    continue
                for buyer, key, found in batch:
                    if not found.done():
                        found.set_result(rows.get((buyer, key)))
        finally:
            self._key_reader = None

    @staticmethod
    def _replay(order: dict[str, Any], request: BuyRequest) -> dict[str, Any]:
        if order["body_hash"] != request.body_hash():
            raise RoomError("idempotency_mismatch", "this idempotency key was used for a different request")
        return {"order": public(order), "replayed": True}

    async def list(
        self, *, room_id: str | None = None, buyer: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        o = t.orders
        query = select(o).order_by(o.c.created_at.desc()).limit(limit)
        if room_id is not None:
            query = query.where(o.c.room_id == room_id)
        if buyer is not None:
            query = query.where(o.c.buyer == buyer)
        async with self.reads.connect() as conn:
            return [public(dict(r._mapping)) for r in await conn.execute(query)]

    async def _announce(self, order: dict[str, Any]) -> None:
        """Staff see every order arrive (their feed) and the buyer their own: a ``sales:order`` event to
        those connections only, not a numbered room event (one per order to every member of a crowded
        room, even as a skip, cost more than the sale itself). Orders themselves are read with
        ``orders:list``."""
        try:
            await self.notify(order["room_id"], "sales:order", {"order": public(order)})
        except Exception:
            log.exception("sales:order of %s not sent (the order itself is stored)", order["id"])
