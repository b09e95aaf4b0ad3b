"""The Redis engine: any number of instances sharing one Redis.

Per room: a stream (bounded history, entry id = offset), a meta hash (epoch ``e`` and top offset ``s``)
and a pub/sub channel. One Lua script appends and publishes atomically, so an offset is never published
without being stored, nor stored without being published. If Redis loses the keys (restart without
persistence, eviction, TTL), the next script call creates a new epoch and followers tell clients to reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rooms import wire_json
from rooms.engine import (
    Engine,
    EngineUnavailable,
    History,
    PresenceChange,
    Publication,
    StreamPosition,
    SweepResult,
    contiguous_after,
    now_ms,
)

log = logging.getLogger(__name__)

#: Connections to Redis per instance (besides the subscriber's).
MAX_CONNECTIONS = 64
#: What each new Redis connection tells the server about its client (CLIENT SETINFO), made once: redis-py
#: otherwise reads its own package metadata for every connection, a millisecond each while a burst of
#: calls grows the pool.
DRIVER_INFO = DriverInfo()

#: The one place that numbers a room event: append ``body`` to the room's stream under the next offset
#: (a new epoch if the stream was lost) and publish it. Other scripts that publish (rooms/qa_store_redis.py)
#: include this function, so a change and its event are one atomic step.
APPEND_LUA = """
local function append(stream, meta, channel, maxlen, ttl, new_epoch, body)
  if redis.call('hsetnx', meta, 'e', new_epoch) == 1 then redis.call('del', stream) end
  local epoch = redis.call('hget', meta, 'e')
  local offset = redis.call('hincrby', meta, 's', 1)
  redis.call('xadd', stream, 'MAXLEN', '~', maxlen, offset .. '-0', 'd', body)
  redis.call('expire', stream, ttl)
  redis.call('expire', meta, ttl)
  redis.call('publish', channel, '{"o":' .. offset .. ',"e":"' .. epoch .. '","p":' .. body .. '}')
  return {offset, epoch}
end
"""

PUBLISH_LUA = (
    APPEND_LUA
    + """
return append(KEYS[1], KEYS[2], ARGV[4], ARGV[2], ARGV[3], ARGV[5], ARGV[1])
"""
)

# Returns {epoch, top, mode, entries}; mode 1 = entries after `since`, 0 = the newest `limit` entries.
HISTORY_LUA = """
if redis.call('hsetnx', KEYS[2], 'e', ARGV[1]) == 1 then
  redis.call('del', KEYS[1])
  redis.call('expire', KEYS[2], ARGV[5])
end
local epoch = redis.call('hget', KEYS[2], 'e')
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local since = tonumber(ARGV[2])
local limit = tonumber(ARGV[4])
if since >= 0 and ARGV[3] == epoch and since <= top and top - since <= limit then
  if since == top then return {epoch, top, 1, {}} end
  return {epoch, top, 1, redis.call('xrange', KEYS[1], (since + 1) .. '-0', '+', 'COUNT', limit)}
end
if limit <= 0 then return {epoch, top, 0, {}} end
return {epoch, top, 0, redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', limit)}
"""

PRESENCE_ADD_LUA = """
local first = 0
if redis.call('zadd', KEYS[1], ARGV[4], ARGV[1]) == 1 then
  if redis.call('hincrby', KEYS[3], ARGV[3], 1) == 1 then first = 1 end
end
redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
for i = 1, 3 do redis.call('expire', KEYS[i], ARGV[5]) end
return {first, redis.call('hlen', KEYS[3])}
"""

PRESENCE_REMOVE_LUA = """
local last = 0
if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then
  redis.call('hdel', KEYS[2], ARGV[1])
  if redis.call('hincrby', KEYS[3], ARGV[2], -1) <= 0 then
    redis.call('hdel', KEYS[3], ARGV[2])
    last = 1
  end
end
return {last, redis.call('hlen', KEYS[3])}
"""

PRESENCE_SWEEP_LUA = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = {}
for _, conn in ipairs(redis.call('zrangebyscore', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('zrem', KEYS[1], conn)
  local info = redis.call('hget', KEYS[2], conn)
  redis.call('hdel', KEYS[2], conn)
  if info then
    local user = cjson.decode(info)['user_id']
    if redis.call('hincrby', KEYS[3], user, -1) <= 0 then
      redis.call('hdel', KEYS[3], user)
      table.insert(left, user)
    end
  end
end
return {redis.call('hlen', KEYS[3]), left}
"""

TOKEN_BUCKET_LUA = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local b = redis.call('hmget', KEYS[1], 'n', 't')
local tokens = tonumber(b[1]) or capacity
local at = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_ms)
if tokens < 1 then
  redis.call('hset', KEYS[1], 'n', tokens, 't', now)
  return math.max(1, math.ceil((1 - tokens) / per_ms))
end
redis.call('hset', KEYS[1], 'n', tokens - 1, 't', now)
redis.call('pexpire', KEYS[1], math.ceil(capacity / per_ms) + 1000)
return 0
"""

#: Errors that mean Redis cannot be reached (callers turn them into ``EngineUnavailable``).
UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_UNAVAILABLE = UNAVAILABLE_ERRORS


class RedisEngine(Engine):
    """Implements :class:`Engine` on Redis 6.2+ (streams, Lua, pub/sub)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lc",
        history_size: int = 500,
        history_ttl_s: int = 86_400,
        presence_ttl_s: int = 86_400,
    ) -> None:
        super().__init__()
        self.status.connected = False  # until the subscriber has confirmed its first subscriptions
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl_s = history_ttl_s
        self.presence_key_ttl_s = presence_ttl_s
        # A burst of calls (hundreds of orders committed in one batch announcing themselves) waits for a
        # pooled connection instead of failing: redis-py's default pool refuses past its limit at once.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=3.0,
            socket_connect_timeout=1.0,
            socket_timeout=3.0,
            health_check_interval=5,
            # One immediate retry on a fresh connection: after a Redis restart, pooled connections are stale.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
            decode_responses=True,
            driver_info=DRIVER_INFO,
        )
        self.redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        # The subscriber must never reconnect behind our back: messages published meanwhile would be lost
        # without `on_resync` being called. So its client does not retry; the reader loop reconnects.
        self._subscriber = aioredis.from_url(
            url,
            socket_connect_timeout=1.0,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            decode_responses=True,
            driver_info=DRIVER_INFO,
        )
        self._publish = self.redis.register_script(PUBLISH_LUA)
        self._history = self.redis.register_script(HISTORY_LUA)
        self._presence_add = self.redis.register_script(PRESENCE_ADD_LUA)
        self._presence_remove = self.redis.register_script(PRESENCE_REMOVE_LUA)
        self._presence_sweep = self.redis.register_script(PRESENCE_SWEEP_LUA)
        self._token_bucket = self.redis.register_script(TOKEN_BUCKET_LUA)
        self._followed: set[str] = set()
        self._pubsub: PubSub | None = None
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._ever_connected = False
        self._ready = asyncio.Event()  # set while the subscriber is connected with confirmed subscriptions

    # keys: the room id in braces keeps a room's keys in one Redis Cluster slot
    def key(self, room_id: str, suffix: str) -> str:
        """A room's Redis key; the room id in braces keeps all of a room's keys in one cluster slot."""
        return f"{self.prefix}:{{{room_id}}}:{suffix}"

    def _channel(self, room_id: str) -> str:
        return self.key(room_id, "ch")

    def _room_of(self, channel: str) -> str:
        return channel[len(self.prefix) + 2 : channel.rindex("}")]

    async def start(self, listener: Any) -> None:
        await super().start(listener)
        self._reader = asyncio.create_task(self._read_forever(), name="redis-engine-reader")

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        with contextlib.suppress(Exception):
            await self._subscriber.aclose()

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered Lua script; an unreachable Redis raises ``EngineUnavailable``."""
        try:
            return await script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            if "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
                raise EngineUnavailable(f"redis unavailable: {exc}") from exc
            raise

    async def publish(self, room_id: str, type: str, data: dict[str, Any]) -> Publication:
        ts = now_ms()
        payload = wire_json.dumps({"t": type, "d": data, "ts": ts})
        offset, epoch = await self.call(
            self._publish,
            [self.key(room_id, "s"), self.key(room_id, "m")],
            [payload, self.history_size, self.history_ttl_s, self._channel(room_id), secrets.token_hex(4)],
        )
        return Publication(room_id, int(offset), epoch, type, data, ts)

    async def history(self, room_id: str, since: StreamPosition | None, limit: int) -> History:
        epoch, top, mode, entries = await self.call(
            self._history,
            [self.key(room_id, "s"), self.key(room_id, "m")],
            [
                secrets.token_hex(4),
                since.offset if since is not None else -1,
                since.epoch if since is not None else "",
                limit,
                self.history_ttl_s,
            ],
        )
        position = StreamPosition(epoch, int(top))
        pubs = [self._entry(room_id, epoch, entry_id, fields) for entry_id, fields in entries]
        if mode == 0:
            pubs.reverse()
            return History(position, pubs, recovered=False)
        assert since is not None
        if contiguous_after(since, position, pubs):
            return History(position, pubs, recovered=True)
        return await self.history(room_id, None, limit)

    @staticmethod
    def _entry(room_id: str, epoch: str, entry_id: str, fields: list[str]) -> Publication:
        body = wire_json.loads(fields[1])
        return Publication(room_id, int(entry_id.split("-", 1)[0]), epoch, body["t"], body["d"], body["ts"])

    async def broadcast(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        message = wire_json.dumps({"x": event, "p": data})
        try:
            await self.redis.publish(self._channel(room_id), message)
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(str(exc)) from exc

    # following rooms: the reader owns the pub/sub connection and resubscribes after an outage
    async def follow(self, room_id: str) -> None:
        """Returns once Redis has confirmed the subscription (or is down: the reader then subscribes
        every followed room when it reconnects, and the follower resyncs)."""
        if room_id in self._followed:
            return
        self._followed.add(room_id)
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=3.0)
        except TimeoutError:
            return
        pubsub = self._pubsub
        channel = self._channel(room_id)
        if pubsub is None or (channel in pubsub.channels and channel not in pubsub.pending_unsubscribe_channels):
            return  # the reader subscribed it, confirmed, when it (re)connected
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            await pubsub.subscribe(channel)
            # Wait for Redis to confirm, so that nothing published after follow() returns is missed.
            await asyncio.wait_for(asyncio.shield(confirmed), timeout=3.0)
        except (TimeoutError, *_UNAVAILABLE):
            log.warning("subscribe to %s not confirmed; the reader will resubscribe", channel)
        finally:
            self._confirmations.pop(channel, None)

    async def unfollow(self, room_id: str) -> None:
        if room_id not in self._followed:
            return
        self._followed.discard(room_id)
        if self._pubsub is not None and self.status.connected:
            with contextlib.suppress(*_UNAVAILABLE):
                await self._pubsub.unsubscribe(self._channel(room_id))

    async def _read_forever(self) -> None:
        backoff = 0.05
        while not self._closing:
            pubsub = self._subscriber.pubsub()
            try:
                # A private channel keeps the connection subscribed (and checked) with no rooms followed.
                channels = {f"{self.prefix}:_instance:{secrets.token_hex(6)}"}
                channels.update(self._channel(r) for r in self._followed)
                await pubsub.subscribe(*channels)
                await self._confirm(pubsub, channels)
                self._pubsub = pubsub
                await self._connected()
                backoff = 0.05
                await self._consume(pubsub)
            except asyncio.CancelledError:
                raise
            except (*_UNAVAILABLE, RedisError) as exc:
                self._disconnected(exc)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _confirm(self, pubsub: PubSub, channels: set[str]) -> None:
        """Only a subscription Redis has confirmed counts: until then the subscriber is not connected."""
        pending = set(channels)
        deadline = asyncio.get_running_loop().time() + 3.0
        while pending:
            if asyncio.get_running_loop().time() > deadline:
                raise RedisConnectionError("subscriptions not confirmed")
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=0.25)
            if message is None:
                continue
            if message["type"] == "subscribe":
                pending.discard(message["channel"])
            elif message["type"] == "message" and self.listener is not None:
                await self._dispatch(self._room_of(message["channel"]), message["data"])

    async def _consume(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "subscribe":
                waiter = self._confirmations.get(channel)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind == "message" and self.listener is not None:
                await self._dispatch(self._room_of(channel), message["data"])

    async def _dispatch(self, room_id: str, raw: str) -> None:
        assert self.listener is not None
        try:
            msg = wire_json.loads(raw)
            if "x" in msg:
                await self.listener.on_ephemeral(room_id, msg["x"], msg["p"])
                return
            body = msg["p"]
            pub = Publication(room_id, int(msg["o"]), msg["e"], body["t"], body["d"], body["ts"])
        except (ValueError, KeyError, TypeError):
            log.exception("undecodable bus message on room %s", room_id)
            return
        await self.listener.on_publication(pub)

    async def _connected(self) -> None:
        was_down = not self.status.connected or not self._ever_connected
        self.status.connected = True
        self._ready.set()
        if self._ever_connected and was_down:
            self.status.last_outage_ended = time.time()
            log.info("redis subscriber reconnected; resyncing %d rooms", len(self._followed))
            if self.listener is not None:
                await self.listener.on_resync()
        self._ever_connected = True

    def _disconnected(self, exc: BaseException) -> None:
        self._ready.clear()
        if self.status.connected:
            self.status.connected = False
            self.status.outages += 1
            self.status.last_outage_started = time.time()
            self.status.last_outage_ended = None
            self.status.rooms_recovered = self.status.rooms_reloaded = 0
            log.error("redis subscriber lost: %s", exc)

    # presence
    def _presence_keys(self, room_id: str) -> list[str]:
        return [self.key(room_id, "pc"), self.key(room_id, "pi"), self.key(room_id, "pu")]

    async def presence_add(self, room_id: str, conn_id: str, member: dict[str, str], ttl_s: float) -> PresenceChange:
        expires_ms = int((time.time() + ttl_s) * 1000)
        first, count = await self.call(
            self._presence_add,
            self._presence_keys(room_id),
            [conn_id, wire_json.dumps(member), member["user_id"], expires_ms, self.presence_key_ttl_s],
        )
        return PresenceChange(bool(first), int(count))

    async def presence_refresh(self, room_id: str, members: dict[str, dict[str, str]], ttl_s: float) -> None:
        expires_ms = int((time.time() + ttl_s) * 1000)
        keys = self._presence_keys(room_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for conn_id, member in members.items():
                    args: list[str | int] = [
                        conn_id,
                        wire_json.dumps(member),
                        member["user_id"],
                        expires_ms,
                        self.presence_key_ttl_s,
                    ]
                    await self._presence_add(keys=keys, args=args, client=pipe)
                await pipe.execute()
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis unavailable: {exc}") from exc

    async def presence_remove(self, room_id: str, conn_id: str, user_id: str) -> PresenceChange:
        last, count = await self.call(self._presence_remove, self._presence_keys(room_id), [conn_id, user_id])
        return PresenceChange(bool(last), int(count))

    async def presence_sweep(self, room_id: str) -> SweepResult:
        count, left = await self.call(self._presence_sweep, self._presence_keys(room_id), [])
        return SweepResult(count=int(count), left=list(left))

    async def presence_members(self, room_id: str, limit: int) -> list[dict[str, str]]:
        seen: dict[str, dict[str, str]] = {}
        try:
            async for _, raw in self.redis.hscan_iter(self.key(room_id, "pi"), count=200):
                member = wire_json.loads(raw)
                seen.setdefault(member["user_id"], member)
                if len(seen) >= limit:
                    break
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(str(exc)) from exc
        return list(seen.values())

    async def take_token(self, key: str, capacity: int, window_s: float) -> int:
        per_ms = capacity / (window_s * 1000.0)
        wait = await self.call(self._token_bucket, [f"{self.prefix}:rl:{key}"], [capacity, repr(per_ms)])
        return int(wait)

    async def streak(self, key: str, by: int, window_ms: int) -> int:
        name = f"{self.prefix}:streak:{key}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incrby(name, by)
                pipe.pexpire(name, window_ms)
                count, _ = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(str(exc)) from exc
        return int(count)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (*_UNAVAILABLE, RedisError):
            return False
