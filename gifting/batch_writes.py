"""The rows one ledger batch writes: collected while its operations are accepted, written at the end.

Besides the ledger's own rows, an operation may bring :class:`Row` s (an order, its webhooks, the
entitlement it grants) and :class:`Count` s (the seats it takes): the batch writes each kind of row in one
statement and each counter once, however many operations it holds. The end of a batch runs in a fixed
order: first everything that touches rows of one buyer, then the rows that every operation of a hot sale
touches (counters, then the shared accounts, in id order), so those are locked only while the batch
finishes and commits.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, Text, cast, func, insert, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert, Update

from gifting import tables as t
from gifting.plans import Leg, Plan, to_json
from gifting.writer_thread import WriteConnection, execute_many
from rooms.errors import RoomError

_OUTBOX_IDS = itertools.count()

# Built once, so that SQLite's writer compiles each once (gifting/writer_thread.py, execute_many).
_INSERT_OPERATION = insert(t.operations)
_INSERT_TRANSFER = insert(t.transfers)
_INSERT_HOLD = insert(t.holds)
_INSERT_OUTBOX = insert(t.outbox)
_INSERT_AUDIT = insert(t.audit_log)


def _add_spent(dialect: Any) -> Insert:
    """Add to each spender's total of the day (one row per spender and day)."""
    stmt = dialect.insert(t.daily_spend)
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=["owner", "day"], set_={"spent": t.daily_spend.c.spent + stmt.excluded.spent}
    )


_ADD_SPENT_SQLITE = _add_spent(sqlite)
_ADD_TO_BALANCE = text(  # SQLite's; PostgreSQL's is one statement for the whole batch
    "UPDATE ledger_accounts SET balance = balance + :d WHERE id = :id AND (may_go_negative OR balance + :d >= 0)"
)
_ADD_SPENT_PG = _add_spent(postgresql)


@dataclass(frozen=True)
class Row:
    """A row an accepted operation inserts. The rows of a batch that share ``into`` (an INSERT without
    values, possibly with ON CONFLICT) go in one statement, after the ledger's own rows.

    With ``key`` (columns that identify the row), a row the statement does not write (ON CONFLICT DO
    NOTHING, or DO UPDATE ... WHERE that does not hold) refuses its operation with ``error``, and the batch
    is applied again without it. Without ``key``, a conflict fails the batch, which is then applied one
    operation at a time (the one at fault is refused with ``conflict``)."""

    into: Insert
    values: dict[str, Any]
    key: tuple[str, ...] = ()
    error: RoomError | None = None


@dataclass(frozen=True)
class Count:
    """An increment of a guarded counter (a sale's or a course's seats taken) in a row that many operations
    change at once. A batch adds up its operations' increments and writes each counter with one UPDATE,
    guarded by ``column + total <= limit``, by ``window[0] <= at < window[1]`` for every operation's ``at``,
    and by ``unset`` columns being NULL; it runs near the end of the batch, so the row is locked only while
    the batch commits. If the guard refuses, the batch is applied again one operation at a time, and the
    operation refused gets ``error``."""

    table: Table
    row_id: str
    column: str
    limit: str
    amount: int
    error: RoomError
    window: tuple[str, str] | None = None
    at: int = 0
    unset: tuple[str, ...] = ()

    def group(self) -> tuple[str, str, str, str, tuple[str, str] | None, tuple[str, ...]]:
        return (self.table.name, self.row_id, self.column, self.limit, self.window, self.unset)


def count_update(counts: list[Count]) -> Update:
    """The guarded UPDATE adding up ``counts`` (all of one :meth:`Count.group`): it changes one row, or none
    if the total would pass the limit, an ``at`` falls outside the window, or an ``unset`` column is set."""
    first = counts[0]
    table, total = first.table, sum(c.amount for c in counts)
    (pk,) = table.primary_key.columns
    column = table.c[first.column]
    conditions = [pk == first.row_id, column + total <= table.c[first.limit]]
    if first.window is not None:
        opens, ends = first.window
        conditions += [table.c[opens] <= min(c.at for c in counts), table.c[ends] > max(c.at for c in counts)]
    conditions += [table.c[name].is_(None) for name in first.unset]
    return update(table).where(*conditions).values({first.column: column + total})


class RowsRefused(Exception):
    """Rows with a ``key`` the batch did not write: their operations are refused, the batch is retried
    without them."""

    def __init__(self, refused: dict[int, RoomError]) -> None:
        super().__init__(f"{len(refused)} operations refused by their rows")
        #: Index of the operation in the batch -> its error.
        self.refused = refused


class CountRefused(Exception):
    """A counter's guard refused the batch's total."""

    def __init__(self, error: RoomError) -> None:
        super().__init__(error.message)
        self.error = error


class BatchWrites:
    """Rows of the accepted operations of one batch, written together at the end."""

    #: Outbox row ids: this process's random prefix and a counter (cheaper than random ids per row).
    id_prefix = secrets.token_hex(6) + "-"

    def __init__(self) -> None:
        #: Room events of the batch, by room: one outbox row per room, announced after commit.
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.announce: list[dict[str, Any]] = []
        self.operations: list[dict[str, Any]] = []
        self.transfers: list[dict[str, Any]] = []
        self.deltas: dict[str, int] = {}
        self.holds: list[dict[str, Any]] = []
        self.closed: list[tuple[str, str, int]] = []
        self.spent: dict[str, int] = {}
        self.outbox: list[dict[str, Any]] = []
        self.audit: list[dict[str, Any]] = []
        #: (index of the operation in the batch, row) of the accepted operations.
        self.rows: list[tuple[int, Row]] = []
        self.counts: list[Count] = []
        #: Accounts whose balance the batch checked under lock; the others are locked at the end.
        self.locked: set[str] = set()

    def accept(self, plan: Plan, digest: str, legs: list[Leg], result: dict[str, Any], now: int) -> None:
        self.operations.append(
            {
                "key": plan.key,
                "kind": plan.kind,
                "body_hash": digest,
                "result": to_json(result),
                "actor": plan.actor,
                "actor_name": plan.actor_name,
                "room_id": plan.room_id,
                "created_at": now,
            }
        )
        for leg in legs:
            self.transfers.append(
                {
                    "op_key": plan.key,
                    "debit": leg.debit,
                    "credit": leg.credit,
                    "amount": leg.amount,
                    "kind": plan.kind,
                    "room_id": plan.room_id,
                    "reverses_of": (plan.reverse_of, leg.credit, leg.debit, leg.amount) if plan.reverse_of else None,
                    "created_at": now,
                }
            )
            self.deltas[leg.debit] = self.deltas.get(leg.debit, 0) - leg.amount
            self.deltas[leg.credit] = self.deltas.get(leg.credit, 0) + leg.amount
        if plan.hold_open:
            self.holds.append({**plan.hold_open, "op_key": plan.key, "status": "held", "created_at": now})
        if plan.room_id:
            events = self.events.setdefault(plan.room_id, [])
            # The payer's balance is in their own ack, never in what the room sees.
            shown = {k: v for k, v in result.items() if k != "balance"}
            events.extend({"type": type_, "data": {**data, **shown}} for type_, data in plan.events)
        if plan.reason is not None:
            self.audit.append(
                {
                    "actor": plan.actor,
                    "action": plan.kind,
                    "target": plan.reverse_of or plan.key,
                    "reason": plan.reason,
                    "created_at": now,
                }
            )

    def spend(self, owner: str, amount: int) -> None:
        if amount:
            self.spent[owner] = self.spent.get(owner, 0) + amount

    def close_hold(self, hold_id: str, status: str, now: int) -> None:
        self.closed.append((hold_id, status, now))

    def extra(self, index: int, rows: tuple[Row, ...], counts: tuple[Count, ...]) -> None:
        """An accepted operation's own rows and counters."""
        self.rows.extend((index, row) for row in rows)
        self.counts.extend(counts)

    async def flush(
        self,
        conn: WriteConnection,
        day: int,
        now: int,
        is_pg: bool,
        reversals: dict[str, list[dict[str, Any]]],
    ) -> None:
        """Write the batch: the buyer's rows first, then the counters and balances every operation shares."""
        await _insert_all(conn, _INSERT_OPERATION, t.operations, self.operations, is_pg)
        transfers = [self._transfer_row(r, reversals) for r in self.transfers]
        await _insert_all(conn, _INSERT_TRANSFER, t.transfers, transfers, is_pg)
        await _insert_all(conn, _INSERT_HOLD, t.holds, self.holds, is_pg)
        for hold_id, status, at in self.closed:
            done = await conn.execute(
                update(t.holds)
                .where(t.holds.c.id == hold_id, t.holds.c.status == "held")
                .values(status=status, closed_at=at)
            )
            if done.rowcount != 1:
                raise IntegrityError("hold closed twice", None, Exception(hold_id))
        spent = [{"owner": o, "day": day, "spent": s} for o, s in self.spent.items()]
        await _insert_all(conn, _ADD_SPENT_PG if is_pg else _ADD_SPENT_SQLITE, t.daily_spend, spent, is_pg)
        for room_id, events in self.events.items():
            if events:
                row_id = f"{self.id_prefix}{next(_OUTBOX_IDS)}"
                self.outbox.append(
                    {"id": row_id, "room_id": room_id, "type": "money", "data": to_json(events), "created_at": now}
                )
                self.announce.append({"id": row_id, "room_id": room_id, "events": events})
        await _insert_all(conn, _INSERT_OUTBOX, t.outbox, self.outbox, is_pg)
        await _insert_all(conn, _INSERT_AUDIT, t.audit_log, self.audit, is_pg)

        await self._insert_rows(conn, is_pg)
        await self._write_counts(conn)
        await self._update_balances(conn, is_pg)

    async def _insert_rows(self, conn: WriteConnection, is_pg: bool) -> None:
        groups: dict[Insert, list[tuple[int, Row]]] = {}
        for index, row in self.rows:
            groups.setdefault(row.into, []).append((index, row))
        refused: dict[int, RoomError] = {}
        # Rows that may refuse their operation first: if one does, the rest need not be written.
        for into, rows in sorted(groups.items(), key=lambda g: not g[1][0][1].key):
            key = rows[0][1].key
            if not key:
                if refused:
                    break
                await conn.execute(into, [row.values for _, row in rows])
                continue
            table = into.table
            assert isinstance(table, Table)
            returning = [table.c[k] for k in key]
            values = [r.values for _, r in rows]
            statement = _from_arrays(into, table, values) if is_pg else None
            if statement is not None:
                result = await conn.execute(statement.returning(*returning))
            else:
                result = await conn.execute(into.returning(*returning), values)
            written = {tuple(r) for r in result}
            for index, row in rows:
                if tuple(row.values[k] for k in key) not in written:
                    refused[index] = row.error or RoomError("conflict", "this conflicts with what is stored")
        if refused:
            raise RowsRefused(refused)

    async def _write_counts(self, conn: WriteConnection) -> None:
        groups: dict[tuple[Any, ...], list[Count]] = {}
        for count in self.counts:
            groups.setdefault(count.group(), []).append(count)
        for _, counts in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2])):
            done = await conn.execute(count_update(counts))
            if done.rowcount != 1:
                raise CountRefused(counts[0].error)

    @staticmethod
    def _transfer_row(row: dict[str, Any], reversals: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "reverses_of"}
        out["reverses"] = None
        if row["reverses_of"] is not None:
            op_key, debit, credit, amount = row["reverses_of"]
            for original in reversals[op_key]:
                if (original["debit"], original["credit"], original["amount"]) == (debit, credit, amount) and not (
                    original.get("_taken")
                ):
                    original["_taken"] = True
                    out["reverses"] = original["id"]
                    break
        return out

    async def _update_balances(self, conn: WriteConnection, is_pg: bool) -> None:
        changed = [(account_id, delta) for account_id, delta in sorted(self.deltas.items()) if delta]
        if not changed:
            return
        if is_pg:
            # The accounts not locked yet are locked first, in id order (the UPDATE's join may visit rows in
            # any order): two batches that credit the same accounts never wait for each other in a cycle.
            # Arrays of text only: asyncpg looks up other array types on each new connection (a slow query).
            result = await conn.execute(
                text(
                    "WITH late AS MATERIALIZED (SELECT id FROM ledger_accounts WHERE id = ANY(CAST(:late AS text[])) "
                    "ORDER BY id FOR NO KEY UPDATE) "
                    "UPDATE ledger_accounts AS a SET balance = a.balance + v.d "
                    "FROM unnest(CAST(:ids AS text[]), CAST(CAST(:ds AS text[]) AS bigint[])) AS v(id, d) "
                    "WHERE a.id = v.id AND (a.may_go_negative OR a.balance + v.d >= 0) "
                    "AND (SELECT count(*) FROM late) >= 0"
                ),
                {
                    "late": [c[0] for c in changed if c[0] not in self.locked],
                    "ids": [c[0] for c in changed],
                    "ds": [str(c[1]) for c in changed],
                },
            )
            updated = result.rowcount
        else:
            updated = await execute_many(conn, _ADD_TO_BALANCE, [{"id": a, "d": delta} for a, delta in changed])
        if updated != len(changed):
            # The guard refused an update that the checks under lock allowed: never commit that.
            raise IntegrityError("guarded balance update refused", None, Exception(str(changed)))


async def _insert_all(
    conn: WriteConnection, into: Insert, table: Table, rows: list[dict[str, Any]], is_pg: bool
) -> None:
    """``rows`` into ``table`` with ``into`` (a constant INSERT, possibly with ON CONFLICT): on PostgreSQL in one
    statement from column arrays (one execution however many rows: a batch's 300 transfers took 18 ms as
    300 pipelined executions), elsewhere through execute_many."""
    if not rows:
        return
    statement = _from_arrays(into, table, rows) if is_pg else None
    if statement is not None:
        await conn.execute(statement)
    else:
        await execute_many(conn, into, rows)


def _from_arrays(into: Insert, table: Table, rows: list[dict[str, Any]]) -> Insert | None:
    """``into`` as INSERT ... SELECT unnest(column arrays) (PostgreSQL): the same SQL for any number of rows,
    so the connection's prepared statement is used again instead of a new one per batch size (a round trip
    more). None for values other than text, numbers, booleans and NULL."""
    columns = list(rows[0])
    names = rows[0].keys()
    arrays: list[list[str | None]] = [[] for _ in columns]
    for row in rows:
        if row.keys() != names:
            return None
        for array, column in zip(arrays, columns, strict=True):
            value = row[column]
            if value is None or isinstance(value, str):
                array.append(value)
            elif isinstance(value, bool):
                array.append("true" if value else "false")
            elif isinstance(value, int):
                array.append(str(value))
            else:
                return None
    # Text arrays cast in SQL: asyncpg looks up other array types on each new connection (a slow query).
    unnest = [
        func.unnest(cast(literal(array, ARRAY(Text)), ARRAY(table.c[column].type)))
        for array, column in zip(arrays, columns, strict=True)
    ]
    return into.from_select(columns, select(*unnest))
