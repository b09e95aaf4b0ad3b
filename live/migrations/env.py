"""Alembic environment: runs migrations on the async engine, one instance at a time on PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from rooms.tables import metadata as rooms_metadata

target_metadata = [rooms_metadata]

# Any fixed number: instances starting together wait for each other instead of racing the DDL.
MIGRATION_LOCK_ID = 7_400_311


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                await conn.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
                await conn.commit()
            try:
                await conn.run_sync(_run)
                await conn.commit()
            finally:
                if postgres:
                    await conn.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
                    await conn.commit()
    finally:
        await engine.dispose()


asyncio.run(_main())
