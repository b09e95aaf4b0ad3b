"""The SQL layer behaves the same on SQLite and PostgreSQL: migrations (also two instances migrating at
once), rooms and their transitions, bans, and the chat transcript written behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, inspect, text

from gifting import tables as gifting_tables
from live.config import normalize_database_url
from live.db import create_engine, migrate
from rooms import tables as rooms_tables
from rooms.chat import ChatTranscript
from rooms.engine_memory import MemoryEngine
from rooms.errors import RoomError
from rooms.identity import Grants, Identity, Role
from rooms.service import RoomService, RoomStatus


async def test_rooms_bans_and_transcript(db_url: str) -> None:
    url = normalize_database_url(db_url)
    await asyncio.gather(migrate(url), migrate(url))  # instances starting together
    await migrate(url)  # and again: nothing to do
    db = create_engine(url)
    engine = MemoryEngine()
    rooms = RoomService(db, engine)
    try:
        room = await rooms.create("Biology", room_id="bio-1", scheduled_at=1_900_000_000_000)
        assert room.status is RoomStatus.SCHEDULED
        with pytest.raises(RoomError) as dup:
            await rooms.create("Biology again", room_id="bio-1")
        assert dup.value.code == "conflict"
        with pytest.raises(RoomError) as bad:
            await rooms.create("  ", room_id="bio-2")
        assert bad.value.code == "invalid"

        live = await rooms.go_live("bio-1")
        assert live.status is RoomStatus.LIVE and live.started_at is not None
        assert (await rooms.go_live("bio-1")).started_at == live.started_at, "going live twice changes nothing"

        teacher = Identity("t1", "T", "bio-1", Role.TEACHER, Grants.for_role(Role.TEACHER))
        await rooms.remove_member(teacher, "s9", "spam")
        await rooms.remove_member(teacher, "s9", "spam again")  # idempotent
        assert await rooms.banned_users("bio-1") == {"s9"}
        with pytest.raises(RoomError) as banned:
            await rooms.admit(Identity("s9", "S", "bio-1", Role.STUDENT, Grants.for_role(Role.STUDENT)))
        assert banned.value.code == "banned"

        transcript = ChatTranscript(db)
        for i in range(3):
            transcript.add(
                "bio-1",
                {"id": f"m{i}", "user_id": "t1", "name": "T", "role": "teacher", "text": f"hello {i}", "ts": 1000 + i},
            )
        assert await transcript.exists("bio-1", "m2"), "unflushed messages are found too"
        await transcript.flush()
        transcript.delete("m1", "t1")
        await transcript.flush()
        assert [m["text"] for m in await transcript.recent("bio-1", 10)] == ["hello 0", "hello 2"]
        assert [m["id"] for m in await transcript.recent("bio-1", 1)] == ["m2"]

        ended = await rooms.end("bio-1")
        assert ended.status is RoomStatus.ENDED
        with pytest.raises(RoomError) as after:
            await rooms.go_live("bio-1")
        assert after.value.code == "room_ended"
        assert [r.id for r in await rooms.list(RoomStatus.ENDED)] == ["bio-1"]

        # The database itself refuses a status the code does not know.
        with pytest.raises(Exception, match=r"(?i)check"):
            async with db.begin() as conn:
                await conn.execute(text("UPDATE rooms SET status = 'paused' WHERE id = 'bio-1'"))
    finally:
        await db.dispose()


async def test_migrations_build_the_tables_the_code_declares(db_url: str) -> None:
    """Alembic's migrations and the SQLAlchemy tables in rooms/ and gifting/ describe the same schema:
    every table, column, nullability and CHECK constraint."""
    url = normalize_database_url(db_url)
    await migrate(url)
    engine = create_engine(url)

    def read(sync_conn: Any) -> dict[str, Any]:
        inspector = inspect(sync_conn)
        out = {}
        for name in inspector.get_table_names():
            if name == "alembic_version":
                continue
            columns = {c["name"]: c["nullable"] for c in inspector.get_columns(name)}
            checks = {c["name"] for c in inspector.get_check_constraints(name) if c.get("name")}
            out[name] = (columns, checks)
        return out

    try:
        async with engine.connect() as conn:
            migrated = await conn.run_sync(read)
    finally:
        await engine.dispose()
    declared = {}
    for metadata in (rooms_tables.metadata, gifting_tables.metadata):
        for table in metadata.sorted_tables:
            columns = {c.name: c.nullable for c in table.columns}
            checks = {c.name for c in table.constraints if isinstance(c, CheckConstraint) and c.name}
            declared[table.name] = (columns, checks)
    assert migrated == declared
