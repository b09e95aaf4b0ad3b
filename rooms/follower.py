"""In-order, gap-free delivery of room events to the members connected to this instance.

The engine hands publications over as they arrive. Pub/sub can drop messages (a subscriber that
reconnects misses what was published meanwhile), so the follower keeps, per room, the last position it
delivered, fills any gap from the room history, and when the history cannot fill it (a new epoch, or too
far behind) tells the room's local clients to reload. A periodic position check catches a gap that no
later publication would reveal (Centrifugo does the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rooms.engine import Engine, EngineUnavailable, Publication, StreamPosition

log = logging.getLogger(__name__)


class LocalDelivery(Protocol):
    """Where the follower hands events: the transport (Socket.IO) side of this instance."""

    async def deliver(self, pub: Publication) -> None: ...

    async def deliver_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None: ...

    async def reload(self, room_id: str, reason: str) -> None: ...


@dataclass
class _Followed:
    position: StreamPosition | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RoomFollower:
    """Implements the engine's ``BusListener`` for one instance."""

    def __init__(self, engine: Engine, delivery: LocalDelivery, history_limit: int) -> None:
        self.engine = engine
        self.delivery = delivery
        self.history_limit = history_limit
        self._rooms: dict[str, _Followed] = {}

    @property
    def rooms(self) -> Iterable[str]:
        return self._rooms.keys()

    async def follow(self, room_id: str) -> None:
        """Subscribe, then learn the current position, so nothing after it can be missed."""
        if room_id in self._rooms:
            return
        state = self._rooms[room_id] = _Followed()
        async with state.lock:
            await self.engine.follow(room_id)
            try:
                state.position = (await self.engine.history(room_id, None, 0)).position
            except EngineUnavailable:
                state.position = None  # learnt from the first publication or the next check

    async def unfollow(self, room_id: str) -> None:
        if self._rooms.pop(room_id, None) is not None:
            await self.engine.unfollow(room_id)

    async def on_publication(self, pub: Publication) -> None:
        state = self._rooms.get(pub.room_id)
        if state is None:
            return
        async with state.lock:
            pos = state.position
            if pos is None:
                state.position = StreamPosition(pub.epoch, pub.offset)
                await self.delivery.deliver(pub)
            elif pub.epoch != pos.epoch:
                await self._reload(pub.room_id, state, StreamPosition(pub.epoch, pub.offset), "history lost")
            elif pub.offset == pos.offset + 1:
                state.position = StreamPosition(pub.epoch, pub.offset)
                await self.delivery.deliver(pub)
            elif pub.offset > pos.offset + 1:
                await self._catch_up(pub.room_id, state)

    async def on_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        if room_id in self._rooms:
            await self.delivery.deliver_ephemeral(room_id, event, data)

    async def on_resync(self) -> None:
        await self.check_all()

    async def check(self, room_id: str) -> str:
        """Compare with the stored position and fill or reload; returns what was done."""
        state = self._rooms.get(room_id)
        if state is None:
            return "gone"
        async with state.lock:
            try:
                return await self._catch_up(room_id, state)
            except EngineUnavailable:
                return "unavailable"

    async def check_all(self) -> None:
        for room_id in list(self._rooms):
            await self.check(room_id)

    async def _catch_up(self, room_id: str, state: _Followed) -> str:
        pos = state.position
        history = await self.engine.history(room_id, pos, self.history_limit)
        if pos is not None and history.position == pos:
            return "current"
        if history.recovered:
            for pub in history.publications:
                await self.delivery.deliver(pub)
            state.position = history.position
            self.engine.status.rooms_recovered += 1
            return "recovered"
        await self._reload(room_id, state, history.position, "missed events not in history")
        return "reloaded"

    async def _reload(self, room_id: str, state: _Followed, position: StreamPosition, reason: str) -> None:
        log.warning("room %s: %s; telling local clients to reload", room_id, reason)
        self.engine.status.rooms_reloaded += 1
        state.position = position
        await self.delivery.reload(room_id, reason)
