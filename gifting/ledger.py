"""The double-entry ledger: every movement of coins is an operation of one or more linked transfers.

Rules (DESIGN.md "Money"; TigerBeetle's and Stripe's):
- An operation's transfers all happen or none does; each moves a positive amount between two accounts,
  so the sum over all accounts stays zero (the outside world's accounts go negative by what came in).
- Every operation carries an idempotency key. The same key with the same body returns the first result
  and writes nothing; with another body it is refused (``idempotency_mismatch``). Refused operations are
  not recorded: the caller may retry the key.
- Balances other than the outside world's cannot go negative: checked under lock before writing, and
  enforced by the database (guarded UPDATE and a CHECK constraint).
- Nothing is edited: corrections are reversing transfers, once per transfer (a UNIQUE column).
- Room events about money (an outbox row) are written in the same transaction and published after commit.

Group commit: operations submitted concurrently are applied together, many per database transaction, in
submission order; each is accepted or refused on its own. SQLite transactions take the write lock up front
(``BEGIN IMMEDIATE``). PostgreSQL locks in id order, at the start, the accounts whose balance a check needs
(wallets and held coins, and any account the batch debits); accounts only credited or allowed below zero
(a teacher's earnings, the platform's revenue, the outside world: the rows every sale touches) are locked
at the end, in id order, when their balances are written, so the batches of several instances overlap
everywhere but there. Batches are retried on serialization failures and deadlocks. The transactions run
in a writer thread with its own event loop and connections (gifting/writer_thread.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Text, any_, bindparam, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gifting import accounts as acct
from gifting import tables as t
from gifting.batch_writes import BatchWrites, Count, CountRefused, Row, RowsRefused
from gifting.plans import Caps, Leg, Outcome, Plan
from gifting.writer_thread import WriteConnection, WriterThread
from rooms.engine import now_ms
from rooms.errors import RoomError
from rooms.tables import autocommit

log = logging.getLogger(__name__)

BATCH_MAX = 500
ANNOUNCE_EVERY_S = 0.1
HIGHLIGHTS = 20
RETRIES = 5
DAY_MS = 86_400_000
#: Kinds of account locked before the checks when touched (their owner's balance is shown and checked).
LOCKED_FIRST = frozenset({"wallet", "held"})
#: Kinds of operation an admin reversal may undo: coins given in a room, and coins credited.
REVERSIBLE = frozenset({"gift", "tip", "paid_message", "topup"})

#: Publishes one room event: (room id, type, data).
Publisher = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, error: RoomError) -> None:
        self.error = error


class _GuardsPartlyApplied(_Refused):
    """A plan's later guard refused after an earlier one changed a row: only rolling back the whole
    transaction undoes that, so the batch is applied again one plan at a time."""


@dataclass
class _Pending:
    plan: Plan
    future: asyncio.Future[Outcome]
    rows: tuple[Row, ...] = ()
    counts: tuple[Count, ...] = ()


def insufficient_funds() -> RoomError:
    return RoomError("insufficient_funds", "not enough coins")


class Ledger:
    """Applies :class:`Plan` s; one writer per instance (several instances share the database)."""

    def __init__(self, db: AsyncEngine, caps: Caps, publisher: Publisher | None = None) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.caps = caps
        self.publisher = publisher
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._unpublished: list[dict[str, Any]] = []
        self._announcer: asyncio.Task[None] | None = None
        self._is_pg = db.dialect.name == "postgresql"
        self._thread = WriterThread(db)
        weakref.finalize(self, self._thread.detach)  # a ledger dropped without close() leaves no thread behind
        #: Accounts of kinds not locked first that committed batches wrote (none is ever deleted).
        self._accounts_seen: set[str] = set()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let the operations already submitted commit and their events go out (shutdown)."""
        # The writer first: its last batch may start the announcer.
        for task in (self._writer, self._announcer):
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), timeout_s)
        await self._thread.stop()

    # submitting
    async def submit(self, plan: Plan, *, rows: Sequence[Row] = (), counts: Sequence[Count] = ()) -> Outcome:
        """Apply ``plan`` (with the operations submitted around the same time, in one transaction);
        raises :class:`RoomError` when it is refused, in which case nothing was written. ``rows`` and
        ``counts`` are written with it, each kind once per batch (gifting/batch_writes.py): what an
        operation that thousands of buyers submit at once should use instead of ``effects`` and ``guards``."""
        if not plan.key or len(plan.key) > 160:
            raise RoomError("invalid", "an idempotency key of 1-160 characters is required")
        for leg in plan.legs:
            if acct.kind_of(leg.debit) not in acct.KINDS or acct.kind_of(leg.credit) not in acct.KINDS:
                raise RoomError("invalid", "no such account")
            if not isinstance(leg.amount, int) or isinstance(leg.amount, bool) or leg.amount <= 0:
                raise RoomError("bad_amount", "amounts are positive whole numbers of coins")
            if leg.debit == leg.credit:
                raise RoomError("invalid", "a transfer needs two different accounts")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(plan, future, tuple(rows), tuple(counts)))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches(), name="ledger-writer")
        return await future

    async def _write_batches(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:BATCH_MAX], self._queue[BATCH_MAX:]
                try:
                    try:
                        await self._commit_batch(batch)
                    except Exception as exc:
                        if not (len(batch) > 1 and isinstance(exc, (SQLAlchemyError, _GuardsPartlyApplied))):
                            raise
                        # Something the checks did not foresee: apply them one by one, so only the
                        # operation at fault fails.
                        log.warning("ledger batch of %d failed (%s); applying one by one", len(batch), exc)
                        for one in batch:
                            if not one.future.done():
                                await self._commit_batch([one], raise_errors=False)
                except Exception as exc:  # whatever happened, no submitter is left waiting
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
        finally:
            self._writer = None

    async def _commit_batch(self, batch: list[_Pending], raise_errors: bool = True) -> None:
        # Refusals by rows are answered once the rest of the batch is committed: a request refused because
        # its twin (the same key, sent twice at once) is in the batch then finds the twin's order stored.
        refused_first: list[tuple[_Pending, RoomError]] = []
        try:
            attempt = 0
            while attempt < RETRIES:
                try:
                    outcomes, writes = await self._in_transaction(batch)
                    # Committed: accounts only ever credited are not read before they are written, so
                    # remember which exist.
                    if len(self._accounts_seen) < 100_000:
                        self._accounts_seen.update(a for a in writes.deltas if acct.kind_of(a) not in LOCKED_FIRST)
                    break
                except RowsRefused as refused:
                    # Rolled back: refuse those operations and apply the others again.
                    refused_first.extend((batch[index], reason) for index, reason in refused.refused.items())
                    batch = [p for i, p in enumerate(batch) if i not in refused.refused]
                    if not batch:
                        return
                    continue
                except _GuardsPartlyApplied as partly:
                    if len(batch) > 1:
                        raise
                    if not batch[0].future.done():
                        batch[0].future.set_exception(partly.error)
                    return
                except DBAPIError as exc:
                    attempt += 1
                    # Once more after a unique violation: another instance may have committed one of these
                    # keys meanwhile, which the next attempt finds and answers as a replay.
                    if attempt < RETRIES and (_retryable(exc) or (attempt == 1 and isinstance(exc, IntegrityError))):
                        await asyncio.sleep(0.005 * 2 ** (attempt - 1))
                        continue
                    if raise_errors:
                        raise
                    error: Exception = exc
                    if isinstance(exc, IntegrityError):
                        error = RoomError("conflict", "this conflicts with what the ledger holds; nothing was written")
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(error)
                    return
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, RoomError):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
            if writes.announce:
                self._unpublished.extend(writes.announce)
                if self._announcer is None and self.publisher is not None:
                    self._announcer = asyncio.create_task(self._announce(), name="ledger-announcer")
        finally:
            for pending, reason in refused_first:
                if not pending.future.done():  # (a submitter that gave up: cancelled)
                    pending.future.set_exception(reason)

    async def _in_transaction(self, batch: list[_Pending]) -> tuple[list[Outcome | RoomError], BatchWrites]:
        """Apply the batch in one transaction in the writer thread, whose round trips (several per statement
        with aiosqlite) do not wait their turn behind this event loop's other work (thousands of socket
        events a second in a gift storm or a flash sale)."""
        return await self._thread.run(lambda conn: self._apply(conn, batch))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on this event loop (batches run in the writer thread instead)."""
        db = self.db
        if self._is_pg:
            async with db.begin() as conn:
                yield conn
            return
        # SQLite: take the write lock at BEGIN, so reads inside the transaction see what it will change.
        async with db.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(SQLAlchemyError):  # keep the original error
                    await conn.exec_driver_sql("ROLLBACK")
                raise
            await conn.exec_driver_sql("COMMIT")

    # applying a batch inside one transaction
    async def _apply(
        self, conn: WriteConnection, batch: list[_Pending]
    ) -> tuple[list[Outcome | RoomError], BatchWrites]:
        """Each plan's outcome, and what the batch wrote (its outbox rows are announced once the transaction
        has committed)."""
        plans = [p.plan for p in batch]
        now = now_ms()
        day = now // DAY_MS
        keys = list({p.key for p in plans})
        op = t.operations
        known = {
            r.key: (r.body_hash, r.result)
            for r in await conn.execute(
                select(op.c.key, op.c.body_hash, op.c.result).where(self._among(op.c.key, keys))
            )
        }
        holds = await self._load_holds(conn, plans)
        reversals = await self._load_reversals(conn, plans)
        touched = self._accounts_touched(plans, holds, reversals)
        checked = self._accounts_checked(touched, plans, holds, reversals)
        balances = await self._lock_balances(conn, checked)
        existing = set(balances)
        # Accounts not locked yet start from 0 here: they are only credited, or may go negative, so no
        # check depends on their balance. Accounts are created by the first operation that moves coins.
        for account_id in touched:
            balances.setdefault(account_id, (0, acct.kind_of(account_id) not in acct.FLOORED))
        spenders = sorted({p.spender for p in plans if p.spender})
        spent, limits = await self._load_spending(conn, spenders, day)

        outcomes: list[Outcome | RoomError] = []
        writes = BatchWrites()
        writes.locked = set(checked)
        for index, pending in enumerate(batch):
            plan = pending.plan
            digest = plan.body_hash()
            if plan.key in known:
                stored_hash, stored_result = known[plan.key]
                if stored_hash != digest:
                    outcomes.append(
                        RoomError("idempotency_mismatch", "this idempotency key was used for a different request")
                    )
                else:
                    outcomes.append(Outcome(orjson.loads(stored_result), replayed=True))
                continue
            try:
                legs = self._legs_of(plan, holds, reversals, now)
                debited = self._check_caps(plan, legs, spent, limits)
                moved = _apply_legs(balances, legs)
                for statement, error in plan.guards:
                    # Guards run in order; a later one refusing leaves earlier ones applied in this
                    # transaction, so the batch is retried without the plan (see _write_batches).
                    if (await conn.execute(statement)).rowcount != 1:
                        if statement is not plan.guards[0][0]:
                            raise _GuardsPartlyApplied(error)
                        raise _Refused(error)
            except _GuardsPartlyApplied:
                raise
            except _Refused as refused:
                outcomes.append(refused.error)
                continue
            for statement in plan.effects:
                await conn.execute(statement)
            balances.update(moved)
            result = {**plan.result, "key": plan.key, "ts": now}
            if plan.spender:
                result["balance"] = balances[acct.wallet(plan.spender)][0]
            writes.accept(plan, digest, legs, result, now)
            writes.extra(index, pending.rows, pending.counts)
            if plan.spender:
                spent[plan.spender] = spent.get(plan.spender, 0) + debited
                writes.spend(plan.spender, debited)
            self._close_hold_in_memory(plan, holds, now, writes)
            for row in reversals.get(plan.reverse_of or "", []):
                row["reversed"] = True  # a second reversal in this batch is refused like a later one
            known[plan.key] = (digest, writes.operations[-1]["result"])
            outcomes.append(Outcome(result))
        if writes.operations:
            missing = sorted(a for a in writes.deltas if a not in existing and a not in self._accounts_seen)
            await self._create_accounts(conn, missing, now)
            try:
                await writes.flush(conn, day, now, self._is_pg, reversals)
            except CountRefused as refused:
                raise _GuardsPartlyApplied(refused.error) from None
        return outcomes, writes

    def _among(self, column: ColumnElement[str], values: list[str]) -> ColumnElement[bool]:
        """``column IN values``, as the same SQL for any number of values: on PostgreSQL ``= ANY(text array)``
        (the connection's prepared statement is used again; a new one costs a round trip more), on SQLite
        ``IN (SELECT value FROM json_each(?))`` (``in_(values)``, or an expanding parameter, renders a
        placeholder per value, in Python, on every call)."""
        if self._is_pg:
            return column == any_(literal(values, ARRAY(Text)))
        listed = func.json_each(bindparam(None, orjson.dumps(list(values)).decode(), type_=Text)).table_valued("value")
        return column.in_(select(listed.c.value))

    async def _load_holds(self, conn: WriteConnection, plans: list[Plan]) -> dict[str, dict[str, Any]]:
        ids = [p.hold_close[0] for p in plans if p.hold_close]
        if not ids:
            return {}
        query = select(t.holds).where(t.holds.c.id.in_(ids)).order_by(t.holds.c.id).with_for_update()
        return {r.id: dict(r._mapping) for r in await conn.execute(query)}

    async def _load_reversals(self, conn: WriteConnection, plans: list[Plan]) -> dict[str, list[dict[str, Any]]]:
        """The transfers of each operation to reverse, each with whether it was reversed already."""
        targets = [p.reverse_of for p in plans if p.reverse_of]
        if not targets:
            return {}
        tr = t.transfers
        rows = [dict(r._mapping) for r in await conn.execute(select(tr).where(tr.c.op_key.in_(targets)))]
        ids = [r["id"] for r in rows]
        done = {r[0] for r in await conn.execute(select(tr.c.reverses).where(tr.c.reverses.in_(ids)))} if ids else set()
        out: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            out.setdefault(row["op_key"], []).append({**row, "reversed": row["id"] in done})
        return out

    @staticmethod
    def _accounts_touched(
        plans: list[Plan], holds: dict[str, dict[str, Any]], reversals: dict[str, list[dict[str, Any]]]
    ) -> list[str]:
        """Every account the batch may move coins in (a concurrent transaction may create one that is
        missing here: it then starts from a balance of 0 here, which only makes the checks stricter)."""
        ids: set[str] = set()
        for plan in plans:
            for leg in plan.legs:
                ids.update((leg.debit, leg.credit))
            if plan.hold_close:
                hold = holds.get(plan.hold_close[0])
                if hold is not None:
                    ids.update((acct.held(hold["owner"]), acct.wallet(hold["owner"])))
                ids.update(a for a, _ in plan.hold_close[2])
            for row in reversals.get(plan.reverse_of or "", []):
                ids.update((row["debit"], row["credit"]))
        return sorted(ids)

    @staticmethod
    def _accounts_checked(
        touched: list[str],
        plans: list[Plan],
        holds: dict[str, dict[str, Any]],
        reversals: dict[str, list[dict[str, Any]]],
    ) -> list[str]:
        """The touched accounts whose balance the checks need, locked at the start: wallets and held
        coins, and every account that may not go negative and that a plan of the batch debits."""
        debited: set[str] = set()
        for plan in plans:
            debited.update(leg.debit for leg in plan.legs)
            if plan.hold_close:
                hold = holds.get(plan.hold_close[0])
                if hold is not None:
                    debited.add(acct.held(hold["owner"]))
            debited.update(row["credit"] for row in reversals.get(plan.reverse_of or "", []))
        return [
            a for a in touched if acct.kind_of(a) in LOCKED_FIRST or (a in debited and acct.kind_of(a) in acct.FLOORED)
        ]

    async def _create_accounts(self, conn: WriteConnection, ids: list[str], now: int) -> None:
        await create_accounts(conn, ids, now)

    async def _lock_balances(self, conn: WriteConnection, ids: list[str]) -> dict[str, tuple[int, bool]]:
        if not ids:
            return {}
        a = t.accounts
        # In id order: two transactions locking the same accounts never wait for each other in a cycle. FOR NO
        # KEY UPDATE: other batches' transfers to these accounts (foreign keys) need not wait for this one.
        query = select(a.c.id, a.c.balance, a.c.may_go_negative).where(self._among(a.c.id, ids)).order_by(a.c.id)
        locked = query.with_for_update(key_share=True)
        return {r[0]: (int(r[1]), bool(r[2])) for r in (await conn.execute(locked)).all()}

    async def _load_spending(
        self, conn: WriteConnection, spenders: list[str], day: int
    ) -> tuple[dict[str, int], dict[str, Caps]]:
        if not spenders:
            return {}, {}
        d, lim = t.daily_spend, t.spending_limits
        spent_rows = await conn.execute(
            select(d.c.owner, d.c.spent).where(self._among(d.c.owner, spenders), d.c.day == day)
        )
        limit_rows = await conn.execute(select(lim).where(self._among(lim.c.owner, spenders)))
        spent = {r[0]: int(r[1]) for r in spent_rows.all()}
        limits = {r.owner: Caps(r.per_transfer, r.daily) for r in limit_rows.all()}
        return spent, limits

    def _legs_of(
        self, plan: Plan, holds: dict[str, dict[str, Any]], reversals: dict[str, list[dict[str, Any]]], now: int
    ) -> list[Leg]:
        if plan.hold_close:
            hold_id, status, destinations = plan.hold_close
            hold = holds.get(hold_id)
            if hold is None:
                raise _Refused(RoomError("not_found", "no such hold"))
            if hold["status"] != "held":
                raise _Refused(RoomError("hold_closed", f"the hold is already {hold['status']}"))
            if status == "expired" and hold["expires_at"] > now:
                raise _Refused(RoomError("invalid", "the hold has not expired yet"))
            source = acct.held(hold["owner"])
            if status == "captured":
                return [Leg(source, to, amount) for to, amount in acct.split(hold["amount"], destinations)]
            return [Leg(source, acct.wallet(hold["owner"]), hold["amount"])]
        if plan.reverse_of:
            rows = reversals.get(plan.reverse_of)
            if not rows:
                raise _Refused(RoomError("not_found", "no such operation"))
            if any(r["kind"] not in REVERSIBLE for r in rows):
                # Orders are refunded (their status and ceiling move with the money); holds are captured,
                # voided or expire: reversing their transfers would leave those records wrong.
                raise _Refused(RoomError("not_reversible", f"a {rows[0]['kind']} is not corrected by reversal"))
            if any(r["reversed"] for r in rows):
                raise _Refused(RoomError("already_reversed", "this operation was reversed already"))
            return [Leg(r["credit"], r["debit"], int(r["amount"])) for r in rows]
        return list(plan.legs)

    def _check_caps(self, plan: Plan, legs: list[Leg], spent: dict[str, int], limits: dict[str, Caps]) -> int:
        """Refuse ``legs`` if they go past the spender's caps; returns what they take from the spender's wallet."""
        spender = plan.spender
        if not spender:
            return 0
        wallet = acct.wallet(spender)
        amount = 0
        for leg in legs:
            if leg.debit == wallet:
                amount += leg.amount
        own = limits.get(spender)
        per_transfer, daily = self.caps.per_transfer, self.caps.daily
        if own is not None:
            per_transfer, daily = _lowest(per_transfer, own.per_transfer), _lowest(daily, own.daily)
        if per_transfer is not None and amount > per_transfer:
            raise _Refused(RoomError("cap_reached", f"at most {per_transfer} coins at a time", cap=per_transfer))
        if daily is not None and spent.get(spender, 0) + amount > daily:
            raise _Refused(RoomError("cap_reached", f"at most {daily} coins a day", cap=daily))
        return amount

    @staticmethod
    def _close_hold_in_memory(plan: Plan, holds: dict[str, dict[str, Any]], now: int, writes: BatchWrites) -> None:
        if plan.hold_close:
            hold = holds[plan.hold_close[0]]
            hold["status"] = plan.hold_close[1]
            writes.close_hold(hold["id"], plan.hold_close[1], now)

    # outbox
    async def _announce(self) -> None:
        """Publish this writer's committed outbox rows (one per batch and room): per room, everything
        committed in the last ``ANNOUNCE_EVERY_S`` goes as one ``money`` room event (thousands of gifts a
        second would otherwise be thousands of deliveries per member). Rows are claimed before they are
        published, as the outbox relay claims them, so a row is never published by both; the rows of a room
        whose publishing failed are released for the relay."""
        assert self.publisher is not None
        try:
            while self._unpublished:
                await asyncio.sleep(ANNOUNCE_EVERY_S)
                rows, self._unpublished = self._unpublished, []
                claimed = await self._claim([r["id"] for r in rows])
                by_room: dict[str, list[dict[str, Any]]] = {}
                for row in rows:
                    if row["id"] in claimed:
                        by_room.setdefault(row["room_id"], []).append(row)
                failed: list[str] = []
                for room_id, room_rows in by_room.items():
                    events = [e for r in room_rows for e in r["events"]]
                    try:
                        await self.publisher(room_id, "money", money_event(events))
                    except Exception:
                        log.exception("money events of room %s not published; the outbox relay retries", room_id)
                        failed.extend(r["id"] for r in room_rows)
                if failed:
                    await self._release(failed)
        finally:
            self._announcer = None

    async def _claim(self, ids: list[str]) -> set[str]:
        """Mark these outbox rows published, those nobody has claimed yet; returns their ids."""
        o = t.outbox
        claimed: set[str] = set()
        try:
            async with self._transaction() as conn:
                for i in range(0, len(ids), 500):
                    result = await conn.execute(
                        update(o)
                        .where(o.c.id.in_(ids[i : i + 500]), o.c.published_at.is_(None))
                        .values(published_at=now_ms())
                        .returning(o.c.id)
                    )
                    claimed.update(r[0] for r in result)
        except SQLAlchemyError:
            log.exception("outbox rows not claimed; the outbox relay publishes them")
            return set()
        return claimed

    async def _release(self, ids: list[str]) -> None:
        o = t.outbox
        try:
            async with self._transaction() as conn:
                for i in range(0, len(ids), 500):
                    await conn.execute(update(o).where(o.c.id.in_(ids[i : i + 500])).values(published_at=None))
        except SQLAlchemyError:
            log.exception("outbox rows not released; their money events are lost to the room")

    async def publish_outbox(self, older_than_ms: int = 0) -> int:
        """Publish outbox rows not yet published (after a commit; and periodically, for rows a crash
        left behind). Each row is claimed first, so two instances never both publish it."""
        if self.publisher is None:
            return 0
        o = t.outbox
        cutoff = now_ms() - older_than_ms
        async with self.reads.connect() as conn:
            rows = (
                await conn.execute(
                    select(o).where(o.c.published_at.is_(None), o.c.created_at <= cutoff).order_by(o.c.id).limit(1000)
                )
            ).all()
        sent = 0
        for row in rows:
            async with self.db.begin() as conn:
                claimed = await conn.execute(
                    update(o).where(o.c.id == row.id, o.c.published_at.is_(None)).values(published_at=now_ms())
                )
            if claimed.rowcount != 1:
                continue
            try:
                await self.publisher(row.room_id, "money", money_event(json.loads(row.data)))
                sent += 1
            except Exception:
                log.exception("outbox row %s not published; will retry", row.id)
                async with self.db.begin() as conn:
                    await conn.execute(update(o).where(o.c.id == row.id).values(published_at=None))
        return sent

    # reads
    async def result_of(self, key: str) -> dict[str, Any] | None:
        """The stored result of the operation with this idempotency key, if it was accepted."""
        op = t.operations
        async with self.reads.connect() as conn:
            row = (await conn.execute(select(op.c.result).where(op.c.key == key))).first()
        return json.loads(row.result) if row is not None else None

    async def balances(self, account_ids: list[str]) -> dict[str, int]:
        """The balances of the accounts that exist among ``account_ids``, in one read."""
        a = t.accounts
        async with self.reads.connect() as conn:
            rows = await conn.execute(select(a.c.id, a.c.balance).where(a.c.id.in_(account_ids)))
            return {r.id: int(r.balance) for r in rows}

    async def balance(self, account_id: str) -> int:
        return (await self.balances([account_id])).get(account_id, 0)

    async def total(self) -> int:
        """The sum over all accounts: zero, always."""
        async with self.reads.connect() as conn:
            return int((await conn.execute(select(func.coalesce(func.sum(t.accounts.c.balance), 0)))).scalar() or 0)


def money_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The data of one ``money`` room event: every event for staff (the teacher's live feed), and a summary
    for everyone else: counts and coins per gift, and the biggest events (a room sending thousands of
    gifts a second would otherwise send every member every one of them)."""
    gifts: dict[str, dict[str, int]] = {}
    for e in events:
        if e["type"] == "gift.sent":
            g = gifts.setdefault(e["data"]["gift"]["id"], {"count": 0, "coins": 0})
            g["count"] += e["data"]["count"]
            g["coins"] += e["data"]["coins"]
    # Paid messages are shown to everyone; of the rest, the biggest.
    paid = [e for e in events if e["type"] == "message.paid"]
    others = sorted((e for e in events if e["type"] != "message.paid"), key=lambda e: -int(e["data"].get("coins", 0)))
    biggest = paid + others[: max(0, HIGHLIGHTS - len(paid))]
    public = {"gifts": gifts, "coins": sum(int(e["data"].get("coins", 0)) for e in events), "highlights": biggest}
    return {"events": events, "public": public}


async def create_accounts(conn: WriteConnection, ids: list[str], now: int) -> None:
    """Create the accounts that do not exist yet among ``ids`` (with a balance of 0), in id order."""
    rows = []
    for account_id in sorted(ids):
        kind = acct.kind_of(account_id)
        rows.append(
            {
                "id": account_id,
                "kind": kind,
                "owner": acct.owner_of(account_id),
                "balance": 0,
                "may_go_negative": kind not in acct.FLOORED,
                "created_at": now,
            }
        )
    if rows:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(dialect.insert(t.accounts).on_conflict_do_nothing(index_elements=["id"]), rows)


def _lowest(a: int | None, b: int | None) -> int | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def _apply_legs(balances: dict[str, tuple[int, bool]], legs: list[Leg]) -> dict[str, tuple[int, bool]]:
    """The balances after ``legs`` (only the changed accounts), or refuse if one would go negative."""
    moved: dict[str, tuple[int, bool]] = {}
    for leg in legs:
        for account_id, delta in ((leg.debit, -leg.amount), (leg.credit, leg.amount)):
            balance, may_go_negative = moved.get(account_id) or balances[account_id]
            moved[account_id] = (balance + delta, may_go_negative)
    for balance, may_go_negative in moved.values():
        if balance < 0 and not may_go_negative:
            raise _Refused(insufficient_funds())
    return moved


def _retryable(exc: DBAPIError) -> bool:
    """Serialization failure or deadlock (PostgreSQL), or a lock timeout (SQLite): try the batch again."""
    return getattr(exc.orig, "sqlstate", None) in ("40001", "40P01") or "database is locked" in str(exc)
