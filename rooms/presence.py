"""Presence: who is in a room and the head count over every instance.

Each instance registers its own connections in the engine with a time to live and refreshes them; a
connection whose instance died expires and is swept by whichever instance counts next. Join and leave
are announced once per *user* (first connection in, last connection out), not per browser tab, and only
while the room is small: in a big room every join would go to every member (a join storm at the start of
a lesson costs N squared deliveries), so there the head count, sent every second, says it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from rooms.engine import Engine, EngineUnavailable, PresenceChange
from rooms.identity import Identity

log = logging.getLogger(__name__)

CountListener = Callable[[str, int], Awaitable[None]]


class PresenceKeeper:
    """This instance's connections, kept registered in the shared engine."""

    def __init__(self, engine: Engine, instance_id: str, ttl_s: float = 30.0, announce_max: int = 200) -> None:
        self.engine = engine
        self.instance_id = instance_id
        self.ttl_s = ttl_s
        self.announce_max = announce_max
        self._local: dict[str, dict[str, Identity]] = {}
        #: (room, user) -> that user's local connections, in the order they came: finding one buyer's
        #: connections among thousands (an order's event) must not walk the whole room.
        self._by_user: dict[tuple[str, str], dict[str, None]] = {}
        self._counts: dict[str, int] = {}

    def conn_id(self, sid: str) -> str:
        return f"{self.instance_id}/{sid}"

    def local_rooms(self) -> list[str]:
        return list(self._local)

    def local_sids(self, room_id: str, user_id: str | None = None) -> list[str]:
        if user_id is not None:
            return list(self._by_user.get((room_id, user_id), ()))
        return list(self._local.get(room_id, ()))

    def local_count(self, room_id: str) -> int:
        return len(self._local.get(room_id, {}))

    async def enter(self, sid: str, who: Identity) -> PresenceChange:
        """Register a connection; ``user_changed`` when the user was not in the room on any instance."""
        self._local.setdefault(who.room_id, {})[sid] = who
        self._by_user.setdefault((who.room_id, who.user_id), {})[sid] = None
        change = await self.engine.presence_add(who.room_id, self.conn_id(sid), who.member(), self.ttl_s)
        if change.user_changed and change.count <= self.announce_max:
            await self.engine.broadcast(who.room_id, "presence:joined", who.member())
        return change

    async def leave(self, sid: str, who: Identity) -> bool:
        """Drop a connection; ``True`` when it was the user's last one anywhere. Returns the room to
        the caller's care (unfollow) when this instance has nobody left in it."""
        room = self._local.get(who.room_id, {})
        if room.pop(sid, None) is None:
            return False
        user_key = (who.room_id, who.user_id)
        same_user = self._by_user.get(user_key, {})
        same_user.pop(sid, None)
        if not same_user:
            self._by_user.pop(user_key, None)
        if not room:
            self._local.pop(who.room_id, None)
            self._counts.pop(who.room_id, None)
        try:
            change = await self.engine.presence_remove(who.room_id, self.conn_id(sid), who.user_id)
            if change.user_changed and change.count < self.announce_max:
                await self.engine.broadcast(who.room_id, "presence:left", {"user_id": who.user_id})
            return change.user_changed
        except EngineUnavailable:
            return False  # the entry expires on its own

    async def refresh(self) -> None:
        """Re-register every local connection: keeps them alive, and restores them after Redis lost them."""
        for room_id, conns in list(self._local.items()):
            members = {self.conn_id(sid): who.member() for sid, who in conns.items()}
            try:
                await self.engine.presence_refresh(room_id, members, self.ttl_s)
            except EngineUnavailable:
                return

    async def members(self, room_id: str) -> list[dict[str, str]]:
        return await self.engine.presence_members(room_id, self.announce_max)

    async def count(self, room_id: str) -> int:
        result = await self.engine.presence_sweep(room_id)
        for user_id in result.left:
            await self.engine.broadcast(room_id, "presence:left", {"user_id": user_id})
        return result.count

    async def publish_counts(self, on_change: CountListener) -> None:
        """Recount each room with local members and report the ones whose head count changed."""
        for room_id in list(self._local):
            try:
                count = await self.count(room_id)
            except EngineUnavailable:
                return
            if self._counts.get(room_id) != count and room_id in self._local:
                self._counts[room_id] = count
                await on_change(room_id, count)
