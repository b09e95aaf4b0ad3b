"""The Redis engine's Q&A store: each change is one Lua script that checks, writes and publishes.

Keys per room, beside the room bus's stream (``s``) and meta hash (``m``), all in the room's hash slot:
``qa:q`` question id → record JSON, ``qa:st`` question id → ``state|author``, ``qa:v`` ``question|user``
→ 1 for every vote, ``qa:n`` question id → count, ``qa:d`` the set of questions voted on since the last
count publication, ``qa:m`` ``loaded``, ``pin`` and the vote sequence ``seq``.

Votes from concurrent callers are sent to Redis together: while one script call is in flight, the
votes that arrive wait and go as the next call (group commit), so a vote storm costs one round trip per
batch, not per vote.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from rooms.engine import EngineUnavailable, Publication, StreamPosition
from rooms.engine_redis import APPEND_LUA, UNAVAILABLE_ERRORS, RedisEngine
from rooms.qa_store import (
    Change,
    Flush,
    QaNotLoaded,
    QaSnapshot,
    QaStore,
    Restore,
    Transition,
    VoteResult,
    question_not_found,
    state_error,
    vote_error,
)

# KEYS: 1 stream, 2 stream meta, 3 qa:q, 4 qa:st, 5 qa:v, 6 qa:n, 7 qa:d, 8 qa:m
# ARGV: 1 channel, 2 history size, 3 TTL, 4 a new epoch (used if the stream has none), then the call's own.
PRELUDE = (
    APPEND_LUA
    + """
local function publish(type, data)
  local t = redis.call('time')
  local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local body = cjson.encode({t = type, d = data, ts = ts})
  local r = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], body)
  return {r[1], r[2], body}
end
local function touch()
  for i = 3, 8 do redis.call('expire', KEYS[i], ARGV[3]) end
end
local function visible(state)
  return state == 'published' or state == 'answered'
end
local function loaded()
  return redis.call('hget', KEYS[8], 'loaded') == '1'
end
"""
)

ASK_LUA = (
    PRELUDE
    + """
if not loaded() then return {'not_loaded'} end
local q = cjson.decode(ARGV[5])
redis.call('hset', KEYS[3], q.id, ARGV[5])
redis.call('hset', KEYS[4], q.id, q.state .. '|' .. q.author.user_id)
redis.call('hset', KEYS[6], q.id, 0)
touch()
q.votes = 0
local r = publish('qa.question', {q = q, pin = redis.call('hget', KEYS[8], 'pin') or cjson.null})
return {'ok', r[1], r[2], r[3]}
"""
)

# ARGV 5 question id, 6 ",allowed,states,", 7 new state, 8 patch JSON, 9 now (ms)
CHANGE_LUA = (
    PRELUDE
    + """
if not loaded() then return {'not_loaded'} end
local raw = redis.call('hget', KEYS[3], ARGV[5])
if not raw then return {'not_found'} end
local q = cjson.decode(raw)
if not string.find(ARGV[6], ',' .. q.state .. ',', 1, true) then return {'bad_state', q.state} end
for k, v in pairs(cjson.decode(ARGV[8])) do q[k] = v end
q.state = ARGV[7]
q.v = q.v + 1
q.updated_ts = tonumber(ARGV[9])
if visible(q.state) and q.published_ts == cjson.null then q.published_ts = tonumber(ARGV[9]) end
redis.call('hset', KEYS[3], ARGV[5], cjson.encode(q))
redis.call('hset', KEYS[4], ARGV[5], q.state .. '|' .. q.author.user_id)
local pin = redis.call('hget', KEYS[8], 'pin')
if pin == ARGV[5] and not visible(q.state) then
  redis.call('hdel', KEYS[8], 'pin')
  pin = false
end
touch()
q.votes = tonumber(redis.call('hget', KEYS[6], ARGV[5]) or '0')
local r = publish('qa.question', {q = q, pin = pin or cjson.null})
return {'ok', r[1], r[2], r[3]}
"""
)

# ARGV 5 question id, or '' to unpin
PIN_LUA = (
    PRELUDE
    + """
if not loaded() then return {'not_loaded'} end
local current = redis.call('hget', KEYS[8], 'pin') or ''
if current == ARGV[5] then return {'same'} end
if ARGV[5] ~= '' then
  local st = redis.call('hget', KEYS[4], ARGV[5])
  if not st then return {'not_found'} end
  local state = string.match(st, '^(%a+)|')
  if not visible(state) then return {'bad_state', state} end
  redis.call('hset', KEYS[8], 'pin', ARGV[5])
else
  redis.call('hdel', KEYS[8], 'pin')
end
touch()
local r = publish('qa.pin', {id = (ARGV[5] ~= '' and ARGV[5]) or cjson.null})
return {'ok', r[1], r[2], r[3]}
"""
)

# ARGV from 5: (question id, user id, '1' up | '0' down) per vote. Returns per vote one string
# "status changed count seq state" (one flat reply is much cheaper to parse than nested ones).
VOTE_LUA = """
if redis.call('hget', KEYS[8], 'loaded') ~= '1' then return {'not_loaded'} end
local out = {}
for i = 5, #ARGV, 3 do
  local qid, user, up = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
  local st = redis.call('hget', KEYS[4], qid)
  if not st then
    table.insert(out, 'not_found 0 0 0 -')
  else
    local state, author = string.match(st, '^(%a+)|(.*)$')
    if state ~= 'published' and state ~= 'answered' then
      table.insert(out, 'closed 0 0 0 ' .. state)
    elseif author == user then
      table.insert(out, 'own 0 0 0 ' .. state)
    else
      local f = qid .. '|' .. user
      local changed
      if up then changed = redis.call('hsetnx', KEYS[5], f, 1) else changed = redis.call('hdel', KEYS[5], f) end
      local n, seq
      if changed == 1 then
        n = redis.call('hincrby', KEYS[6], qid, up and 1 or -1)
        seq = redis.call('hincrby', KEYS[8], 'seq', 1)
        redis.call('sadd', KEYS[7], qid)
      else
        n = redis.call('hget', KEYS[6], qid) or '0'
        seq = redis.call('hget', KEYS[8], 'seq') or '0'
      end
      table.insert(out, 'ok ' .. changed .. ' ' .. n .. ' ' .. seq .. ' ' .. state)
    end
  end
end
return out
"""

FLUSH_VOTES_LUA = (
    PRELUDE
    + """
if not loaded() then return {'not_loaded'} end
if redis.call('scard', KEYS[7]) == 0 then return {'none'} end
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = tonumber(redis.call('hget', KEYS[8], 'flushed') or '0') + tonumber(ARGV[5]) - now
if wait > 0 then return {'wait', wait} end
redis.call('hset', KEYS[8], 'flushed', now)
local ids = redis.call('smembers', KEYS[7])
redis.call('del', KEYS[7])
local counts = {}
for _, id in ipairs(ids) do counts[id] = tonumber(redis.call('hget', KEYS[6], id) or '0') end
touch()
local seq = tonumber(redis.call('hget', KEYS[8], 'seq') or '0')
local r = publish('qa.votes', {counts = counts, seq = seq})
return {'ok', r[1], r[2], r[3]}
"""
)

SNAPSHOT_LUA = """
if redis.call('hsetnx', KEYS[2], 'e', ARGV[4]) == 1 then
  redis.call('del', KEYS[1])
  redis.call('expire', KEYS[2], ARGV[3])
end
if redis.call('hget', KEYS[8], 'loaded') ~= '1' then return {'not_loaded'} end
return {
  'ok', redis.call('hget', KEYS[2], 'e'), tonumber(redis.call('hget', KEYS[2], 's') or '0'),
  redis.call('hget', KEYS[8], 'pin') or '', redis.call('hgetall', KEYS[3]), redis.call('hgetall', KEYS[6])
}
"""

# ARGV 5: {"questions": [...], "voters": [[qid, user], ...], "seq": n}
RESTORE_LUA = (
    PRELUDE
    + """
if loaded() then return 0 end
local data = cjson.decode(ARGV[5])
for i = 3, 8 do redis.call('del', KEYS[i]) end
for _, q in ipairs(data.questions) do
  redis.call('hset', KEYS[3], q.id, cjson.encode(q))
  redis.call('hset', KEYS[4], q.id, q.state .. '|' .. q.author.user_id)
  redis.call('hset', KEYS[6], q.id, 0)
end
for _, pair in ipairs(data.voters) do
  local known = redis.call('hexists', KEYS[6], pair[1]) == 1
  if known and redis.call('hsetnx', KEYS[5], pair[1] .. '|' .. pair[2], 1) == 1 then
    redis.call('hincrby', KEYS[6], pair[1], 1)
  end
end
redis.call('hset', KEYS[8], 'loaded', '1', 'seq', data.seq)
touch()
return 1
"""
)

VOTE_BATCH_MAX = 500


@dataclass
class _PendingVotes:
    votes: list[tuple[str, str, bool, asyncio.Future[VoteResult]]] = field(default_factory=list)
    sending: bool = False


class RedisQaStore(QaStore):
    """Implements :class:`QaStore` on the Redis engine's connection and room-bus keys."""

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        r = engine.redis
        self._ask = r.register_script(ASK_LUA)
        self._change = r.register_script(CHANGE_LUA)
        self._pin = r.register_script(PIN_LUA)
        self._vote = r.register_script(VOTE_LUA)
        self._flush = r.register_script(FLUSH_VOTES_LUA)
        self._snapshot = r.register_script(SNAPSHOT_LUA)
        self._restore = r.register_script(RESTORE_LUA)
        self._pending: dict[str, _PendingVotes] = {}
        self._senders: set[asyncio.Future[None]] = set()

    def _keys(self, room_id: str) -> list[str]:
        k = self.engine.key
        suffixes = ("s", "m", "qa:q", "qa:st", "qa:v", "qa:n", "qa:d", "qa:m")
        return [k(room_id, s) for s in suffixes]

    def _args(self, room_id: str, *extra: Any) -> list[Any]:
        e = self.engine
        return [e.key(room_id, "ch"), e.history_size, e.history_ttl_s, secrets.token_hex(4), *extra]

    async def _run(self, script: Any, room_id: str, *extra: Any) -> list[Any]:
        result: list[Any] = await self.engine.call(script, self._keys(room_id), self._args(room_id, *extra))
        if result[0] == "not_loaded":
            raise QaNotLoaded(room_id)
        return result

    @staticmethod
    def _publication(room_id: str, result: list[Any]) -> Publication:
        _, offset, epoch, body = result
        decoded = json.loads(body)
        return Publication(room_id, int(offset), epoch, decoded["t"], decoded["d"], int(decoded["ts"]))

    async def ask(self, room_id: str, question: dict[str, Any]) -> Change:
        result = await self._run(self._ask, room_id, json.dumps(question, separators=(",", ":")))
        pub = self._publication(room_id, result)
        return Change(pub.data["q"], pub)

    async def change(self, room_id: str, question_id: str, move: Transition, patch: dict[str, Any], now: int) -> Change:
        allowed = "," + ",".join(sorted(s.value for s in move.allowed_from)) + ","
        patch_json = json.dumps(patch, separators=(",", ":")) if patch else "{}"
        result = await self._run(self._change, room_id, question_id, allowed, move.to.value, patch_json, now)
        if result[0] == "not_found":
            raise question_not_found()
        if result[0] == "bad_state":
            raise state_error(result[1], move.action)
        pub = self._publication(room_id, result)
        return Change(pub.data["q"], pub)

    async def pin(self, room_id: str, question_id: str | None) -> Publication | None:
        result = await self._run(self._pin, room_id, question_id or "")
        if result[0] == "same":
            return None
        if result[0] == "not_found":
            raise question_not_found()
        if result[0] == "bad_state":
            raise state_error(result[1], "pin")
        return self._publication(room_id, result)

    async def vote(self, room_id: str, question_id: str, user_id: str, up: bool) -> VoteResult:
        pending = self._pending.get(room_id)
        if pending is None:
            pending = self._pending[room_id] = _PendingVotes()
        future: asyncio.Future[VoteResult] = asyncio.get_running_loop().create_future()
        pending.votes.append((question_id, user_id, up, future))
        if not pending.sending:
            pending.sending = True
            task = asyncio.ensure_future(self._send_votes(room_id, pending))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await future

    async def _send_votes(self, room_id: str, pending: _PendingVotes) -> None:
        try:
            while pending.votes:
                batch, pending.votes = pending.votes[:VOTE_BATCH_MAX], pending.votes[VOTE_BATCH_MAX:]
                args = [a for qid, user, up, _ in batch for a in (qid, user, "1" if up else "0")]
                try:
                    results = await self._run(self._vote, room_id, *args)
                except Exception as exc:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for *_, future in batch:
                        future.cancel()
                    raise
                for (*_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    status, changed, count, seq, state = result.split(" ")
                    if status == "ok":
                        future.set_result(VoteResult(changed == "1", int(count), int(seq)))
                    else:
                        future.set_exception(vote_error(status, state))
        finally:
            pending.sending = False
            if not pending.votes and self._pending.get(room_id) is pending:
                del self._pending[room_id]

    async def flush_votes(self, room_id: str, min_interval_ms: int = 0) -> Flush:
        result = await self._run(self._flush, room_id, min_interval_ms)
        if result[0] == "none":
            return Flush(None)
        if result[0] == "wait":
            return Flush(None, retry_in_ms=int(result[1]))
        return Flush(self._publication(room_id, result))

    async def snapshot(self, room_id: str) -> QaSnapshot:
        _, epoch, top, pin, flat_questions, flat_counts = await self._run(self._snapshot, room_id)
        counts = {flat_counts[i]: int(flat_counts[i + 1]) for i in range(0, len(flat_counts), 2)}
        questions: dict[str, dict[str, Any]] = {}
        for i in range(0, len(flat_questions), 2):
            question = json.loads(flat_questions[i + 1])
            question["votes"] = counts.get(question["id"], 0)
            questions[question["id"]] = question
        return QaSnapshot(questions, pin or None, StreamPosition(epoch, int(top)))

    async def voted(self, room_id: str, user_id: str, question_ids: list[str]) -> set[str]:
        if not question_ids:
            return set()
        fields = [f"{qid}|{user_id}" for qid in question_ids]
        try:
            values = await self.engine.redis.hmget(self.engine.key(room_id, "qa:v"), fields)
        except UNAVAILABLE_ERRORS as exc:
            raise EngineUnavailable(f"redis unavailable: {exc}") from exc
        return {qid for qid, value in zip(question_ids, values, strict=True) if value is not None}

    async def restore(self, room_id: str, data: Restore) -> bool:
        payload = {"questions": data.questions, "voters": [list(v) for v in data.voters], "seq": data.seq}
        result = await self.engine.call(
            self._restore, self._keys(room_id), self._args(room_id, json.dumps(payload, separators=(",", ":")))
        )
        return bool(result)
