"""Money reports: a statement of one account, and exports of accounts and transfers (read-only SQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting import tables as t
from rooms.tables import autocommit

EXPORT_COLUMNS = ("id", "op_key", "kind", "debit", "credit", "amount", "room_id", "reverses", "created_at")
ACCOUNT_COLUMNS = ("id", "kind", "owner", "balance", "created_at")
ACCOUNT_KINDS = ("wallet", "held", "earnings", "platform", "world")


class Reports:
    """Statements and exports, from the ledger's transfers."""

    def __init__(self, db: AsyncEngine) -> None:
        self.reads = autocommit(db)

    async def statement(self, account_id: str, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        """The account's balance and its newest transfers (``amount`` signed: + in, - out), newest first;
        ``before`` (a transfer id) pages back."""
        tr, a = t.transfers, t.accounts
        query = select(tr).where(or_(tr.c.debit == account_id, tr.c.credit == account_id))
        if before is not None:
            query = query.where(tr.c.id < before)
        query = query.order_by(tr.c.id.desc()).limit(limit)
        async with self.reads.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
            balance = (await conn.execute(select(a.c.balance).where(a.c.id == account_id))).scalar()
        lines = [
            {
                "id": r["id"],
                "op_key": r["op_key"],
                "kind": r["kind"],
                "amount": r["amount"] if r["credit"] == account_id else -r["amount"],
                "counterparty": r["debit"] if r["credit"] == account_id else r["credit"],
                "room_id": r["room_id"],
                "reverses": r["reverses"],
                "ts": r["created_at"],
            }
            for r in rows
        ]
        return {"account": account_id, "balance": int(balance or 0), "lines": lines}

    async def transfers(self, room_id: str | None, since: int | None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Transfers oldest first, of one room or all, from ``since`` (ms) on."""
        tr = t.transfers
        query = select(*(tr.c[c] for c in EXPORT_COLUMNS)).order_by(tr.c.id).limit(limit)
        if room_id is not None:
            query = query.where(tr.c.room_id == room_id)
        if since is not None:
            query = query.where(tr.c.created_at >= since)
        async with self.reads.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def accounts(self, kind: str | None, after: str | None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Accounts and their balances by id (of one ``kind``, e.g. every wallet), from after the id
        ``after`` on: a host pages through all of them with the last id it got."""
        a = t.accounts
        query = select(*(a.c[c] for c in ACCOUNT_COLUMNS)).order_by(a.c.id).limit(limit)
        if kind is not None:
            query = query.where(a.c.kind == kind)
        if after is not None:
            query = query.where(a.c.id > after)
        async with self.reads.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]
