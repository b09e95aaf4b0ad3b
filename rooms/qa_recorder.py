"""Q&A in SQL, written behind the live store: the record for reports, and what a lost store is rebuilt from.

Question rows carry the question's version and vote rows the room's vote sequence number; an upsert only
replaces a row with a newer one, so batches written by different instances in any order end with the
newest state of each question and each vote.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from rooms import tables
from rooms.engine import now_ms
from rooms.qa_store import Restore
from rooms.write_behind import WriteBehind


def question_row(room_id: str, q: dict[str, Any]) -> dict[str, Any]:
    """A store record as a ``questions`` row."""
    answer = q.get("answer") or {}
    by = answer.get("by") or {}
    return {
        "id": q["id"],
        "room_id": room_id,
        "user_id": q["author"]["user_id"],
        "name": q["author"]["name"],
        "role": q["author"]["role"],
        "anonymous": q["anonymous"],
        "text": q["text"],
        "state": q["state"],
        "paid": int(q.get("paid") or 0),
        "answer_text": answer.get("text"),
        "answer_private": answer.get("private") if answer else None,
        "answer_live": answer.get("live") if answer else None,
        "answered_by": by.get("user_id"),
        "answered_by_name": by.get("name"),
        "answered_at": answer.get("ts"),
        "created_at": q["ts"],
        "published_at": q.get("published_ts"),
        "updated_at": q["updated_ts"],
        "version": q["v"],
    }


def question_record(row: Any) -> dict[str, Any]:
    """A ``questions`` row as a store record (the inverse of :func:`question_row`)."""
    m = row._mapping
    answer = None
    if m["answered_at"] is not None:
        answer = {
            "text": m["answer_text"],
            "private": bool(m["answer_private"]),
            "live": bool(m["answer_live"]),
            "by": {"user_id": m["answered_by"], "name": m["answered_by_name"]},
            "ts": m["answered_at"],
        }
    return {
        "id": m["id"],
        "text": m["text"],
        "anonymous": bool(m["anonymous"]),
        "author": {"user_id": m["user_id"], "name": m["name"], "role": m["role"]},
        "state": m["state"],
        "answer": answer,
        "ts": m["created_at"],
        "published_ts": m["published_at"],
        "updated_ts": m["updated_at"],
        "v": m["version"],
        "paid": int(m["paid"]),
    }


class QaRecorder(WriteBehind):
    """Batches question and vote writes and flushes them every ``interval_s``."""

    def __init__(self, db: AsyncEngine, interval_s: float = 0.2) -> None:
        super().__init__(interval_s)
        self.db = db
        self.reads = tables.autocommit(db)
        self._questions: dict[str, dict[str, Any]] = {}
        self._votes: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def pending(self) -> str:
        return f"{len(self._questions)} question and {len(self._votes)} vote writes"

    def question(self, room_id: str, q: dict[str, Any]) -> None:
        row = question_row(room_id, q)
        kept = self._questions.get(row["id"])
        if kept is None or kept["version"] < row["version"]:
            self._questions[row["id"]] = row

    def vote(self, room_id: str, question_id: str, user_id: str, voted: bool, seq: int) -> None:
        kept = self._votes.get((question_id, user_id))
        if kept is None or kept["seq"] < seq:
            self._votes[(question_id, user_id)] = {
                "question_id": question_id,
                "user_id": user_id,
                "room_id": room_id,
                "voted": voted,
                "seq": seq,
                "updated_at": now_ms(),
            }

    async def flush(self) -> None:
        async with self._lock:
            questions, self._questions = self._questions, {}
            votes, self._votes = self._votes, {}
            if not questions and not votes:
                return
            try:
                async with self.db.begin() as conn:
                    if questions:
                        await self._upsert(conn, tables.questions, ["id"], list(questions.values()), "version")
                    if votes:
                        keys = ["question_id", "user_id"]
                        await self._upsert(conn, tables.question_votes, keys, list(votes.values()), "seq")
            except SQLAlchemyError:
                # Back in the queue, unless a newer write of the same question or vote came meanwhile.
                for key, row in questions.items():
                    self._questions.setdefault(key, row)
                for vote_key, row in votes.items():
                    self._votes.setdefault(vote_key, row)
                raise

    async def _upsert(
        self, conn: AsyncConnection, table: Any, keys: list[str], rows: list[dict[str, Any]], guard: str
    ) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c: stmt.excluded[c] for c in rows[0] if c not in keys},
            where=table.c[guard] < stmt.excluded[guard],
        )
        await conn.execute(stmt, rows)

    async def load(self, room_id: str) -> Restore:
        """Everything SQL has for the room, to rebuild the live store."""
        q, v = tables.questions, tables.question_votes
        async with self.reads.connect() as conn:
            rows = await conn.execute(select(q).where(q.c.room_id == room_id).order_by(q.c.created_at))
            questions = [question_record(r) for r in rows]
            voters = await conn.execute(select(v.c.question_id, v.c.user_id).where(v.c.room_id == room_id, v.c.voted))
            seq = (await conn.execute(select(func.max(v.c.seq)).where(v.c.room_id == room_id))).scalar()
        return Restore(questions, [(r[0], r[1]) for r in voters], int(seq or 0))

    async def export(self, room_id: str) -> list[dict[str, Any]]:
        """The room's questions for reports, oldest first, with their vote counts."""
        q, v = tables.questions, tables.question_votes
        votes = (
            select(v.c.question_id, func.count().label("votes"))
            .where(v.c.room_id == room_id, v.c.voted)
            .group_by(v.c.question_id)
            .subquery()
        )
        query = (
            select(q, func.coalesce(votes.c.votes, 0).label("votes"))
            .outerjoin(votes, votes.c.question_id == q.c.id)
            .where(q.c.room_id == room_id)
            .order_by(q.c.created_at, q.c.id)
        )
        async with self.reads.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]
