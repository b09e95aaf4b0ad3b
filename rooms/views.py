"""This instance's view of each room it follows: the room, its recent chat and its bans, at a position.

Joins are answered from the view instead of the database and the bus history, so a join storm at the
start of a lesson costs no SQL (Centrifugo answers subscribes from state it holds, likewise). The view is
loaded once, when the instance starts following the room, and then kept current by the same in-order
deliveries the follower makes to the sockets: a snapshot taken from it is consistent with its position,
and everything after that position reaches the joining socket in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from rooms.audience import question_for
from rooms.chat import ChatService
from rooms.engine import Engine, Publication, StreamPosition
from rooms.identity import Identity
from rooms.qa import QuestionService
from rooms.qa_store import QaSnapshot
from rooms.service import Room, RoomService, check_admission

RECENT_CHAT = 100


@dataclass
class QaView:
    """The room's questions (full records, staff's view) and the pinned one, at ``position``. Loaded from
    the Q&A store's snapshot, whose position may be ahead of the rest of the view."""

    questions: dict[str, dict[str, Any]]
    pin: str | None
    position: StreamPosition

    @classmethod
    def from_snapshot(cls, snapshot: QaSnapshot) -> QaView:
        return cls(snapshot.questions, snapshot.pin, snapshot.position)

    def apply(self, pub: Publication) -> None:
        if pub.epoch != self.position.epoch or pub.offset <= self.position.offset:
            return
        self.position = StreamPosition(pub.epoch, pub.offset)
        if pub.type == "qa.question":
            question = dict(pub.data["q"])  # a copy: vote counts are updated in place below
            self.questions[question["id"]] = question
            self.pin = pub.data["pin"]
        elif pub.type == "qa.pin":
            self.pin = pub.data["id"]
        elif pub.type == "qa.votes":
            for qid, votes in pub.data["counts"].items():
                counted = self.questions.get(qid)
                if counted is not None:
                    counted["votes"] = votes

    def visible_to(self, viewer: Identity, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` questions ``viewer`` may see (and the pinned one), oldest first."""
        shown = [s for s in (question_for(q, viewer) for q in self.questions.values()) if s is not None]
        shown.sort(key=lambda q: (q["ts"], q["id"]))
        if len(shown) > limit:
            newest = shown[-limit:]
            pinned = [q for q in shown[:-limit] if q["id"] == self.pin]
            shown = pinned + newest
        return shown


class ViewPart(Protocol):
    """State that another package keeps in each room view (gifting/sales.py: the course card)."""

    async def load(self, room_id: str) -> Any: ...

    def apply(self, state: Any, pub: Publication) -> Any:
        """The state after ``pub`` (a publication after the view's position)."""


@dataclass
class RoomView:
    """One room as this instance knows it, at ``position``."""

    room: Room
    position: StreamPosition
    qa: QaView
    chat: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_CHAT))
    banned: set[str] = field(default_factory=set)
    #: Each view part's state, by name, and the parts that fold publications into it.
    parts: dict[str, Any] = field(default_factory=dict)
    part_types: dict[str, ViewPart] = field(default_factory=dict)

    def apply(self, pub: Publication) -> None:
        """Fold in the next publication; earlier ones (already in the view) are ignored."""
        self.qa.apply(pub)
        if pub.epoch != self.position.epoch or pub.offset <= self.position.offset:
            return
        self.position = StreamPosition(pub.epoch, pub.offset)
        for name, part in self.part_types.items():
            self.parts[name] = part.apply(self.parts[name], pub)
        if pub.type == "chat.message":
            self.chat.append(pub.data)
        elif pub.type == "chat.deleted":
            kept = [m for m in self.chat if m["id"] != pub.data["id"]]
            self.chat.clear()
            self.chat.extend(kept)
        elif pub.type == "member.removed":
            self.banned.add(pub.data["user_id"])
        elif pub.type == "room.status":
            self.room = Room.from_dict(pub.data)


class RoomViews:
    """The views of the rooms this instance follows."""

    def __init__(
        self,
        engine: Engine,
        rooms: RoomService,
        chat: ChatService,
        qa: QuestionService,
        history_limit: int,
        parts: dict[str, ViewPart] | None = None,
    ) -> None:
        self.parts = parts or {}
        self.engine = engine
        self.rooms = rooms
        self.chat = chat
        self.qa = qa
        self.history_limit = history_limit
        self._views: dict[str, RoomView] = {}
        self._loading: dict[str, asyncio.Future[RoomView]] = {}
        self._arrived: dict[str, list[Publication]] = {}

    def get(self, room_id: str) -> RoomView | None:
        return self._views.get(room_id)

    async def current(self, room_id: str) -> RoomView:
        """The room's view, loaded if this instance has none yet (one load however many joins wait)."""
        view = self._views.get(room_id)
        return view if view is not None else await self.load(room_id)

    async def load(self, room_id: str) -> RoomView:
        """(Re)build the view from the bus history, the transcript and SQL. The caller follows the room
        first: publications delivered meanwhile are kept and folded in, so none is missing."""
        pending = self._loading.get(room_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[RoomView] = asyncio.get_running_loop().create_future()
        self._loading[room_id] = future
        self._arrived[room_id] = []
        try:
            history = await self.engine.history(room_id, None, self.history_limit)
            room = await self.rooms.require(room_id)
            qa = QaView.from_snapshot(await self.qa.snapshot(room_id))
            view = RoomView(room, history.position, qa, banned=await self.rooms.banned_users(room_id))
            view.chat.extend(await self.chat.recent(room_id, history, RECENT_CHAT))
            # Loaded after following began: publications that arrived meanwhile are folded in below, and
            # folding one in twice leaves the same state (each part's events carry whole states).
            for name, part in self.parts.items():
                view.parts[name] = await part.load(room_id)
            view.part_types = self.parts
            for pub in self._arrived[room_id]:
                view.apply(pub)
            self._views[room_id] = view
            future.set_result(view)
            return view
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joins waiting on it get it raised
            raise
        finally:
            del self._loading[room_id]
            del self._arrived[room_id]

    async def admit(self, identity: Identity) -> Room:
        """``RoomService.admit``, answered from the view when this instance follows the room."""
        view = self._views.get(identity.room_id)
        if view is None:
            return await self.rooms.admit(identity)
        check_admission(view.room, identity.user_id in view.banned)
        return view.room

    def apply(self, pub: Publication) -> None:
        arrived = self._arrived.get(pub.room_id)
        if arrived is not None:
            arrived.append(pub)
        view = self._views.get(pub.room_id)
        if view is not None:
            view.apply(pub)

    def drop(self, room_id: str) -> None:
        self._views.pop(room_id, None)
