"""Webhooks to the host: ``order.paid``, ``order.refunded``, ``entitlement.granted``.

A webhook row is written in the same transaction as the change it announces (an outbox), then delivered
by any instance: each POST carries ``Live-Webhook-Id`` (the host deduplicates on it) and
``Live-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``, Stripe's scheme. A failed
delivery is retried with exponential backoff (1 s doubling to an hour) for ``MAX_ATTEMPTS`` tries. The body
is stored once and sent byte for byte, so its signature always verifies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

import aiohttp
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from gifting import tables as t
from gifting.payments import sign
from rooms.engine import now_ms
from rooms.tables import autocommit

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
MAX_BACKOFF_S = 3600
#: A claimed delivery is not tried by another instance for this long.
CLAIM_MS = 30_000
TIMEOUT_S = 10
BATCH = 50


def backoff_ms(attempts: int) -> int:
    """Wait before try ``attempts + 1``: 1 s, 2 s, 4 s ... up to an hour."""
    return int(min(MAX_BACKOFF_S, 2 ** max(0, attempts - 1)) * 1000)


def webhook_values(type_: str, data: dict[str, Any], now: int) -> dict[str, Any]:
    """The ``host_webhooks`` row of one new webhook (a new event id, the body it will carry, due now)."""
    event_id = "evt_" + secrets.token_hex(12)
    body = json.dumps({"id": event_id, "type": type_, "created": now, "data": data}, separators=(",", ":"))
    return {"id": event_id, "type": type_, "body": body, "created_at": now, "attempts": 0, "next_attempt_at": now}


def webhook_row(type_: str, data: dict[str, Any], now: int) -> Executable:
    """The INSERT of one webhook, to run in the transaction of the change it announces."""
    return insert(t.host_webhooks).values(**webhook_values(type_, data, now))


class HostWebhooks:
    """Delivers pending webhooks to ``url`` (none configured: they wait, and are listed in the admin API)."""

    def __init__(self, db: AsyncEngine, url: str | None, secret: str) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.url = url
        self.secret = secret
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self.url and self._task is None:
            self._task = asyncio.create_task(self._run(), name="host-webhooks")

    def wake(self) -> None:
        """Something was written: deliver now instead of at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        while True:
            try:
                sent = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("host webhook round failed")
                sent = 0
            if sent == 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except TimeoutError:
                    pass

    async def deliver_due(self) -> int:
        """Try every webhook that is due, once; returns how many were tried."""
        w = t.host_webhooks
        now = now_ms()
        async with self.reads.connect() as conn:
            rows = (
                await conn.execute(
                    select(w.c.id, w.c.body, w.c.attempts, w.c.next_attempt_at)
                    .where(w.c.delivered_at.is_(None), w.c.next_attempt_at.is_not(None), w.c.next_attempt_at <= now)
                    .order_by(w.c.next_attempt_at)
                    .limit(BATCH)
                )
            ).all()
        claimed = []
        for row in rows:
            async with self.db.begin() as conn:
                done = await conn.execute(
                    update(w)
                    .where(w.c.id == row.id, w.c.next_attempt_at == row.next_attempt_at, w.c.delivered_at.is_(None))
                    .values(next_attempt_at=now + CLAIM_MS)
                )
            if done.rowcount == 1:
                claimed.append(row)
        await asyncio.gather(*(self._deliver(r.id, r.body, r.attempts) for r in claimed))
        return len(claimed)

    async def _deliver(self, event_id: str, body: str, attempts: int) -> None:
        assert self.url is not None and self._http is not None
        raw = body.encode()
        headers = {
            "Content-Type": "application/json",
            "Live-Webhook-Id": event_id,
            "Live-Signature": sign(self.secret, raw, int(time.time())),
        }
        error = None
        try:
            async with self._http.post(self.url, data=raw, headers=headers) as response:
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        w = t.host_webhooks
        attempts += 1
        values: dict[str, Any] = {"attempts": attempts}
        if error is None:
            values["delivered_at"] = now_ms()
        else:
            values["last_error"] = error
            values["next_attempt_at"] = now_ms() + backoff_ms(attempts) if attempts < MAX_ATTEMPTS else None
            log.info("host webhook %s failed (attempt %d): %s", event_id, attempts, error)
        async with self.db.begin() as conn:
            await conn.execute(update(w).where(w.c.id == event_id).values(**values))

    async def list(self, undelivered_only: bool, limit: int = 200) -> list[dict[str, Any]]:
        w = t.host_webhooks
        query = select(w).order_by(w.c.created_at.desc()).limit(limit)
        if undelivered_only:
            query = query.where(w.c.delivered_at.is_(None))
        async with self.reads.connect() as conn:
            return [{**dict(r._mapping), "body": json.loads(r.body)} for r in await conn.execute(query)]
