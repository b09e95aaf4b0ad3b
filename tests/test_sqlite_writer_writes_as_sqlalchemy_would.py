"""SQLite's ledger writer runs its statements itself (gifting/writer_thread.py): through the standard
library's driver, and for a batch's many rows straight through ``executemany``. What it writes, and the
errors it raises, must be what SQLAlchemy's own path gives: Python-side defaults and type conversions
applied, and a constraint violation raised as SQLAlchemy's ``IntegrityError`` (the ledger refuses the
operation at fault by it)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, Time, TypeDecorator, bindparam, insert, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from gifting.writer_thread import WriterThread, execute_many
from rooms.tables import sqlite_engine


class Lower(TypeDecorator[str]):
    """A type that converts what is written (as Enum, JSON or DateTime do on SQLite)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value.lower() if value is not None else None


metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", String, primary_key=True),
    Column("n", Integer, nullable=False),
)
stamped = Table(
    "stamped",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", Lower, nullable=False),
    Column("kind", String, nullable=False, default="plain"),  # a Python-side default
)
timed = Table(
    "timed",
    metadata,
    Column("id", String, primary_key=True),
    Column("at", Time, nullable=False),  # generic Time has no converter; SQLite's has (the driver has none)
)
INSERT_ITEM = insert(items)
INSERT_TIMED = insert(timed)
INSERT_STAMPED = insert(stamped)
ADD_N = sqlite.insert(items).on_conflict_do_update(index_elements=["id"], set_={"n": items.c.n + 1})
ADD_IF_POSITIVE = text("UPDATE items SET n = n + :d WHERE id = :id AND n + :d > 0")  # a parameter used twice


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = sqlite_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def test_rows_defaults_conversions_and_upserts_are_written(db) -> None:  # type: ignore[no-untyped-def]
    writer = WriterThread(db)

    async def write(conn) -> None:  # type: ignore[no-untyped-def]
        await execute_many(conn, INSERT_ITEM, [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
        await execute_many(conn, INSERT_ITEM, [])
        await execute_many(conn, ADD_N, [{"id": "a", "n": 0}, {"id": "c", "n": 7}])
        changed = await execute_many(
            conn, ADD_IF_POSITIVE, [{"id": "b", "d": 5}, {"id": "c", "d": -7}, {"id": "x", "d": 1}]
        )
        assert changed == 1, "the rows changed in all: b; c would reach 0, x does not exist"
        await execute_many(conn, INSERT_STAMPED, [{"id": "s1", "name": "Ana"}])
        await execute_many(conn, INSERT_STAMPED, [{"id": "s2", "name": "BO", "kind": "x"}])
        await execute_many(conn, INSERT_TIMED, [{"id": "t1", "at": dt.time(9, 30)}])
        some = text("UPDATE items SET n = n * 10 WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
        assert await execute_many(conn, some, [{"ids": ["a", "c"]}]) == 2, "an expanding IN list is rendered"

    try:
        await writer.run(write)
        async with db.connect() as conn:
            assert (await conn.execute(select(items.c.id, items.c.n).order_by(items.c.id))).all() == [
                ("a", 20),
                ("b", 7),
                ("c", 70),
            ]
            got = (await conn.execute(select(stamped).order_by(stamped.c.id))).all()
            assert got == [("s1", "ana", "plain"), ("s2", "bo", "x")]
            assert (await conn.execute(select(timed))).all() == [("t1", dt.time(9, 30))]
    finally:
        await writer.stop()


async def test_a_violation_is_sqlalchemys_integrity_error_and_rolls_back(db) -> None:  # type: ignore[no-untyped-def]
    writer = WriterThread(db)

    async def write(conn) -> None:  # type: ignore[no-untyped-def]
        await execute_many(conn, INSERT_ITEM, [{"id": "z", "n": 1}])
        await execute_many(conn, INSERT_ITEM, [{"id": "y", "n": 1}, {"id": "z", "n": 2}])

    try:
        with pytest.raises(IntegrityError, match="UNIQUE"):
            await writer.run(write)
        async with db.connect() as conn:
            assert (await conn.execute(select(items))).all() == [], "the whole transaction rolled back"
    finally:
        await writer.stop()
