"""The memory engine: one process, no Redis. The embedded default."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rooms import wire_json
from rooms.engine import (
    Engine,
    History,
    PresenceChange,
    Publication,
    StreamPosition,
    SweepResult,
    contiguous_after,
    now_ms,
)


@dataclass
class _Stream:
    epoch: str
    offset: int = 0
    entries: deque[Publication] = field(default_factory=deque)
    touched: float = field(default_factory=time.monotonic)


@dataclass
class _Bucket:
    tokens: float
    at: float


class MemoryEngine(Engine):
    """Implements :class:`Engine` with dictionaries. Publications are delivered in the caller's task,
    so they reach the listener in offset order with no gaps."""

    name = "memory"

    def __init__(self, history_size: int = 500, history_ttl_s: float = 86_400) -> None:
        super().__init__()
        self.history_size = history_size
        self.history_ttl_s = history_ttl_s
        self._streams: dict[str, _Stream] = {}
        self._followed: set[str] = set()
        self._conns: dict[str, dict[str, tuple[float, dict[str, str]]]] = {}
        self._user_conns: dict[str, dict[str, int]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._streaks: dict[str, tuple[int, float]] = {}
        self._lock = asyncio.Lock()

    def _stream(self, room_id: str) -> _Stream:
        stream = self._streams.get(room_id)
        now = time.monotonic()
        if stream is None or now - stream.touched > self.history_ttl_s:
            stream = self._streams[room_id] = _Stream(epoch=secrets.token_hex(4))
        stream.touched = now
        return stream

    async def publish(self, room_id: str, type: str, data: dict[str, Any]) -> Publication:
        # Round-trip through JSON so both engines hand listeners the same plain data.
        data = wire_json.plain(data)
        async with self._lock:
            stream = self._stream(room_id)
            stream.offset += 1
            pub = Publication(room_id, stream.offset, stream.epoch, type, data, now_ms())
            stream.entries.append(pub)
            while len(stream.entries) > self.history_size:
                stream.entries.popleft()
            if self.listener is not None and room_id in self._followed:
                await self.listener.on_publication(pub)
        return pub

    async def history(self, room_id: str, since: StreamPosition | None, limit: int) -> History:
        stream = self._stream(room_id)
        top = StreamPosition(stream.epoch, stream.offset)
        if since is not None and since.epoch == stream.epoch and 0 <= since.offset <= stream.offset:
            pubs = [p for p in stream.entries if p.offset > since.offset][: max(limit, 0)]
            if contiguous_after(since, top, pubs):
                return History(top, pubs, recovered=True)
        newest = list(stream.entries)[-limit:] if limit > 0 else []
        return History(top, newest, recovered=False)

    async def broadcast(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        if self.listener is not None and room_id in self._followed:
            await self.listener.on_ephemeral(room_id, event, data)

    async def follow(self, room_id: str) -> None:
        self._followed.add(room_id)

    async def unfollow(self, room_id: str) -> None:
        self._followed.discard(room_id)

    async def presence_add(self, room_id: str, conn_id: str, member: dict[str, str], ttl_s: float) -> PresenceChange:
        conns = self._conns.setdefault(room_id, {})
        users = self._user_conns.setdefault(room_id, {})
        is_new = conn_id not in conns
        conns[conn_id] = (time.monotonic() + ttl_s, dict(member))
        if is_new:
            users[member["user_id"]] = users.get(member["user_id"], 0) + 1
        return PresenceChange(is_new and users[member["user_id"]] == 1, len(users))

    async def presence_remove(self, room_id: str, conn_id: str, user_id: str) -> PresenceChange:
        conns = self._conns.get(room_id, {})
        users = self._user_conns.get(room_id, {})
        if conns.pop(conn_id, None) is None:
            return PresenceChange(False, len(users))
        left = users.get(user_id, 0) - 1
        if left > 0:
            users[user_id] = left
            return PresenceChange(False, len(users))
        users.pop(user_id, None)
        return PresenceChange(True, len(users))

    async def presence_sweep(self, room_id: str) -> SweepResult:
        now = time.monotonic()
        conns = self._conns.get(room_id, {})
        left: list[str] = []
        for conn_id, (expires, member) in list(conns.items()):
            if expires < now and (await self.presence_remove(room_id, conn_id, member["user_id"])).user_changed:
                left.append(member["user_id"])
        return SweepResult(count=len(self._user_conns.get(room_id, {})), left=left)

    async def presence_members(self, room_id: str, limit: int) -> list[dict[str, str]]:
        seen: dict[str, dict[str, str]] = {}
        for _, member in self._conns.get(room_id, {}).values():
            seen.setdefault(member["user_id"], member)
            if len(seen) >= limit:
                break
        return list(seen.values())

    async def take_token(self, key: str, capacity: int, window_s: float) -> int:
        now = time.monotonic()
        rate = capacity / window_s
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(capacity), at=now)
            if len(self._buckets) > 100_000:
                self._forget_idle_buckets(now)
        bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            return max(1, int((1.0 - bucket.tokens) / rate * 1000))
        bucket.tokens -= 1.0
        return 0

    def _forget_idle_buckets(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if now - b.at > 3600:
                del self._buckets[key]

    async def streak(self, key: str, by: int, window_ms: int) -> int:
        now = time.monotonic()
        count, last = self._streaks.get(key, (0, now))
        if now - last > window_ms / 1000:
            count = 0
        self._streaks[key] = (count + by, now)
        if len(self._streaks) > 100_000:
            self._streaks = {k: v for k, v in self._streaks.items() if now - v[1] < 60}
        return count + by

    async def ping(self) -> bool:
        return True
