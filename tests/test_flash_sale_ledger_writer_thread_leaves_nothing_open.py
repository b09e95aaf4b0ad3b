"""On PostgreSQL the ledger's transactions run in a writer thread with its own connections (a flash sale's
batches must not wait behind the socket events on the app's event loop). That thread must not outlive its
use: it stops and closes its connections once idle, starts again for the next operation (which commits
as before), and goes when the ledger is closed."""

from __future__ import annotations

import threading

import asyncpg
import pytest

from gifting import accounts as acct
from gifting import operations as ops
from gifting import writer_thread
from gifting.ledger import Ledger
from gifting.plans import Caps
from live.config import normalize_database_url
from live.db import create_engine, migrate
from tests.support import PG_ADMIN_DSN, wait_until

pytestmark = pytest.mark.postgres


def writer_threads() -> int:
    return sum(1 for th in threading.enumerate() if th.name == "ledger-writer" and th.is_alive())


async def connections(database: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return int(await conn.fetchval("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1", database))
    finally:
        await conn.close()


async def test_the_writer_thread_stops_when_idle_and_at_close(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_thread, "WRITER_IDLE_S", 1.0)
    url = normalize_database_url(pg_url)
    database = url.rsplit("/", 1)[1]
    await migrate(url)
    db = create_engine(url)
    ledger = Ledger(db, Caps())
    try:
        # Writers of ledgers that earlier tests left behind stop after their own idle time.
        await wait_until(lambda: writer_threads() == 0, timeout=10, what="other ledgers' idle writers to stop")
        await ledger.submit(ops.topup("fund-1", "ana", 100, "sandbox", actor="host"))
        assert writer_threads() == 1
        await wait_until(lambda: writer_threads() == 0, timeout=5, what="the idle writer to stop")
        await db.dispose()
        assert await connections(database) == 0, "and closes its connections"

        # The next operation starts it again; money moves as before.
        await ledger.submit(ops.topup("fund-2", "ana", 50, "sandbox", actor="host"))
        assert writer_threads() == 1
        assert await ledger.balance(acct.wallet("ana")) == 150
        assert await ledger.total() == 0
        await ledger.close()
        assert writer_threads() == 0, "close() stops it"
        await db.dispose()
        assert await connections(database) == 0
    finally:
        await ledger.close()
        await db.dispose()
