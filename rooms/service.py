"""Rooms: create, schedule, go live, end; bans. SQL is the record, the room bus tells every instance."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from rooms import tables
from rooms.engine import Engine, EngineUnavailable, now_ms
from rooms.errors import RoomError, forbidden, unavailable
from rooms.identity import ROOM_ID_RE, Identity


class RoomStatus(StrEnum):
    """A room's lifecycle: scheduled, then live, then ended (final)."""

    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


@dataclass(frozen=True)
class Room:
    """A room as SQL keeps it and the wire shows it (times in ms)."""

    id: str
    title: str
    status: RoomStatus
    created_at: int
    scheduled_at: int | None = None
    started_at: int | None = None
    ended_at: int | None = None
    #: Q&A: publish questions at once instead of holding them for moderation.
    qa_auto_approve: bool = False
    #: Q&A: seconds between two questions of one student; ``None`` is the deployment's default.
    qa_ask_interval_s: int | None = None
    #: Who receives gifts and tips in this room.
    teacher_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_row(cls, row: Any) -> Room:
        return cls.from_dict(row._mapping)

    @classmethod
    def from_dict(cls, m: Any) -> Room:
        return cls(
            id=m["id"],
            title=m["title"],
            status=RoomStatus(m["status"]),
            created_at=m["created_at"],
            scheduled_at=m["scheduled_at"],
            started_at=m["started_at"],
            ended_at=m["ended_at"],
            qa_auto_approve=bool(m.get("qa_auto_approve", False)),
            qa_ask_interval_s=m.get("qa_ask_interval_s"),
            teacher_id=m.get("teacher_id"),
        )


class RoomService:
    """Room lifecycle and bans; every change that members must see is published on the room bus."""

    def __init__(self, db: AsyncEngine, engine: Engine) -> None:
        self.db = db
        self.reads = tables.autocommit(db)
        self.engine = engine
        #: Called with the room id when a lesson ends (gifting/ gives back coins still held for it).
        self.ending_hooks: list[Callable[[str], Awaitable[object]]] = []

    async def create(
        self,
        title: str,
        room_id: str | None = None,
        scheduled_at: int | None = None,
        *,
        qa_auto_approve: bool = False,
        qa_ask_interval_s: int | None = None,
        teacher_id: str | None = None,
    ) -> Room:
        title = title.strip()
        if not 1 <= len(title) <= 200:
            raise RoomError("invalid", "title must be 1-200 characters")
        if room_id is None:
            room_id = secrets.token_hex(5)
        elif not ROOM_ID_RE.match(room_id):
            raise RoomError(
                "invalid", "id must be 3-64 characters of a-z, 0-9 and '-', starting with a letter or digit"
            )
        if scheduled_at is not None and not 0 <= scheduled_at < 2**53:
            raise RoomError("invalid", "scheduled_at must be a time in milliseconds since the epoch")
        if qa_ask_interval_s is not None and not 0 <= qa_ask_interval_s <= 3600:
            raise RoomError("invalid", "qa_ask_interval_s must be 0-3600 seconds")
        room = Room(
            room_id,
            title,
            RoomStatus.SCHEDULED,
            now_ms(),
            scheduled_at=scheduled_at,
            qa_auto_approve=qa_auto_approve,
            qa_ask_interval_s=qa_ask_interval_s,
            teacher_id=teacher_id,
        )
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(tables.rooms).values(**room.to_dict()))
        except IntegrityError:
            raise RoomError("conflict", f"room {room_id!r} already exists") from None
        return room

    async def get(self, room_id: str) -> Room | None:
        async with self.reads.connect() as conn:
            row = (await conn.execute(select(tables.rooms).where(tables.rooms.c.id == room_id))).first()
        return Room.from_row(row) if row is not None else None

    async def require(self, room_id: str) -> Room:
        room = await self.get(room_id)
        if room is None:
            raise RoomError("not_found", f"no room {room_id!r}")
        return room

    async def list(self, status: RoomStatus | None = None, limit: int = 500) -> list[Room]:
        query = select(tables.rooms).order_by(tables.rooms.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(tables.rooms.c.status == status.value)
        async with self.reads.connect() as conn:
            return [Room.from_row(r) for r in await conn.execute(query)]

    async def admit(self, identity: Identity) -> Room:
        """The room a token opens. Staff tokens create a missing room, as LiveKit auto-creates rooms."""
        room, banned = await self._room_and_ban(identity.room_id, identity.user_id)
        if room is None:
            if not identity.is_staff:
                raise RoomError("room_not_found", "this room does not exist")
            try:
                room = await self.create(identity.room_id, room_id=identity.room_id)
            except RoomError as exc:
                if exc.code != "conflict":
                    raise
                room = await self.require(identity.room_id)
        check_admission(room, banned)
        return room

    async def require_admitted(self, identity: Identity) -> Room:
        """The token's room if it exists and admits the token's user (not ended, not removed from it)."""
        room, banned = await self._room_and_ban(identity.room_id, identity.user_id)
        if room is None:
            raise RoomError("room_not_found", "this room does not exist")
        check_admission(room, banned)
        return room

    async def _room_and_ban(self, room_id: str, user_id: str) -> tuple[Room | None, bool]:
        """One round trip at connect time: the room, and whether this user is banned from it."""
        r, b = tables.rooms, tables.room_bans
        query = (
            select(r, b.c.user_id.label("banned_user"))
            .outerjoin(b, (b.c.room_id == r.c.id) & (b.c.user_id == user_id))
            .where(r.c.id == room_id)
        )
        async with self.reads.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None, False
        return Room.from_row(row), row._mapping["banned_user"] is not None

    async def go_live(self, room_id: str, actor: Identity | None = None) -> Room:
        """Start the lesson; ``actor`` is the staff member asking, ``None`` for the admin API."""
        _require_staff(actor, "starting the lesson")
        return await self._transition(room_id, RoomStatus.LIVE)

    async def end(self, room_id: str, actor: Identity | None = None) -> Room:
        """End the lesson: the ending hooks run, then every connection in the room, on every instance,
        is closed."""
        _require_staff(actor, "ending the lesson")
        room = await self.require(room_id)
        if room.status is not RoomStatus.ENDED:
            # Before the end is announced: it closes every connection, the one asking included.
            for hook in self.ending_hooks:
                await hook(room_id)
        return await self._transition(room_id, RoomStatus.ENDED)

    async def _transition(self, room_id: str, status: RoomStatus) -> Room:
        room = await self.require(room_id)
        if room.status is RoomStatus.ENDED:
            raise RoomError("room_ended", "this lesson has ended")
        if room.status is status:
            return room
        now = now_ms()
        changes: dict[str, Any] = {"status": status.value}
        changes["started_at" if status is RoomStatus.LIVE else "ended_at"] = now
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(tables.rooms)
                .where(tables.rooms.c.id == room_id, tables.rooms.c.status == room.status.value)
                .values(**changes)
            )
        updated = await self.require(room_id)
        if result.rowcount == 1:
            await self._announce(room_id, "room.status", updated.to_dict())
        return updated

    async def update_settings(
        self,
        room_id: str,
        *,
        auto_approve: bool | None = None,
        ask_interval_s: int | None = None,
        teacher_id: str | None = None,
        actor: Identity | None = None,
    ) -> Room:
        """Change the room's Q&A settings, or its teacher (who receives gifts and tips); every instance
        learns them through a ``room.status`` event."""
        _require_staff(actor, "changing room settings")
        changes: dict[str, Any] = {}
        if auto_approve is not None:
            changes["qa_auto_approve"] = auto_approve
        if ask_interval_s is not None:
            if not 0 <= ask_interval_s <= 3600:
                raise RoomError("invalid", "ask_interval_s must be 0-3600 seconds")
            changes["qa_ask_interval_s"] = ask_interval_s
        if teacher_id is not None:
            changes["teacher_id"] = teacher_id
        room = await self.require(room_id)
        if room.status is RoomStatus.ENDED:
            raise RoomError("room_ended", "this lesson has ended")
        if not changes:
            return room
        async with self.db.begin() as conn:
            await conn.execute(update(tables.rooms).where(tables.rooms.c.id == room_id).values(**changes))
        updated = await self.require(room_id)
        await self._announce(room_id, "room.status", updated.to_dict())
        return updated

    async def claim_teacher(self, room_id: str, user_id: str) -> Room:
        """Make ``user_id`` the room's teacher if it has none yet (the first teacher to open it)."""
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(tables.rooms)
                .where(tables.rooms.c.id == room_id, tables.rooms.c.teacher_id.is_(None))
                .values(teacher_id=user_id)
            )
        room = await self.require(room_id)
        if result.rowcount == 1:
            await self._announce(room_id, "room.status", room.to_dict())
        return room

    async def banned_users(self, room_id: str) -> set[str]:
        b = tables.room_bans
        async with self.reads.connect() as conn:
            return {r[0] for r in await conn.execute(select(b.c.user_id).where(b.c.room_id == room_id))}

    async def remove_member(self, staff: Identity, user_id: str, reason: str) -> None:
        """Ban ``user_id`` from the staff member's room and disconnect them on every instance."""
        _require_staff(staff, "removing members")
        if user_id == staff.user_id:
            raise RoomError("invalid", "you cannot remove yourself")
        reason = reason.strip() or "removed by staff"
        try:
            async with self.db.begin() as conn:
                await conn.execute(
                    insert(tables.room_bans).values(
                        room_id=staff.room_id,
                        user_id=user_id,
                        reason=reason,
                        by_user=staff.user_id,
                        created_at=now_ms(),
                    )
                )
        except IntegrityError:
            pass  # already banned: still tell every instance, a connection may have slipped in
        await self._announce(
            staff.room_id, "member.removed", {"user_id": user_id, "reason": reason, "by": staff.user_id}
        )

    async def _announce(self, room_id: str, type: str, data: dict[str, Any]) -> None:
        try:
            await self.engine.publish(room_id, type, data)
        except EngineUnavailable:
            raise unavailable() from None


def _require_staff(actor: Identity | None, what: str) -> None:
    if actor is not None and not actor.is_staff:
        raise forbidden(what)


def check_admission(room: Room, banned: bool) -> None:
    """The rules for entering a room, wherever the room and the ban were read from."""
    if room.status is RoomStatus.ENDED:
        raise RoomError("room_ended", "this lesson has ended")
    if banned:
        raise RoomError("banned", "you were removed from this room")
