"""The seat gate in front of a flash sale: an atomic take of seats that never lets more buyers through than
there are seats, shared by every instance (DESIGN.md "Data rules": Redis may gate hot paths).

Per sale it keeps the seats left and what each buyer holds (one order per buyer and sale). Taking is one
atomic step: a buyer who holds seats already is told so, else the seats are taken if enough are left. The
SQL order table stays the truth behind it (a guarded seat count and a UNIQUE (sale, buyer) index): if the
gate is lost (Redis restarted), it is rebuilt from SQL and the SQL guards still refuse any seat too many.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rooms.engine import EngineUnavailable
from rooms.engine_redis import DRIVER_INFO


class Take(StrEnum):
    """What a take answered."""

    TAKEN = "taken"
    SOLD_OUT = "sold_out"
    #: The buyer already holds seats in this sale (an order that is not expired).
    HOLDING = "holding"
    #: The gate has no record of the sale (never opened here, or Redis lost it): rebuild it from SQL.
    MISSING = "missing"


@dataclass(frozen=True)
class TakeResult:
    outcome: Take
    left: int


class SeatGate(ABC):
    """One implementation per engine: in this process (memory) or in Redis (shared)."""

    @abstractmethod
    async def restore(self, sale_id: str, left: int, holders: dict[str, int], ttl_s: int) -> None:
        """Create the sale's gate with ``left`` seats and these holders, unless it exists already."""

    @abstractmethod
    async def take(self, sale_id: str, buyer: str, quantity: int) -> TakeResult: ...

    @abstractmethod
    async def give_back(self, sale_id: str, buyer: str) -> int:
        """Return the buyer's seats (their order expired or failed); safe to repeat. Seats left after."""

    @abstractmethod
    async def left(self, sale_id: str) -> int | None:
        """Seats left, or ``None`` when the gate has no record of the sale."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class _Sale:
    left: int
    holders: dict[str, int] = field(default_factory=dict)
    expires: float = 0.0


class MemorySeatGate(SeatGate):
    """The gate of the memory engine (one process: every step below is atomic on the event loop)."""

    def __init__(self) -> None:
        self._sales: dict[str, _Sale] = {}

    def _get(self, sale_id: str) -> _Sale | None:
        sale = self._sales.get(sale_id)
        if sale is not None and sale.expires < time.monotonic():
            del self._sales[sale_id]
            return None
        return sale

    async def restore(self, sale_id: str, left: int, holders: dict[str, int], ttl_s: int) -> None:
        if self._get(sale_id) is None:
            self._sales[sale_id] = _Sale(left, dict(holders), time.monotonic() + ttl_s)

    async def take(self, sale_id: str, buyer: str, quantity: int) -> TakeResult:
        sale = self._get(sale_id)
        if sale is None:
            return TakeResult(Take.MISSING, 0)
        if buyer in sale.holders:
            return TakeResult(Take.HOLDING, sale.left)
        if sale.left < quantity:
            return TakeResult(Take.SOLD_OUT, sale.left)
        sale.left -= quantity
        sale.holders[buyer] = quantity
        return TakeResult(Take.TAKEN, sale.left)

    async def give_back(self, sale_id: str, buyer: str) -> int:
        sale = self._get(sale_id)
        if sale is None:
            return 0
        sale.left += sale.holders.pop(buyer, 0)
        return sale.left

    async def left(self, sale_id: str) -> int | None:
        sale = self._get(sale_id)
        return sale.left if sale is not None else None


# KEYS: seats left, holders (buyer -> seats). ARGV: buyer, quantity pairs, taken in order.
# Returns outcome, seats left after it, for each pair.
TAKE_LUA = """
local out = {}
local left = redis.call('get', KEYS[1])
for i = 1, #ARGV, 2 do
  if not left then
    out[#out + 1] = 'missing'; out[#out + 1] = 0
  else
    left = tonumber(left)
    local q = tonumber(ARGV[i + 1])
    if redis.call('hexists', KEYS[2], ARGV[i]) == 1 then
      out[#out + 1] = 'holding'
    elseif left < q then
      out[#out + 1] = 'sold_out'
    else
      redis.call('hset', KEYS[2], ARGV[i], q)
      left = redis.call('decrby', KEYS[1], q)
      out[#out + 1] = 'taken'
    end
    out[#out + 1] = left
  end
end
return out
"""

GIVE_BACK_LUA = """
local q = redis.call('hget', KEYS[2], ARGV[1])
if not q then return tonumber(redis.call('get', KEYS[1]) or '0') end
redis.call('hdel', KEYS[2], ARGV[1])
if redis.call('exists', KEYS[1]) == 0 then return 0 end
return redis.call('incrby', KEYS[1], tonumber(q))
"""

# ARGV: left, ttl, then buyer, seats pairs.
RESTORE_LUA = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('del', KEYS[2])
  for i = 3, #ARGV, 2 do redis.call('hset', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('expire', KEYS[2], ARGV[2])
end
return 1
"""


class RedisSeatGate(SeatGate):
    """The gate shared by every instance. Takes that arrive while a Lua call for the same sale is out go
    together in the next call (in arrival order): one round trip per batch, however many buyers press Buy
    at the moment a sale opens."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=1.0, driver_info=DRIVER_INFO
        )
        self._queues: dict[str, list[tuple[str, int, asyncio.Future[TakeResult]]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._take = self.redis.register_script(TAKE_LUA)
        self._give_back = self.redis.register_script(GIVE_BACK_LUA)
        self._restore = self.redis.register_script(RESTORE_LUA)

    @staticmethod
    def _keys(sale_id: str) -> list[str]:
        return [f"lc:sale:{{{sale_id}}}:left", f"lc:sale:{{{sale_id}}}:holders"]

    async def restore(self, sale_id: str, left: int, holders: dict[str, int], ttl_s: int) -> None:
        args: list[str | int] = [left, ttl_s]
        for buyer, seats in holders.items():
            args += [buyer, seats]
        try:
            await self._restore(keys=self._keys(sale_id), args=args)
        except RedisError as exc:
            raise EngineUnavailable(str(exc)) from exc

    async def take(self, sale_id: str, buyer: str, quantity: int) -> TakeResult:
        future: asyncio.Future[TakeResult] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(sale_id, []).append((buyer, quantity, future))
        if sale_id not in self._senders:
            self._senders[sale_id] = asyncio.create_task(self._send(sale_id), name=f"seat-gate-{sale_id}")
        return await future

    async def _send(self, sale_id: str) -> None:
        try:
            while self._queues.get(sale_id):
                batch = self._queues.pop(sale_id)[:]
                args: list[str | int] = []
                for buyer, quantity, _ in batch:
                    args += [buyer, quantity]
                try:
                    flat = await self._take(keys=self._keys(sale_id), args=args)
                except RedisError as exc:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(EngineUnavailable(str(exc)))
                    continue
                for i, (*_, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(TakeResult(Take(flat[2 * i]), int(flat[2 * i + 1])))
        finally:
            del self._senders[sale_id]

    async def give_back(self, sale_id: str, buyer: str) -> int:
        try:
            return int(await self._give_back(keys=self._keys(sale_id), args=[buyer]))
        except RedisError as exc:
            raise EngineUnavailable(str(exc)) from exc

    async def left(self, sale_id: str) -> int | None:
        try:
            value = await self.redis.get(self._keys(sale_id)[0])
        except RedisError as exc:
            raise EngineUnavailable(str(exc)) from exc
        return int(value) if value is not None else None

    async def close(self) -> None:
        await self.redis.aclose()
