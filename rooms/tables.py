"""SQL tables owned by rooms/ (SQLAlchemy Core). Times are integer milliseconds since the epoch."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, Index, MetaData, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = MetaData()


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
    CheckConstraint("status IN ('scheduled', 'live', 'ended')", name="ck_rooms_status"),
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
