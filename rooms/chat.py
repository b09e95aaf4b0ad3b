"""Chat: send with limits, delete everywhere, recent history on join, a transcript written behind to SQL."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from rooms import tables
from rooms.engine import Engine, EngineUnavailable, History, now_ms
from rooms.errors import RoomError, forbidden, rate_limited, unavailable
from rooms.identity import Identity
from rooms.policy import ChatPolicy
from rooms.write_behind import WriteBehind


class ChatTranscript(WriteBehind):
    """Keeps the chat in SQL for reports and for rooms whose bus history was lost.

    Written behind: rows are batched and inserted every ``interval_s`` so chat latency never waits on
    the database. A message stays in the bus history until it is flushed, so nothing shown is lost.
    """

    def __init__(self, db: AsyncEngine, interval_s: float = 0.2, batch: int = 500) -> None:
        super().__init__(interval_s)
        self.db = db
        self.reads = tables.autocommit(db)
        self.batch = batch
        self._rows: list[dict[str, Any]] = []
        self._deletions: list[tuple[str, int, str]] = []

    def add(self, room_id: str, message: dict[str, Any]) -> None:
        self._rows.append({"room_id": room_id, **message})
        if len(self._rows) >= self.batch:
            self.wake()

    def delete(self, message_id: str, by_user: str) -> None:
        self._deletions.append((message_id, now_ms(), by_user))
        self.wake()

    def pending(self) -> str:
        return f"{len(self._rows)} messages and {len(self._deletions)} deletions"

    async def flush(self) -> None:
        rows, self._rows = self._rows, []
        deletions, self._deletions = self._deletions, []
        if not rows and not deletions:
            return
        try:
            async with self.db.begin() as conn:
                if rows:
                    await conn.execute(insert(tables.chat_messages), rows)
                for message_id, at, by in deletions:
                    await conn.execute(
                        update(tables.chat_messages)
                        .where(tables.chat_messages.c.id == message_id)
                        .values(deleted_at=at, deleted_by=by)
                    )
        except SQLAlchemyError:
            self._rows[:0] = rows
            self._deletions[:0] = deletions
            raise

    async def recent(self, room_id: str, limit: int) -> list[dict[str, Any]]:
        c = tables.chat_messages.c
        query = (
            select(c.id, c.user_id, c.name, c.role, c.text, c.ts)
            .where(c.room_id == room_id, c.deleted_at.is_(None))
            .order_by(c.ts.desc(), c.id.desc())
            .limit(limit)
        )
        async with self.reads.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
        rows.reverse()
        return rows

    async def exists(self, room_id: str, message_id: str) -> bool:
        if any(r["id"] == message_id and r["room_id"] == room_id for r in self._rows):
            return True
        c = tables.chat_messages.c
        async with self.reads.connect() as conn:
            row = await conn.execute(select(c.id).where(c.id == message_id, c.room_id == room_id))
            return row.first() is not None


class ChatService:
    """Sending and deleting chat messages in a room."""

    def __init__(self, engine: Engine, transcript: ChatTranscript, policy: ChatPolicy, history_limit: int) -> None:
        self.engine = engine
        self.transcript = transcript
        self.policy = policy
        self.history_limit = history_limit

    async def send(self, sender: Identity, text: str) -> dict[str, Any]:
        if not sender.grants.chat:
            raise forbidden("chat")
        text = text.strip()
        if not text:
            raise RoomError("too_long", "message is empty")
        if len(text) > self.policy.max_chars:
            raise RoomError("too_long", f"message is longer than {self.policy.max_chars} characters")
        capacity = self.policy.staff_capacity if sender.is_staff else self.policy.student_capacity
        try:
            wait_ms = await self.engine.take_token(
                f"chat:{sender.room_id}:{sender.user_id}", capacity, self.policy.window_s
            )
            if wait_ms:
                raise rate_limited(wait_ms)
            message = {"id": secrets.token_hex(8), **sender.member(), "text": text, "ts": now_ms()}
            pub = await self.engine.publish(sender.room_id, "chat.message", message)
        except EngineUnavailable:
            raise unavailable() from None
        message["ts"] = pub.ts
        self.transcript.add(sender.room_id, message)
        return {**message, "offset": pub.offset, "epoch": pub.epoch}

    async def delete(self, staff: Identity, message_id: str) -> None:
        if not staff.is_staff:
            raise forbidden("deleting messages")
        found = await self.transcript.exists(staff.room_id, message_id)
        try:
            if not found:
                history = await self.engine.history(staff.room_id, None, self.history_limit)
                found = any(p.type == "chat.message" and p.data.get("id") == message_id for p in history.publications)
            if not found:
                raise RoomError("not_found", "no such message in this room")
            await self.engine.publish(staff.room_id, "chat.deleted", {"id": message_id, "by": staff.user_id})
        except EngineUnavailable:
            raise unavailable() from None
        self.transcript.delete(message_id, staff.user_id)

    async def recent(self, room_id: str, history: History, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` messages. The bus history holds the newest in offset order (including what
        the transcript has not flushed yet); older ones, or all of them after Redis lost the history, come
        from the transcript. Deletions in either are applied."""
        in_history: list[dict[str, Any]] = []
        deleted: set[str] = set()
        for pub in history.publications:
            if pub.type == "chat.message":
                in_history.append(pub.data)
            elif pub.type == "chat.deleted":
                deleted.add(pub.data["id"])
        seen = {m["id"] for m in in_history}
        older = [m for m in await self.transcript.recent(room_id, limit) if m["id"] not in seen]
        return [m for m in older + in_history if m["id"] not in deleted][-limit:]
