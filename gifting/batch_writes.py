"""The rows one ledger batch writes: collected while its operations are accepted, written at the end."""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

from sqlalchemy import insert, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gifting import tables as t
from gifting.plans import Leg, Plan

_OUTBOX_IDS = itertools.count()


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

    def accept(self, plan: Plan, digest: str, legs: list[Leg], result: dict[str, Any], now: int) -> None:
        self.operations.append(
            {
                "key": plan.key,
                "kind": plan.kind,
                "body_hash": digest,
                "result": json.dumps(result),
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

    async def flush(
        self,
        conn: AsyncConnection,
        day: int,
        now: int,
        is_pg: bool,
        reversals: dict[str, list[dict[str, Any]]],
    ) -> None:
        await conn.execute(insert(t.operations), self.operations)
        rows = [self._transfer_row(r, reversals) for r in self.transfers]
        if rows:
            await conn.execute(insert(t.transfers), rows)
        await self._update_balances(conn, is_pg)
        if self.holds:
            await conn.execute(insert(t.holds), self.holds)
        for hold_id, status, at in self.closed:
            done = await conn.execute(
                update(t.holds)
                .where(t.holds.c.id == hold_id, t.holds.c.status == "held")
                .values(status=status, closed_at=at)
            )
            if done.rowcount != 1:
                raise IntegrityError("hold closed twice", None, Exception(hold_id))
        if self.spent:
            dialect = postgresql if is_pg else sqlite
            stmt = dialect.insert(t.daily_spend)
            stmt = stmt.on_conflict_do_update(
                index_elements=["owner", "day"], set_={"spent": t.daily_spend.c.spent + stmt.excluded.spent}
            )
            await conn.execute(stmt, [{"owner": o, "day": day, "spent": s} for o, s in self.spent.items()])
        for room_id, events in self.events.items():
            if events:
                row_id = f"{self.id_prefix}{next(_OUTBOX_IDS)}"
                self.outbox.append(
                    {"id": row_id, "room_id": room_id, "type": "money", "data": json.dumps(events), "created_at": now}
                )
                self.announce.append({"id": row_id, "room_id": room_id, "events": events})
        if self.outbox:
            await conn.execute(insert(t.outbox), self.outbox)
        if self.audit:
            await conn.execute(insert(t.audit_log), self.audit)

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

    async def _update_balances(self, conn: AsyncConnection, is_pg: bool) -> None:
        changed = [(account_id, delta) for account_id, delta in sorted(self.deltas.items()) if delta]
        if not changed:
            return
        if is_pg:
            result = await conn.execute(
                text(
                    "UPDATE ledger_accounts AS a SET balance = a.balance + v.d "
                    "FROM unnest(CAST(:ids AS text[]), CAST(:ds AS bigint[])) AS v(id, d) "
                    "WHERE a.id = v.id AND (a.may_go_negative OR a.balance + v.d >= 0)"
                ),
                {"ids": [c[0] for c in changed], "ds": [c[1] for c in changed]},
            )
        else:
            result = await conn.execute(
                text(
                    "UPDATE ledger_accounts SET balance = balance + :d "
                    "WHERE id = :id AND (may_go_negative OR balance + :d >= 0)"
                ),
                [{"id": account_id, "d": delta} for account_id, delta in changed],
            )
        if result.rowcount != len(changed):
            # The guard refused an update that the checks under lock allowed: never commit that.
            raise IntegrityError("guarded balance update refused", None, Exception(str(changed)))
