"""Gifts and tips in a room: checks who may pay whom, then one ledger operation each."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from gifting import accounts as acct
from gifting import operations as ops
from gifting import tables as t
from gifting.ledger import Ledger
from gifting.plans import Outcome
from gifting.policy import GiftPolicy
from rooms.engine import Engine, now_ms
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity
from rooms.service import Room

BOARD_SIZE = 10
#: The room event that announces each kind of payment.
EVENTS = {"gift": "gift.sent", "tip": "tip.sent", "paid_message": "message.paid"}
BOARD_CACHE_S = 2.0


class GiftService:
    """Sending gifts and tips, and reading wallets."""

    def __init__(self, ledger: Ledger, policy: GiftPolicy, engine: Engine) -> None:
        self.ledger = ledger
        self.policy = policy
        self.engine = engine
        self._boards: dict[tuple[str, int | None], tuple[float, list[dict[str, Any]]]] = {}

    def _payee(self, sender: Identity, room: Room) -> str:
        if not sender.grants.gift:
            raise forbidden("sending gifts")
        if sender.minor:
            raise RoomError("minor", "spending is turned off for this account")
        if room.teacher_id is None:
            raise RoomError("no_teacher", "this room has no teacher to receive gifts yet")
        if room.teacher_id == sender.user_id:
            raise RoomError("invalid", "you cannot send gifts to yourself")
        return room.teacher_id

    async def send_gift(self, sender: Identity, room: Room, gift_id: str, count: int, key: str) -> dict[str, Any]:
        """Pay for ``count`` of a catalogue gift; the room sees a ``gift.sent`` event."""
        teacher = self._payee(sender, room)
        gift = self.policy.gift(gift_id)
        if gift is None:
            raise RoomError("unknown_gift", f"no gift {gift_id[:32]!r} in the catalogue")
        if not 1 <= count <= self.policy.max_count:
            raise RoomError("bad_amount", f"send 1 to {self.policy.max_count} gifts at a time")
        # Bilibili's combo: the same gift from the same user again within the window grows one combo.
        streak_key = f"combo:{room.id}:{sender.user_id}:{gift.id}"
        combo = await self.engine.streak(streak_key, count, self.policy.combo_window_ms)
        event = {
            "from": {"user_id": sender.user_id, "name": sender.name},
            "gift": {"id": gift.id, "name": gift.name, "tier": gift.tier},
            "count": count,
            "combo": combo,
        }
        try:
            outcome = await self._pay(sender, teacher, room, "gift", key, gift.coins * count, event, gift=gift.id)
        except BaseException:
            await self.engine.streak(streak_key, -count, self.policy.combo_window_ms)
            raise
        if outcome.replayed:
            await self.engine.streak(streak_key, -count, self.policy.combo_window_ms)
        result = {**outcome.result, "gift": event["gift"], "count": count, "replayed": outcome.replayed}
        return {**result, "combo": combo} if not outcome.replayed else result

    async def send_message(self, sender: Identity, room: Room, text: str, coins: int, key: str) -> dict[str, Any]:
        """A paid highlighted message (Super Chat): its tier (colour, pin time, length) grows with coins."""
        teacher = self._payee(sender, room)
        tier = self.policy.tier(coins) if isinstance(coins, int) and not isinstance(coins, bool) else None
        if tier is None:
            raise RoomError("bad_amount", f"a paid message is at least {self.policy.tiers[0].min_coins} coins")
        text = text.strip()
        if not text:
            raise RoomError("invalid", "the message is empty")
        if len(text) > tier.max_chars:
            raise RoomError("too_long", f"{coins} coins allow {tier.max_chars} characters", max_chars=tier.max_chars)
        event = {
            "from": {"user_id": sender.user_id, "name": sender.name},
            "text": text,
            "tier": {"level": tier.level, "colour": tier.colour, "pin_s": tier.pin_s},
        }
        outcome = await self._pay(sender, teacher, room, "paid_message", key, coins, event, text=text)
        return {**outcome.result, "tier": event["tier"], "replayed": outcome.replayed}

    async def send_tip(self, sender: Identity, room: Room, coins: int, key: str, message: str | None) -> dict[str, Any]:
        """A free amount to the teacher, with an optional short message."""
        teacher = self._payee(sender, room)
        text = (message or "").strip() or None
        event: dict[str, Any] = {"from": {"user_id": sender.user_id, "name": sender.name}, "message": text}
        outcome = await self._pay(sender, teacher, room, "tip", key, coins, event, message=text)
        return {**outcome.result, "replayed": outcome.replayed}

    async def _pay(
        self,
        sender: Identity,
        teacher: str,
        room: Room,
        kind: str,
        key: str,
        coins: int,
        event: dict[str, Any],
        **body: Any,
    ) -> Outcome:
        """One payment to the teacher and the platform, announced to the room as ``EVENTS[kind]``;
        ``body`` (with the amount) is what the idempotency key must always come with."""
        plan = ops.payment(
            f"{kind}:{sender.user_id}:{key}",
            kind,
            sender.user_id,
            teacher,
            coins,
            room.id,
            teacher_share_bp=self.policy.teacher_share_bp,
            payer_name=sender.name,
            body=body,
            events=[(EVENTS[kind], event)],
        )
        return await self.ledger.submit(plan)

    # paid questions (rooms.qa.QuestionPayments)
    async def hold(self, asker: Identity, room: Room, question_id: str, coins: int) -> None:
        """Set the question's coins aside from the asker's wallet."""
        self._payee(asker, room)
        expires_at = now_ms() + self.policy.hold_ttl_s * 1000
        plan = ops.hold(
            f"qa-hold:{question_id}", question_id, asker.user_id, coins, expires_at, room.id, f"question:{question_id}"
        )
        await self.ledger.submit(plan)

    async def settle(self, room: Room, question_id: str, answered: bool) -> None:
        """Answered: the coins go to the teacher (and the platform's share). Otherwise back to the asker."""
        if answered and room.teacher_id is not None:
            share = self.policy.teacher_share_bp
            plan = ops.capture(f"qa-capture:{question_id}", question_id, room.teacher_id, "qa", share)
        else:
            plan = ops.release(f"qa-release:{question_id}", question_id, "qa")
        try:
            await self.ledger.submit(plan)
        except RoomError as exc:
            if exc.code not in ("hold_closed", "not_found"):
                raise  # a closed hold was settled before: nothing more to do

    async def release_room(self, room_id: str) -> int:
        """Give back the coins of every question of the room still held (the lesson ended)."""
        return await self._release(t.holds.c.room_id == room_id, expired=False)

    async def expire_holds(self) -> int:
        """Give back the coins of holds past their expiry (a backstop for rooms never ended)."""
        return await self._release(t.holds.c.expires_at <= now_ms(), expired=True)

    async def _release(self, condition: Any, expired: bool) -> int:
        h = t.holds
        async with self.ledger.reads.connect() as conn:
            ids = [r[0] for r in await conn.execute(select(h.c.id).where(condition, h.c.status == "held").limit(1000))]
        released = 0
        for hold_id in ids:
            key = f"hold-expire:{hold_id}" if expired else f"qa-release:{hold_id}"
            try:
                await self.ledger.submit(ops.release(key, hold_id, "system", expired=expired))
                released += 1
            except RoomError as exc:
                if exc.code != "hold_closed":
                    raise
        return released

    async def wallet(self, user_id: str) -> dict[str, int]:
        """The user's spendable coins, coins held for paid questions, and earnings (teachers)."""
        names = {"balance": acct.wallet(user_id), "held": acct.held(user_id), "earnings": acct.earnings(user_id)}
        balances = await self.ledger.balances(list(names.values()))
        return {name: balances.get(account_id, 0) for name, account_id in names.items()}

    async def room_totals(self, room_id: str) -> dict[str, int]:
        """Coins paid in the room: by gifts and tips, and what went to the teacher and the platform."""
        tr = t.transfers
        query = (
            select(tr.c.kind, tr.c.credit, func.sum(tr.c.amount), func.count(func.distinct(tr.c.op_key)))
            .where(tr.c.room_id == room_id, tr.c.kind.in_(("gift", "tip", "paid_message")))
            .group_by(tr.c.kind, tr.c.credit)
        )
        totals = {"gifts": 0, "tips": 0, "teacher": 0, "platform": 0, "payments": 0}
        async with self.ledger.reads.connect() as conn:
            for kind, credit, amount, _count in await conn.execute(query):
                totals["gifts" if kind == "gift" else "tips"] += int(amount)
                totals["platform" if credit == acct.PLATFORM else "teacher"] += int(amount)
            count = select(func.count(func.distinct(tr.c.op_key))).where(
                tr.c.room_id == room_id, tr.c.kind.in_(("gift", "tip", "paid_message"))
            )
            totals["payments"] = int((await conn.execute(count)).scalar() or 0)
        return totals

    async def board(self, room: Room, lesson: bool) -> list[dict[str, Any]]:
        """The room's top 10 contributors (gifts, tips, paid messages; reversed ones left out), over the
        room's whole life or this lesson (since it went live); users who opted out are not shown."""
        since = room.started_at if lesson and room.started_at else None
        cache_key = (room.id, since)
        cached = self._boards.get(cache_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        tr, op, ws = t.transfers, t.operations, t.spending_limits
        reversed_ = select(tr.c.reverses).where(tr.c.reverses.is_not(None)).scalar_subquery()
        coins = func.sum(tr.c.amount).label("coins")
        query = (
            select(op.c.actor, func.max(op.c.actor_name).label("name"), coins)
            .join(op, op.c.key == tr.c.op_key)
            .outerjoin(ws, ws.c.owner == op.c.actor)
            .where(
                tr.c.room_id == room.id,
                tr.c.kind.in_(("gift", "tip", "paid_message")),
                tr.c.id.not_in(reversed_),
                func.coalesce(ws.c.hide_on_boards, False).is_(False),
            )
            .group_by(op.c.actor)
            .order_by(coins.desc(), op.c.actor)
            .limit(BOARD_SIZE)
        )
        if since is not None:
            query = query.where(tr.c.created_at >= since)
        async with self.ledger.reads.connect() as conn:
            rows = [
                {"user_id": r.actor, "name": r.name or r.actor, "coins": int(r.coins)}
                for r in await conn.execute(query)
            ]
        self._boards[cache_key] = (time.monotonic() + BOARD_CACHE_S, rows)
        return rows

    async def set_limits(
        self, user: Identity, per_transfer: int | None, daily: int | None, hide_on_boards: bool = False
    ) -> dict[str, Any]:
        """The user's own spending caps: only lower than the platform's (a value above it is refused)."""
        for value, platform, name in (
            (per_transfer, self.policy.per_transfer_cap, "per_transfer"),
            (daily, self.policy.daily_cap, "daily"),
        ):
            if value is not None and not 1 <= value <= platform:
                raise RoomError("bad_amount", f"{name} must be 1-{platform} coins (the platform's cap)")
        lim = t.spending_limits
        row = {
            "owner": user.user_id,
            "per_transfer": per_transfer,
            "daily": daily,
            "hide_on_boards": hide_on_boards,
            "updated_at": now_ms(),
        }
        dialect = postgresql if self.ledger.db.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(lim)
        stmt = stmt.on_conflict_do_update(
            index_elements=["owner"],
            set_={
                "per_transfer": stmt.excluded.per_transfer,
                "daily": stmt.excluded.daily,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        async with self.ledger.db.begin() as conn:
            await conn.execute(stmt, row)
        self._boards.clear()
        return {
            "per_transfer": per_transfer or self.policy.per_transfer_cap,
            "daily": daily or self.policy.daily_cap,
            "hide_on_boards": hide_on_boards,
        }

    async def reverse(self, op_key: str, reason: str, key: str, actor: str = "admin") -> dict[str, Any]:
        """An admin correction: the operation's transfers all reversed, the reason in the audit log.
        Gifts and tips are refunded only this way."""
        outcome = await self.ledger.submit(ops.reversal(f"reversal:{key}", op_key, actor, reason))
        return {**outcome.result, "replayed": outcome.replayed}

    async def credit(self, user_id: str, coins: int, key: str, source: str = "host") -> dict[str, Any]:
        """Coins paid for outside this server (the host took the payment), once per idempotency key."""
        outcome = await self.ledger.submit(ops.topup(f"credit:{key}", user_id, coins, source, actor=source))
        return {**outcome.result, "replayed": outcome.replayed}
