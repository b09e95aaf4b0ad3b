"""The SQL database: an async SQLAlchemy engine (SQLite in WAL mode, or PostgreSQL) and migrations."""

from __future__ import annotations

import asyncio
import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from rooms.tables import sqlite_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, a busy timeout and foreign keys on every connection."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return sqlite_engine(url)
    # No pre-ping: it doubles every query's round trips; a connection found dead invalidates the pool.
    return create_async_engine(url, pool_size=10, max_overflow=10)


def alembic_config(url: str) -> Config:
    """Alembic configuration for the bundled migrations, pointed at ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


_MIGRATING = threading.Lock()  # Alembic's `context` is process-global


async def migrate(url: str) -> None:
    """Bring the schema to the newest revision (safe to run from several instances at once: PostgreSQL
    takes an advisory lock in env.py, SQLite a lock file beside the database)."""
    await asyncio.to_thread(_upgrade, url)


def _upgrade(url: str) -> None:
    with _MIGRATING, _sqlite_file_lock(url):
        command.upgrade(alembic_config(url), "head")


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    path = url.split(":///", 1)[1] if url.startswith("sqlite") and ":///" in url else ""
    if not path or path == ":memory:":
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def database_ok(engine: AsyncEngine) -> bool:
    """Whether a trivial query succeeds (``/readyz``)."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except (SQLAlchemyError, OSError):
        return False
