"""Q&A: students ask and upvote, staff moderate, pin and answer (anchors: Zoom webinar Q&A, Slido).

The live state is in the engine's :class:`~rooms.qa_store.QaStore`; every change is a room-bus event, so
each instance's room view and each client fold the same events in the same order. SQL gets the questions
and votes written behind (:class:`~rooms.qa_recorder.QaRecorder`) for reports, and to rebuild the store
when it lost a room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from rooms.engine import Engine, EngineUnavailable, now_ms
from rooms.engine_memory import MemoryEngine
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity
from rooms.policy import QaPolicy
from rooms.qa_recorder import QaRecorder
from rooms.qa_store import MemoryQaStore, QaNotLoaded, QaSnapshot, QaStore, QuestionState, Transition
from rooms.service import Room

log = logging.getLogger(__name__)

T = TypeVar("T")
S = QuestionState

#: Moderation actions: the states each may start from, and the state it leads to.
ACTIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("approve", frozenset({S.PENDING}), S.PUBLISHED),
        Transition("dismiss", frozenset({S.PENDING, S.PUBLISHED}), S.DISMISSED),
        Transition("hide", frozenset({S.PENDING, S.PUBLISHED, S.ANSWERED, S.DISMISSED}), S.HIDDEN),
        Transition("reopen", frozenset({S.ANSWERED, S.DISMISSED, S.HIDDEN}), S.PUBLISHED),
        Transition("answered_live", frozenset({S.PUBLISHED}), S.ANSWERED),
    )
}
#: Answering in text; answering again replaces the answer.
ANSWER = Transition("answer", frozenset({S.PUBLISHED, S.ANSWERED}), S.ANSWERED)


def qa_store_for(engine: Engine) -> QaStore:
    """The Q&A store that goes with the engine."""
    if isinstance(engine, MemoryEngine):
        return MemoryQaStore(engine)
    from rooms.engine_redis import RedisEngine
    from rooms.qa_store_redis import RedisQaStore

    assert isinstance(engine, RedisEngine)
    return RedisQaStore(engine)


class QuestionPayments(Protocol):
    """Coins attached to questions (gifting/gifts.py implements it): held when asked, captured to the
    teacher when answered, released when dismissed, hidden, or left unanswered."""

    async def hold(self, asker: Identity, room: Room, question_id: str, coins: int) -> None: ...

    async def settle(self, room: Room, question_id: str, answered: bool) -> None: ...


@dataclass
class _Pump:
    again: bool = False  # votes arrived while a flush was under way


class QuestionService:
    """Asking, voting, moderating, pinning and answering questions in a room."""

    def __init__(self, store: QaStore, engine: Engine, recorder: QaRecorder, policy: QaPolicy) -> None:
        self.store = store
        self.engine = engine
        self.recorder = recorder
        self.policy = policy
        self._pumps: dict[str, _Pump] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._restoring: dict[str, asyncio.Future[None]] = {}
        self.payments: QuestionPayments | None = None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # students
    async def ask(self, asker: Identity, room: Room, text: str, anonymous: bool, coins: int = 0) -> dict[str, Any]:
        """Store a question: published at once if the room auto-approves, else pending for staff. With
        ``coins``, they are held from the asker's wallet until the question is answered or not."""
        if not asker.grants.ask:
            raise forbidden("asking questions")
        if coins and self.payments is None:
            raise RoomError("invalid", "paid questions are not available here")
        text = text.strip()
        if not text:
            raise RoomError("invalid", "the question is empty")
        if len(text) > self.policy.max_chars:
            raise RoomError("too_long", f"a question is at most {self.policy.max_chars} characters")
        interval = room.qa_ask_interval_s if room.qa_ask_interval_s is not None else self.policy.ask_interval_s
        if interval > 0 and not asker.is_staff:
            wait_ms = await self.engine.take_token(f"qa:ask:{asker.room_id}:{asker.user_id}", 1, interval)
            if wait_ms:
                raise RoomError(
                    "rate_limited", f"one question per {interval} s; try again later", retry_after_ms=wait_ms
                )
        now = now_ms()
        published = room.qa_auto_approve or asker.is_staff
        question_id = "q" + secrets.token_hex(8)
        question: dict[str, Any] = {
            "id": question_id,
            "text": text,
            "anonymous": anonymous,
            "author": asker.member(),
            "state": (S.PUBLISHED if published else S.PENDING).value,
            "answer": None,
            "ts": now,
            "published_ts": now if published else None,
            "updated_ts": now,
            "v": 1,
            "paid": coins,
        }
        if coins and self.payments is not None:
            await self.payments.hold(asker, room, question_id, coins)
        try:
            change = await self._loaded(asker.room_id, lambda: self.store.ask(asker.room_id, question))
        except BaseException:
            if coins and self.payments is not None:
                await self.payments.settle(room, question_id, answered=False)
            raise
        self.recorder.question(asker.room_id, change.question)
        return change.question

    async def vote(self, voter: Identity, question_id: str, up: bool) -> dict[str, Any]:
        """Add (``up``) or take back the voter's one vote; repeating either changes nothing."""
        if not voter.grants.ask:
            raise forbidden("voting on questions")
        room_id = voter.room_id
        result = await self._loaded(room_id, lambda: self.store.vote(room_id, question_id, voter.user_id, up))
        if result.changed:
            self.recorder.vote(room_id, question_id, voter.user_id, up, result.seq)
            self._kick(room_id)
        return {"id": question_id, "votes": result.votes, "voted": up, "seq": result.seq}

    # staff
    async def moderate(self, staff: Identity, room: Room, question_id: str, action: str) -> dict[str, Any]:
        """approve, dismiss, hide, reopen or answered_live (see :data:`ACTIONS`)."""
        if not staff.is_staff:
            raise forbidden("moderating questions")
        if action not in ACTIONS:
            raise RoomError("invalid", f"action must be one of {', '.join(ACTIONS)}")
        patch: dict[str, Any] = {}
        if action == "reopen":
            patch["answer"] = None
        elif action == "answered_live":
            patch["answer"] = self._answer(staff, None, private=False, live=True)
        return await self._change(room, question_id, ACTIONS[action], patch)

    async def answer(self, staff: Identity, room: Room, question_id: str, text: str, private: bool) -> dict[str, Any]:
        """Answer in text, public to the room or private to the asker; answering again replaces it."""
        if not staff.is_staff:
            raise forbidden("answering questions")
        text = text.strip()
        if not text:
            raise RoomError("invalid", "the answer is empty")
        if len(text) > self.policy.answer_max_chars:
            raise RoomError("too_long", f"an answer is at most {self.policy.answer_max_chars} characters")
        patch = {"answer": self._answer(staff, text, private=private, live=False)}
        return await self._change(room, question_id, ANSWER, patch)

    async def pin(self, staff: Identity, question_id: str | None) -> dict[str, Any]:
        """Pin a published or answered question as "now answering"; ``None`` unpins."""
        if not staff.is_staff:
            raise forbidden("pinning questions")
        room_id = staff.room_id
        await self._loaded(room_id, lambda: self.store.pin(room_id, question_id))
        return {"pin": question_id}

    # reads
    async def snapshot(self, room_id: str) -> QaSnapshot:
        return await self._loaded(room_id, lambda: self.store.snapshot(room_id))

    async def voted(self, room_id: str, user_id: str, question_ids: list[str]) -> set[str]:
        return await self._loaded(room_id, lambda: self.store.voted(room_id, user_id, question_ids))

    async def export(self, room_id: str) -> list[dict[str, Any]]:
        """The room's questions as SQL has them, after writing out what this instance still holds."""
        await self.recorder.flush()
        return await self.recorder.export(room_id)

    # internals
    @staticmethod
    def _answer(staff: Identity, text: str | None, *, private: bool, live: bool) -> dict[str, Any]:
        by = {"user_id": staff.user_id, "name": staff.name}
        return {"text": text, "private": private, "live": live, "by": by, "ts": now_ms()}

    async def _change(self, room: Room, question_id: str, move: Transition, patch: dict[str, Any]) -> dict[str, Any]:
        room_id = room.id
        change = await self._loaded(room_id, lambda: self.store.change(room_id, question_id, move, patch, now_ms()))
        self.recorder.question(room_id, change.question)
        if change.question.get("paid") and self.payments is not None:
            # Settled once: later moves find the hold closed and change nothing.
            if move.to is S.ANSWERED:
                await self.payments.settle(room, question_id, answered=True)
            elif move.to in (S.DISMISSED, S.HIDDEN):
                await self.payments.settle(room, question_id, answered=False)
        return change.question

    async def _loaded(self, room_id: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except QaNotLoaded:
            await self.restore(room_id)
            return await call()

    async def restore(self, room_id: str) -> None:
        """Load the room's questions and votes from SQL into the store (once, however many wait)."""
        pending = self._restoring.get(room_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._restoring[room_id] = future
        try:
            await self.recorder.flush()
            data = await self.recorder.load(room_id)
            if await self.store.restore(room_id, data):
                log.info("Q&A of room %s loaded from SQL: %d questions", room_id, len(data.questions))
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._restoring[room_id]

    def _kick(self, room_id: str) -> None:
        """Publish vote counts soon: at once if the room's last count publication (from any instance) is
        old enough, else when ``vote_flush_ms`` has passed since it; the votes meanwhile go out together."""
        pump = self._pumps.get(room_id)
        if pump is not None:
            pump.again = True
            return
        pump = self._pumps[room_id] = _Pump()
        task = asyncio.create_task(self._pump(room_id, pump), name=f"qa-votes-{room_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, room_id: str, pump: _Pump) -> None:
        try:
            while True:
                pump.again = False
                try:
                    flush = await self._loaded(
                        room_id, lambda: self.store.flush_votes(room_id, self.policy.vote_flush_ms)
                    )
                except EngineUnavailable:
                    await asyncio.sleep(0.5)  # the counts stay dirty in the store; try again
                    continue
                if flush.retry_in_ms:
                    # Counts went out less than vote_flush_ms ago (from here or another instance).
                    await asyncio.sleep(flush.retry_in_ms / 1000)
                    continue
                if not pump.again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Q&A vote counts of room %s not published", room_id)
        finally:
            if self._pumps.get(room_id) is pump:
                del self._pumps[room_id]
