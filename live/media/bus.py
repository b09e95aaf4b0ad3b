"""Which instance hosts a room's media, and messages between instances about it.

A room's media lives on one instance (LiveKit's model: a room fits on one node). The first instance
that needs it claims the room with a lease that it keeps renewing; the others relay their sockets'
signalling to that owner, which answers them, and pass its offers back to the sockets. If the owner
dies its lease runs out and the next claim takes the room over.

Two implementations behind one interface, as for the room engine: ``LocalMediaBus`` for the memory
engine (one process owns everything) and ``RedisMediaBus`` (leases are keys with a TTL, messages go to
a per-instance pub/sub channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from live.media.errors import MediaError, error_reply, reply_data
from rooms.engine_redis import DRIVER_INFO
from rooms.errors import RoomError

log = logging.getLogger(__name__)

#: Handles a message another instance sent; returns the reply's data (requests) or None (notices).
RemoteHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]

LEASE_TTL_MS = 6000
LEASE_RENEW_S = 2.0
REQUEST_TIMEOUT_S = 5.0

CLAIM_LUA = """
local current = redis.call('GET', KEYS[1])
if (not current) or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return current
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def unreachable(instance: str) -> MediaError:
    return MediaError("unavailable", f"the media instance {instance} does not answer; try again")


class MediaBus(ABC):
    """Room ownership and instance-to-instance messages for media."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.handler: RemoteHandler | None = None
        self._owned: set[str] = set()

    async def start(self, handler: RemoteHandler) -> None:
        self.handler = handler

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def owned(self) -> list[str]:
        """Rooms this instance holds."""
        return sorted(self._owned)

    @abstractmethod
    async def claim(self, room_id: str) -> str:
        """Take the room if nobody holds it (or renew our hold); returns the owner."""

    @abstractmethod
    async def owner(self, room_id: str) -> str | None:
        """The instance hosting the room's media, if any."""

    @abstractmethod
    async def release(self, room_id: str) -> None:
        """Give the room up (it has no media left here)."""

    @abstractmethod
    async def request(self, instance: str, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` to ``instance`` and wait for its reply; refusals raise their ``RoomError``."""

    @abstractmethod
    async def notify(self, instance: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``instance`` without waiting."""


class LocalMediaBus(MediaBus):
    """One process: every room is ours."""

    async def claim(self, room_id: str) -> str:
        self._owned.add(room_id)
        return self.instance_id

    async def owner(self, room_id: str) -> str | None:
        return self.instance_id if room_id in self._owned else None

    async def release(self, room_id: str) -> None:
        self._owned.discard(room_id)

    async def request(self, instance: str, message: dict[str, Any]) -> dict[str, Any]:
        raise unreachable(instance)  # there is no other instance

    async def notify(self, instance: str, message: dict[str, Any]) -> None:
        return None


class RedisMediaBus(MediaBus):
    """Leases as ``{prefix}:media:{room}`` keys with a TTL; messages on ``{prefix}:media:to:{instance}``."""

    def __init__(self, url: str, instance_id: str, prefix: str = "lc") -> None:
        super().__init__(instance_id)
        self.prefix = prefix
        self.redis = aioredis.from_url(url, socket_connect_timeout=1.0, decode_responses=True, driver_info=DRIVER_INFO)
        self._claim = self.redis.register_script(CLAIM_LUA)
        self._release = self.redis.register_script(RELEASE_LUA)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()

    def _lease(self, room_id: str) -> str:
        return f"{self.prefix}:{{{room_id}}}:media"

    def _inbox(self, instance: str) -> str:
        return f"{self.prefix}:media:to:{instance}"

    async def start(self, handler: RemoteHandler) -> None:
        await super().start(handler)
        self._tasks = [
            asyncio.create_task(self._listen(), name="media-bus-listen"),
            asyncio.create_task(self._renew(), name="media-bus-renew"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 5)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for room_id in list(self._owned):
            with contextlib.suppress(Exception):
                await self.release(room_id)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    # leases
    async def claim(self, room_id: str) -> str:
        try:
            owner = str(await self._claim(keys=[self._lease(room_id)], args=[self.instance_id, LEASE_TTL_MS]))
        except (RedisError, OSError) as exc:
            raise MediaError("unavailable", f"media placement unavailable: {exc}") from exc
        if owner == self.instance_id:
            self._owned.add(room_id)
        return owner

    async def owner(self, room_id: str) -> str | None:
        try:
            value = await self.redis.get(self._lease(room_id))
        except (RedisError, OSError) as exc:
            raise MediaError("unavailable", f"media placement unavailable: {exc}") from exc
        return str(value) if value is not None else None

    async def release(self, room_id: str) -> None:
        self._owned.discard(room_id)
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self._lease(room_id)], args=[self.instance_id])

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            for room_id in list(self._owned):
                try:
                    owner = await self._claim(keys=[self._lease(room_id)], args=[self.instance_id, LEASE_TTL_MS])
                except (RedisError, OSError):
                    continue  # Redis is away; the lease may lapse and another instance take over
                if owner != self.instance_id:
                    log.warning("media: lost room %s to instance %s", room_id, owner)
                    self._owned.discard(room_id)

    # messages
    async def request(self, instance: str, message: dict[str, Any]) -> dict[str, Any]:
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(instance, {**message, "id": request_id, "from": self.instance_id})
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise unreachable(instance) from None
        finally:
            self._pending.pop(request_id, None)
        return reply_data(reply)

    async def notify(self, instance: str, message: dict[str, Any]) -> None:
        await self._send(instance, {**message, "from": self.instance_id})

    async def _send(self, instance: str, message: dict[str, Any]) -> None:
        try:
            receivers = await self.redis.publish(self._inbox(instance), json.dumps(message))
        except (RedisError, OSError) as exc:
            raise MediaError("unavailable", f"media relay unavailable: {exc}") from exc
        if not receivers and "id" in message:
            raise unreachable(instance)

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self._inbox(self.instance_id))
                self._subscribed.set()
                async for raw in pubsub.listen():
                    if raw["type"] == "message":
                        self._spawn(self._handle(json.loads(raw["data"])))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("media bus: subscriber lost (%s); reconnecting", exc)
                self._subscribed.clear()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle(self, message: dict[str, Any]) -> None:
        if "reply_to" in message:
            future = self._pending.get(message["reply_to"])
            if future is not None and not future.done():
                future.set_result(message)
            return
        if self.handler is None:
            return
        reply: dict[str, Any]
        try:
            data = await self.handler(message)
            reply = {"data": data or {}}
        except RoomError as exc:
            reply = error_reply(exc)
        except Exception as exc:
            log.exception("media bus: %s failed", message.get("op"))
            reply = {"error": {"code": "unavailable", "message": f"media instance error: {exc}"}}
        if "id" in message:
            with contextlib.suppress(MediaError):
                await self._send(message["from"], {"reply_to": message["id"], **reply})
