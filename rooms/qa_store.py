"""Live Q&A state shared by all instances: questions, their states, votes and the pinned question.

Every change is checked and applied in one atomic step together with the room-bus publication that
announces it (a Lua script on Redis, one uninterrupted step in the memory engine), so the order of
offsets is the order of changes: every instance folds the same events in the same order and ends with
the same state. Vote counts are not published per vote: votes mark their question dirty, and
:meth:`QaStore.flush_votes` publishes the current counts of all dirty questions at once.

The store is hot state (DESIGN.md "Data rules"); SQL holds the record, written behind. When the store
has lost a room (Redis restarted), every call raises :class:`QaNotLoaded` and the service restores the
room from SQL with :meth:`QaStore.restore` first.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rooms import wire_json
from rooms.engine import Publication, StreamPosition
from rooms.engine_memory import MemoryEngine
from rooms.errors import RoomError


class QuestionState(StrEnum):
    """``pending → published → answered | dismissed``; ``hidden`` from any state; reopen → published."""

    PENDING = "pending"
    PUBLISHED = "published"
    ANSWERED = "answered"
    DISMISSED = "dismissed"
    HIDDEN = "hidden"

    @property
    def visible(self) -> bool:
        """Shown to students (and open to votes)."""
        return self in (QuestionState.PUBLISHED, QuestionState.ANSWERED)


@dataclass(frozen=True)
class Transition:
    """A named move of a question: from any of ``allowed_from`` to ``to``."""

    action: str
    allowed_from: frozenset[QuestionState]
    to: QuestionState


class QaNotLoaded(Exception):
    """The store holds nothing for this room (new, or lost with Redis): restore it from SQL first."""


@dataclass(frozen=True)
class VoteResult:
    """The outcome of one vote: whether it changed anything, the count after it, and the room's vote
    sequence number (it orders vote writes in SQL and identifies the first count publication after it)."""

    changed: bool
    votes: int
    seq: int


@dataclass(frozen=True)
class Change:
    """A question after a change, with the publication that announced it."""

    question: dict[str, Any]
    publication: Publication


@dataclass(frozen=True)
class Flush:
    """The result of :meth:`QaStore.flush_votes`: the count publication, or ``None`` when there was
    nothing to publish or when the room's last count publication (by any instance) was less than the
    minimum interval ago; then ``retry_in_ms`` says when to try again."""

    publication: Publication | None
    retry_in_ms: int = 0


@dataclass
class QaSnapshot:
    """All of a room's questions (with ``votes``) and the pinned id, as of ``position`` on the room bus."""

    questions: dict[str, dict[str, Any]]
    pin: str | None
    position: StreamPosition


@dataclass
class Restore:
    """What SQL knows of a room, to load into an empty store."""

    questions: list[dict[str, Any]] = field(default_factory=list)
    voters: list[tuple[str, str]] = field(default_factory=list)  # (question id, user id)
    seq: int = 0


def state_error(state: str, action: str) -> RoomError:
    return RoomError("invalid_state", f"cannot {action} a {state} question", state=state)


def question_not_found() -> RoomError:
    return RoomError("not_found", "no such question in this room")


def vote_error(status: str, state: str | None) -> RoomError:
    """The refusal for a vote script's status (``not_found``, ``own`` or ``closed``)."""
    if status == "not_found":
        return question_not_found()
    if status == "own":
        return RoomError("own_question", "you cannot vote on your own question")
    return RoomError("invalid_state", f"cannot vote on a {state} question", state=state)


class QaStore(ABC):
    """The interface both engines' Q&A stores implement (contract: tests/test_qa_store_contract.py)."""

    @abstractmethod
    async def ask(self, room_id: str, question: dict[str, Any]) -> Change:
        """Store a new question record (``votes`` 0) and publish ``qa.question``."""

    @abstractmethod
    async def change(self, room_id: str, question_id: str, move: Transition, patch: dict[str, Any], now: int) -> Change:
        """Make the move if the question is in one of its states, setting ``patch``'s fields; unpins the
        question if it leaves the visible states. Raises ``not_found`` or ``invalid_state``."""

    @abstractmethod
    async def pin(self, room_id: str, question_id: str | None) -> Publication | None:
        """Pin a visible question as "now answering" (``None`` unpins); ``None`` when nothing changed."""

    @abstractmethod
    async def vote(self, room_id: str, question_id: str, user_id: str, up: bool) -> VoteResult:
        """Add or take back one user's vote on a visible question that is not their own."""

    @abstractmethod
    async def flush_votes(self, room_id: str, min_interval_ms: int = 0) -> Flush:
        """Publish ``qa.votes`` with the current count of every question voted on since the last flush,
        unless the room's last count publication was less than ``min_interval_ms`` ago: counts go out
        at most that often per room however many instances take votes."""

    @abstractmethod
    async def snapshot(self, room_id: str) -> QaSnapshot: ...

    @abstractmethod
    async def voted(self, room_id: str, user_id: str, question_ids: list[str]) -> set[str]:
        """Which of ``question_ids`` the user has voted for."""

    @abstractmethod
    async def restore(self, room_id: str, data: Restore) -> bool:
        """Load a room into the store unless it is already loaded; returns whether it loaded."""


def _publication_data(question: dict[str, Any], votes: int, pin: str | None) -> dict[str, Any]:
    return {"q": {**question, "votes": votes}, "pin": pin}


@dataclass
class _MemoryRoom:
    questions: dict[str, dict[str, Any]] = field(default_factory=dict)
    voters: set[tuple[str, str]] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    pin: str | None = None
    seq: int = 0
    flushed: float = -1e9  # monotonic time of the last count publication


class MemoryQaStore(QaStore):
    """The memory engine's store. Each method checks and changes its state without yielding and then
    publishes: the memory engine takes publications in call order, so offsets follow changes."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine
        self._rooms: dict[str, _MemoryRoom] = {}

    def _room(self, room_id: str) -> _MemoryRoom:
        room = self._rooms.get(room_id)
        if room is None:
            raise QaNotLoaded(room_id)
        return room

    async def ask(self, room_id: str, question: dict[str, Any]) -> Change:
        room = self._room(room_id)
        question = wire_json.plain(question)
        room.questions[question["id"]] = question
        room.counts[question["id"]] = 0
        pub = await self.engine.publish(room_id, "qa.question", _publication_data(question, 0, room.pin))
        return Change(pub.data["q"], pub)

    async def change(self, room_id: str, question_id: str, move: Transition, patch: dict[str, Any], now: int) -> Change:
        room = self._room(room_id)
        current = room.questions.get(question_id)
        if current is None:
            raise question_not_found()
        if QuestionState(current["state"]) not in move.allowed_from:
            raise state_error(current["state"], move.action)
        to = move.to
        question = {**current, **wire_json.plain(patch), "state": to.value, "v": current["v"] + 1}
        question["updated_ts"] = now
        if to.visible and question.get("published_ts") is None:
            question["published_ts"] = now
        room.questions[question_id] = question
        if room.pin == question_id and not to.visible:
            room.pin = None
        data = _publication_data(question, room.counts.get(question_id, 0), room.pin)
        pub = await self.engine.publish(room_id, "qa.question", data)
        return Change(pub.data["q"], pub)

    async def pin(self, room_id: str, question_id: str | None) -> Publication | None:
        room = self._room(room_id)
        if question_id == room.pin:
            return None
        if question_id is not None:
            current = room.questions.get(question_id)
            if current is None:
                raise question_not_found()
            if not QuestionState(current["state"]).visible:
                raise state_error(current["state"], "pin")
        room.pin = question_id
        return await self.engine.publish(room_id, "qa.pin", {"id": question_id})

    async def vote(self, room_id: str, question_id: str, user_id: str, up: bool) -> VoteResult:
        room = self._room(room_id)
        current = room.questions.get(question_id)
        if current is None:
            raise question_not_found()
        if not QuestionState(current["state"]).visible:
            raise vote_error("closed", current["state"])
        if current["author"]["user_id"] == user_id:
            raise vote_error("own", None)
        key = (question_id, user_id)
        changed = (key not in room.voters) if up else (key in room.voters)
        if changed:
            if up:
                room.voters.add(key)
            else:
                room.voters.discard(key)
            room.counts[question_id] += 1 if up else -1
            room.seq += 1
            room.dirty.add(question_id)
        return VoteResult(changed, room.counts[question_id], room.seq)

    async def flush_votes(self, room_id: str, min_interval_ms: int = 0) -> Flush:
        room = self._room(room_id)
        if not room.dirty:
            return Flush(None)
        now = time.monotonic()
        wait_ms = math.ceil((room.flushed + min_interval_ms / 1000 - now) * 1000)
        if wait_ms > 0:
            return Flush(None, retry_in_ms=wait_ms)
        room.flushed = now
        counts = {qid: room.counts.get(qid, 0) for qid in sorted(room.dirty)}
        room.dirty.clear()
        return Flush(await self.engine.publish(room_id, "qa.votes", {"counts": counts, "seq": room.seq}))

    async def snapshot(self, room_id: str) -> QaSnapshot:
        room = self._room(room_id)
        position = (await self.engine.history(room_id, None, 0)).position
        questions = {qid: {**q, "votes": room.counts.get(qid, 0)} for qid, q in room.questions.items()}
        return QaSnapshot(wire_json.plain(questions), room.pin, position)

    async def voted(self, room_id: str, user_id: str, question_ids: list[str]) -> set[str]:
        room = self._room(room_id)
        return {qid for qid in question_ids if (qid, user_id) in room.voters}

    async def restore(self, room_id: str, data: Restore) -> bool:
        if room_id in self._rooms:
            return False
        room = _MemoryRoom(seq=data.seq)
        for question in data.questions:
            room.questions[question["id"]] = wire_json.plain(question)
            room.counts[question["id"]] = 0
        for qid, user_id in data.voters:
            if qid in room.counts and (qid, user_id) not in room.voters:
                room.voters.add((qid, user_id))
                room.counts[qid] += 1
        self._rooms[room_id] = room
        return True
