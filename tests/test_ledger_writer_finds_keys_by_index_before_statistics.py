"""On PostgreSQL a batch looks up its idempotency keys, accounts and daily totals with `= ANY(array)`. With the
planner's defaults, and statistics that lag behind a table growing by thousands of rows a second (a fresh
database in a gift storm), those lookups scanned the whole table: 1 ms per batch at first, 70 ms at 30,000
operations. The ledger's writer connections never scan a table where an index finds the rows."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from gifting.writer_thread import WriteConnection, WriterThread
from live.config import normalize_database_url
from live.db import create_engine, migrate

pytestmark = pytest.mark.postgres


async def test_key_lookups_use_the_index_on_a_table_never_analyzed(pg_url: str) -> None:
    url = normalize_database_url(pg_url)
    await migrate(url)
    db = create_engine(url)
    writer = WriterThread(db)
    try:
        async with db.begin() as conn:  # 20,000 operations, and no ANALYZE since
            await conn.execute(
                text(
                    "INSERT INTO ledger_operations (key, kind, body_hash, result, actor, created_at) "
                    "SELECT 'gift-s' || g || '-k', 'gift', 'h', '{}', 's' || g, 0 FROM generate_series(1, 20000) g"
                )
            )
        keys = [f"gift-s{i}-k" for i in range(1, 301)]
        # The lookup a batch makes for its keys (Ledger._among: `= ANY(text array)`), planned on the writer's
        # connection.
        sql = text("EXPLAIN SELECT key FROM ledger_operations WHERE key = ANY(CAST(:keys AS text[]))")

        async def explain(conn: WriteConnection) -> list[Any]:
            return list((await conn.execute(sql, {"keys": keys})).scalars())

        plan = "\n".join(await writer.run(explain))
        assert "Index" in plan and "Seq Scan" not in plan, plan
    finally:
        await writer.stop()
        await db.dispose()
