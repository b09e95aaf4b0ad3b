"""SQL tables owned by rooms/ (SQLAlchemy Core). Times are integer milliseconds since the epoch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

metadata = MetaData()


def sqlite_engine(url: str, **options: Any) -> AsyncEngine:
    """An async SQLite engine whose every connection has WAL, a busy timeout and foreign keys on."""
    engine = create_async_engine(url, connect_args={"timeout": 30}, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def sqlite_sync_engine(db: AsyncEngine, **options: Any) -> Engine:
    """A synchronous engine (the standard library's driver) on ``db``'s SQLite database, with the same
    connection setup: for a thread that runs its statements itself instead of through aiosqlite's."""
    engine = create_engine(db.url.set(drivername="sqlite"), connect_args={"timeout": 30}, **options)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(conn: DBAPIConnection, _: ConnectionPoolEntry) -> None:
    cursor = conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def engine_like(db: AsyncEngine, **options: Any) -> AsyncEngine:
    """Another engine on ``db``'s database with the same connection setup (e.g. for another event loop)."""
    if db.dialect.name == "sqlite":
        return sqlite_engine(db.url.render_as_string(hide_password=False), **options)
    return create_async_engine(db.url, **options)


def autocommit(db: AsyncEngine) -> AsyncEngine:
    """The same pool without BEGIN/ROLLBACK around each statement: for single-statement reads, which
    otherwise pay three round trips instead of one."""
    return db.execution_options(isolation_level="AUTOCOMMIT")


rooms = Table(
    "rooms",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("scheduled_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("ended_at", BigInteger, nullable=True),
    Column("qa_auto_approve", Boolean, nullable=False, server_default=false()),
    # NULL: the deployment's default (LIVE_QA_ASK_INTERVAL_S).
    Column("qa_ask_interval_s", Integer, nullable=True),
    # Who receives the room's gifts and tips: set by the host, or the first teacher to open the room.
    Column("teacher_id", String(64), nullable=True),
    CheckConstraint("status IN ('scheduled', 'live', 'ended')", name="ck_rooms_status"),
    CheckConstraint("qa_ask_interval_s IS NULL OR qa_ask_interval_s BETWEEN 0 AND 3600", name="ck_rooms_qa_interval"),
)

room_bans = Table(
    "room_bans",
    metadata,
    Column("room_id", String(64), ForeignKey("rooms.id"), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("reason", String(200), nullable=False),
    Column("by_user", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

chat_messages = Table(
    "chat_messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("room_id", String(64), ForeignKey("rooms.id"), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
    Column("deleted_by", String(64), nullable=True),
    Index("ix_chat_messages_room_ts", "room_id", "ts"),
)

# Q&A, written behind from the live state (rooms/qa_recorder.py). ``version`` orders writes of one question
# from different instances: a row is only overwritten by a newer version.
questions = Table(
    "questions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("room_id", String(64), ForeignKey("rooms.id"), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("anonymous", Boolean, nullable=False),
    Column("text", Text, nullable=False),
    Column("state", String(16), nullable=False),
    # Coins attached by the asker (a paid question), held until it is answered or not.
    Column("paid", BigInteger, nullable=False, server_default="0"),
    Column("answer_text", Text, nullable=True),
    Column("answer_private", Boolean, nullable=True),
    Column("answer_live", Boolean, nullable=True),
    Column("answered_by", String(64), nullable=True),
    Column("answered_by_name", String(64), nullable=True),
    Column("answered_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("published_at", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    CheckConstraint("state IN ('pending', 'published', 'answered', 'dismissed', 'hidden')", name="ck_questions_state"),
    Index("ix_questions_room_created", "room_id", "created_at"),
)

# One row per (question, user) who ever voted; ``voted`` false after taking it back. ``seq`` is the room's
# vote sequence at the time, so a late write from another instance never undoes a newer one.
question_votes = Table(
    "question_votes",
    metadata,
    Column("question_id", String(32), primary_key=True),  # no FK: the question row may be written later
    Column("user_id", String(64), primary_key=True),
    Column("room_id", String(64), nullable=False),
    Column("voted", Boolean, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_question_votes_room", "room_id"),
)
