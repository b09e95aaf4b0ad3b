"""The Engine contract: the same tests run on the memory engine and on the Redis engine.

Room bus (offsets, epoch, bounded history, recovery), delivery to followed rooms only, presence
(per-user head count, first/last connection, expiry) and token-bucket rate limits. The Redis-only tests
at the end cover what only a shared store can do: lose its history (FLUSHALL) and go away (kill).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rooms.engine import Engine, EngineUnavailable, History, PresenceChange, Publication, StreamPosition
from rooms.engine_memory import MemoryEngine
from rooms.engine_redis import RedisEngine
from tests.support import RedisServer, wait_until

HISTORY_SIZE = 10
HISTORY_TTL_S = 60
#: Redis' default ``stream-node-max-entries``: ``XADD MAXLEN ~`` only drops whole stream nodes, so a stream
#: may hold up to about one node more than asked for.
REDIS_STREAM_NODE_ENTRIES = 100
DELIVERY_TIMEOUT_S = 3.0


@dataclass
class RecordingListener:
    """A ``BusListener`` that keeps everything it is handed."""

    publications: list[Publication] = field(default_factory=list)
    ephemerals: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    resyncs: int = 0
    #: room -> (set when a publication of the room is being handled, set by the test to let it finish)
    holds: dict[str, tuple[asyncio.Event, asyncio.Event]] = field(default_factory=dict)

    def hold(self, room_id: str) -> tuple[asyncio.Event, asyncio.Event]:
        """Make the next publication of ``room_id`` block the listener until the test releases it."""
        self.holds[room_id] = (asyncio.Event(), asyncio.Event())
        return self.holds[room_id]

    async def on_publication(self, pub: Publication) -> None:
        held = self.holds.pop(pub.room_id, None)
        if held is not None:
            held[0].set()
            await held[1].wait()
        self.publications.append(pub)

    async def on_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        self.ephemerals.append((room_id, event, data))

    async def on_resync(self) -> None:
        self.resyncs += 1

    def in_room(self, room_id: str) -> list[Publication]:
        return [p for p in self.publications if p.room_id == room_id]

    def ephemeral_in(self, room_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [(event, data) for room, event, data in self.ephemerals if room == room_id]


NewEngine = Callable[[], Engine]


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def wait_until_subscribed(engine: Engine, listener: RecordingListener) -> None:
    """Barrier: a publication to a followed room comes back, so the engine's subscriber is up."""
    room = f"ready-{uuid.uuid4().hex[:8]}"
    await engine.follow(room)
    deadline = time.monotonic() + 5
    while not listener.in_room(room):
        assert time.monotonic() < deadline, "the engine never delivered a publication to a followed room"
        await engine.publish(room, "ready", {})
        await asyncio.sleep(0.02)
    await engine.unfollow(room)


@pytest.fixture(params=["memory", "redis"])
async def new_engine(request: pytest.FixtureRequest) -> AsyncIterator[NewEngine]:
    """Makes unstarted engines of the parametrized kind; closes them after the test."""
    redis_url: str | None = request.getfixturevalue("redis_url") if request.param == "redis" else None
    made: list[Engine] = []

    def make() -> Engine:
        engine: Engine
        if redis_url is None:
            engine = MemoryEngine(history_size=HISTORY_SIZE, history_ttl_s=HISTORY_TTL_S)
        else:
            engine = RedisEngine(redis_url, history_size=HISTORY_SIZE, history_ttl_s=HISTORY_TTL_S)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()


@pytest.fixture
async def engine(new_engine: NewEngine, listener: RecordingListener) -> Engine:
    """A started engine whose subscriber is known to be up."""
    engine = new_engine()
    await engine.start(listener)
    await wait_until_subscribed(engine, listener)
    return engine


async def publish_n(engine: Engine, room: str, n: int) -> list[Publication]:
    return [await engine.publish(room, "chat.message", {"n": i, "text": f"message {i}"}) for i in range(1, n + 1)]


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


# --- offsets and epoch ----------------------------------------------------------------------------------


async def test_offsets_start_at_one_and_rise_by_one_per_room_with_a_stable_epoch(engine: Engine) -> None:
    maths, physics = new_room(), new_room()
    first = await engine.publish(maths, "chat.message", {"n": 1})
    other = await engine.publish(physics, "chat.message", {"n": 1})
    rest = [await engine.publish(maths, "chat.message", {"n": n}) for n in range(2, 6)]
    more_other = await engine.publish(physics, "chat.message", {"n": 2})

    assert offsets([first, *rest]) == [1, 2, 3, 4, 5]
    assert offsets([other, more_other]) == [1, 2], "each room counts its own offsets"
    assert {p.epoch for p in [first, *rest]} == {first.epoch}, "the epoch does not change between publishes"
    assert first.epoch, "an epoch is a non-empty string"
    assert (await engine.history(maths, None, 0)).position == StreamPosition(first.epoch, 5)


async def test_publication_carries_room_type_and_json_data(engine: Engine) -> None:
    room = new_room()
    data = {"text": "héllo", "user": {"id": "u1", "roles": ["student"]}, "amount": 12.5, "ok": True, "none": None}
    pub = await engine.publish(room, "chat.message", data)
    assert (pub.room_id, pub.type, pub.data) == (room, "chat.message", data)
    stored = (await engine.history(room, None, 10)).publications
    assert [(p.offset, p.epoch, p.type, p.data, p.ts) for p in stored] == [
        (pub.offset, pub.epoch, pub.type, data, pub.ts)
    ], "history returns what publish returned"


# --- history and recovery -------------------------------------------------------------------------------


async def test_history_without_since_returns_the_newest_in_ascending_order_and_the_position(engine: Engine) -> None:
    room = new_room()
    pubs = await publish_n(engine, room, 7)
    history = await engine.history(room, None, 3)
    assert offsets(history.publications) == [5, 6, 7]
    assert [p.data for p in history.publications] == [p.data for p in pubs[4:]]
    assert history.position == StreamPosition(pubs[0].epoch, 7)
    assert not history.recovered


async def test_history_of_an_empty_room_is_empty_at_offset_zero(engine: Engine) -> None:
    history = await engine.history(new_room(), None, 10)
    assert history.publications == []
    assert history.position.offset == 0
    assert history.position.epoch


async def test_history_since_returns_exactly_the_publications_after_it(engine: Engine) -> None:
    room = new_room()
    pubs = await publish_n(engine, room, 8)
    epoch = pubs[0].epoch
    history = await engine.history(room, StreamPosition(epoch, 3), 10)
    assert history.recovered
    assert offsets(history.publications) == [4, 5, 6, 7, 8]
    assert [p.data for p in history.publications] == [p.data for p in pubs[3:]]
    assert history.position == StreamPosition(epoch, 8)

    from_start = await engine.history(room, StreamPosition(epoch, 0), 10)
    assert from_start.recovered and offsets(from_start.publications) == [1, 2, 3, 4, 5, 6, 7, 8]


async def test_history_since_the_top_is_recovered_with_nothing_to_send(engine: Engine) -> None:
    room = new_room()
    pubs = await publish_n(engine, room, 4)
    history = await engine.history(room, StreamPosition(pubs[0].epoch, 4), 10)
    assert history.recovered
    assert history.publications == []
    assert history.position == StreamPosition(pubs[0].epoch, 4)


def assert_not_recovered_newest(history: History, top: int, limit: int) -> None:
    assert not history.recovered
    assert offsets(history.publications) == list(range(top - limit + 1, top + 1)), "the newest, ascending"
    assert history.position.offset == top


async def test_history_since_another_epoch_is_not_recovered(engine: Engine) -> None:
    room = new_room()
    pubs = await publish_n(engine, room, 6)
    assert pubs[0].epoch != "stale000"
    history = await engine.history(room, StreamPosition("stale000", 2), 3)
    assert_not_recovered_newest(history, top=6, limit=3)


async def test_history_since_beyond_the_top_is_not_recovered(engine: Engine) -> None:
    room = new_room()
    pubs = await publish_n(engine, room, 5)
    history = await engine.history(room, StreamPosition(pubs[0].epoch, 9), 3)
    assert_not_recovered_newest(history, top=5, limit=3)


async def test_history_with_more_missing_than_the_limit_is_not_recovered(engine: Engine) -> None:
    room = new_room()
    pubs = await publish_n(engine, room, 8)
    epoch = pubs[0].epoch
    too_far = await engine.history(room, StreamPosition(epoch, 2), 5)  # 6 missing, limit 5
    assert_not_recovered_newest(too_far, top=8, limit=5)

    just_enough = await engine.history(room, StreamPosition(epoch, 3), 5)  # 5 missing, limit 5
    assert just_enough.recovered
    assert offsets(just_enough.publications) == [4, 5, 6, 7, 8]


async def test_history_is_bounded_and_recovery_refuses_past_trimmed_entries(engine: Engine) -> None:
    room = new_room()
    published = 3 * (HISTORY_SIZE + REDIS_STREAM_NODE_ENTRIES)  # enough that Redis too must drop old entries
    pubs = await publish_n(engine, room, published)
    epoch = pubs[0].epoch

    retained = (await engine.history(room, None, 10 * published)).publications
    slack = REDIS_STREAM_NODE_ENTRIES if engine.name == "redis" else 0
    assert HISTORY_SIZE <= len(retained) <= HISTORY_SIZE + slack, len(retained)
    oldest = retained[0].offset
    assert offsets(retained) == list(range(oldest, published + 1)), "the retained tail is contiguous"
    assert oldest > 1, "old entries were trimmed"

    trimmed = await engine.history(room, StreamPosition(epoch, oldest - 2), 10 * published)
    assert not trimmed.recovered, "offset oldest-1 is gone: recovery must not pretend otherwise"
    assert offsets(trimmed.publications) == offsets(retained)
    assert trimmed.position == StreamPosition(epoch, published)

    edge = await engine.history(room, StreamPosition(epoch, oldest - 1), 10 * published)
    assert edge.recovered, "everything after oldest-1 is still there"
    assert offsets(edge.publications) == offsets(retained)


# --- delivery -------------------------------------------------------------------------------------------


async def test_followed_room_publications_reach_the_listener_in_order_with_exact_data(
    engine: Engine, listener: RecordingListener
) -> None:
    room = new_room()
    await engine.follow(room)
    pubs = await publish_n(engine, room, 20)
    pubs.append(await engine.publish(room, "poll.opened", {"options": ["a", "b"], "nested": {"x": [1, 2.5, None]}}))

    await wait_until(lambda: len(listener.in_room(room)) >= len(pubs), DELIVERY_TIMEOUT_S, "all publications")
    got = listener.in_room(room)
    assert [(p.offset, p.epoch, p.type, p.data) for p in got] == [(p.offset, p.epoch, p.type, p.data) for p in pubs]


async def test_concurrent_publishes_reach_the_listener_in_offset_order(
    engine: Engine, listener: RecordingListener
) -> None:
    room = new_room()
    await engine.follow(room)
    pubs = await asyncio.gather(*(engine.publish(room, "chat.message", {"n": n}) for n in range(30)))
    assert sorted(offsets(list(pubs))) == list(range(1, 31)), "no offset is handed out twice"
    await wait_until(lambda: len(listener.in_room(room)) >= 30, DELIVERY_TIMEOUT_S, "all publications")
    assert offsets(listener.in_room(room)) == list(range(1, 31))


async def test_unfollowed_rooms_do_not_reach_the_listener(engine: Engine, listener: RecordingListener) -> None:
    followed, never_followed, left = new_room(), new_room(), new_room()
    await engine.follow(followed)
    await engine.follow(left)
    await engine.unfollow(left)

    await engine.publish(never_followed, "chat.message", {"n": 1})
    await engine.publish(left, "chat.message", {"n": 1})
    # One subscriber delivers in publish order: once the sentinel is in, earlier strays would be too.
    sentinel = await engine.publish(followed, "chat.message", {"n": "sentinel"})

    await wait_until(lambda: bool(listener.in_room(followed)), DELIVERY_TIMEOUT_S, "the sentinel")
    assert listener.in_room(followed)[0].data == sentinel.data
    assert listener.in_room(never_followed) == []
    assert listener.in_room(left) == [], "unfollow stops delivery"


async def test_following_again_right_after_unfollow_receives_publications(
    engine: Engine, listener: RecordingListener
) -> None:
    """The last local member leaves and another joins at once (a page reload) while the listener is busy
    with another room's publication (a slow delivery, a catch-up): the room must end up followed."""
    room, busy = new_room(), new_room()
    await engine.follow(room)
    await engine.follow(busy)
    entered, release = listener.hold(busy)
    held = asyncio.create_task(engine.publish(busy, "chat.message", {"n": "slow"}))
    try:
        await asyncio.wait_for(entered.wait(), DELIVERY_TIMEOUT_S)
        await engine.unfollow(room)
        refollow = asyncio.create_task(engine.follow(room))
        await asyncio.sleep(0.1)  # follow() does its part while the listener is still busy
    finally:
        release.set()
        await held
    await asyncio.wait_for(refollow, DELIVERY_TIMEOUT_S)

    pub = await engine.publish(room, "chat.message", {"n": 1})
    await wait_until(lambda: bool(listener.in_room(room)), DELIVERY_TIMEOUT_S, "the publication")
    assert listener.in_room(room)[0].data == pub.data


async def test_publication_right_after_follow_on_a_just_started_engine_is_delivered(
    new_engine: NewEngine, listener: RecordingListener
) -> None:
    """follow() promises that nothing published after it returns is missed, also just after start()."""
    engine = new_engine()
    assert await engine.ping()  # the command connection is open, as after a /readyz probe
    await engine.start(listener)
    room = new_room()
    await engine.follow(room)
    pub = await engine.publish(room, "chat.message", {"n": 1})
    await wait_until(lambda: bool(listener.in_room(room)), DELIVERY_TIMEOUT_S, "the first publication")
    assert listener.in_room(room)[0].data == pub.data


async def test_broadcast_reaches_on_ephemeral_for_followed_rooms_only(
    engine: Engine, listener: RecordingListener
) -> None:
    followed, other = new_room(), new_room()
    await engine.follow(followed)
    await engine.broadcast(other, "presence:joined", {"user_id": "u0"})
    await engine.broadcast(followed, "presence:joined", {"user_id": "u1", "name": "Ann"})
    await engine.broadcast(followed, "presence:left", {"user_id": "u2"})

    await wait_until(lambda: len(listener.ephemeral_in(followed)) >= 2, DELIVERY_TIMEOUT_S, "both broadcasts")
    assert listener.ephemeral_in(followed) == [
        ("presence:joined", {"user_id": "u1", "name": "Ann"}),
        ("presence:left", {"user_id": "u2"}),
    ]
    assert listener.ephemeral_in(other) == []
    assert listener.in_room(followed) == [], "a broadcast is not a numbered publication"
    assert (await engine.history(followed, None, 10)).position.offset == 0, "nor is it stored"


# --- presence -------------------------------------------------------------------------------------------


def member(user_id: str) -> dict[str, str]:
    return {"user_id": user_id, "name": f"name of {user_id}", "role": "student"}


async def head_count(engine: Engine, room: str) -> int:
    return (await engine.presence_sweep(room)).count


async def test_presence_counts_a_user_once_across_connections(engine: Engine) -> None:
    room = new_room()
    assert (await engine.presence_add(room, "c1", member("u1"), 60)).user_changed is True, "the user's first connection"
    assert (await engine.presence_add(room, "c2", member("u1"), 60)).user_changed is False, (
        "a second tab of the same user"
    )
    assert (await engine.presence_add(room, "c1", member("u1"), 60)).user_changed is False, (
        "a refresh is not an arrival"
    )
    assert await engine.presence_add(room, "c3", member("u2"), 60) == PresenceChange(True, 2), "returns the count"
    assert await head_count(engine, room) == 2

    members = await engine.presence_members(room, 100)
    assert sorted(m["user_id"] for m in members) == ["u1", "u2"], "members are deduplicated by user"
    assert member("u1") in members
    assert len(await engine.presence_members(room, 1)) == 1, "limit caps the list"

    assert await engine.presence_remove(room, "c1", "u1") == PresenceChange(False, 2), "u1 still has c2"
    assert await head_count(engine, room) == 2
    assert await engine.presence_remove(room, "c2", "u1") == PresenceChange(True, 1), "u1's last connection"
    assert await engine.presence_remove(room, "c2", "u1") == PresenceChange(False, 1), "removing twice is not leaving"
    assert await head_count(engine, room) == 1
    assert [m["user_id"] for m in await engine.presence_members(room, 100)] == ["u2"]
    assert (await engine.presence_add(room, "c4", member("u1"), 60)).user_changed is True, (
        "coming back is arriving again"
    )


async def test_presence_is_per_room(engine: Engine) -> None:
    maths, physics = new_room(), new_room()
    assert (await engine.presence_add(maths, "c1", member("u1"), 60)).user_changed is True
    assert (await engine.presence_add(physics, "c2", member("u1"), 60)).user_changed is True, (
        "first connection in this room"
    )
    assert await engine.presence_remove(maths, "c1", "u1") == PresenceChange(True, 0)
    assert await head_count(engine, physics) == 1


async def test_presence_sweep_expires_stale_connections_and_reports_who_left(engine: Engine) -> None:
    room = new_room()
    await engine.presence_add(room, "stale-a", member("gone"), 0.2)
    await engine.presence_add(room, "fresh-b", member("stays"), 60)
    await engine.presence_add(room, "stale-c", member("two-tabs"), 0.2)
    await engine.presence_add(room, "fresh-d", member("two-tabs"), 60)
    before = await engine.presence_sweep(room)
    assert (before.count, before.left) == (3, [])

    await asyncio.sleep(0.35)  # let the 0.2 s ttl pass
    after = await engine.presence_sweep(room)
    assert after.left == ["gone"], "only users with no live connection left"
    assert after.count == 2
    assert sorted(m["user_id"] for m in await engine.presence_members(room, 100)) == ["stays", "two-tabs"]
    again = await engine.presence_sweep(room)
    assert (again.count, again.left) == (2, []), "a user leaves once"


# --- rate limits ----------------------------------------------------------------------------------------


async def test_token_bucket_allows_capacity_then_refuses_with_a_retry_after(engine: Engine) -> None:
    key = f"chat:{new_room()}:u1"
    capacity, window_s = 3, 0.3
    assert [await engine.take_token(key, capacity, window_s) for _ in range(capacity)] == [0, 0, 0]
    retry_ms = await engine.take_token(key, capacity, window_s)
    assert 0 < retry_ms <= window_s * 1000 / capacity + 1, retry_ms
    assert await engine.take_token(f"{key}-other", capacity, window_s) == 0, "buckets are per key"


async def test_token_bucket_refills_over_time(engine: Engine) -> None:
    key = f"chat:{new_room()}:u1"
    capacity, window_s = 2, 0.2
    for _ in range(capacity):
        assert await engine.take_token(key, capacity, window_s) == 0
    retry_ms = await engine.take_token(key, capacity, window_s)
    assert retry_ms > 0

    await asyncio.sleep(retry_ms / 1000 + 0.03)
    assert await engine.take_token(key, capacity, window_s) == 0, "a token is back after retry-after"
    assert await engine.take_token(key, capacity, window_s) > 0, "but only one"

    await asyncio.sleep(window_s + 0.05)
    assert [await engine.take_token(key, capacity, window_s) for _ in range(capacity)] == [0, 0], "full again"
    assert await engine.take_token(key, capacity, window_s) > 0, "never more than capacity"


# --- Redis only: lost history and outages ----------------------------------------------------------------


@pytest.fixture
async def redis_engine(redis_url: str, listener: RecordingListener) -> AsyncIterator[RedisEngine]:
    engine = RedisEngine(redis_url, history_size=HISTORY_SIZE, history_ttl_s=HISTORY_TTL_S)
    await engine.start(listener)
    await wait_until_subscribed(engine, listener)
    yield engine
    await engine.close()


async def test_redis_flushall_starts_a_new_epoch_and_refuses_old_positions(
    redis_engine: RedisEngine, redis_server: RedisServer
) -> None:
    room = new_room()
    pubs = await publish_n(redis_engine, room, 3)
    old = StreamPosition(pubs[0].epoch, 3)

    redis_server.flushall()

    fresh = await redis_engine.publish(room, "chat.message", {"n": "after"})
    assert fresh.epoch != old.epoch, "history was lost: the epoch must change"
    assert fresh.offset == 1
    history = await redis_engine.history(room, old, 10)
    assert not history.recovered
    assert history.position == StreamPosition(fresh.epoch, 1)
    assert [p.data for p in history.publications] == [{"n": "after"}]


async def test_redis_history_read_after_flushall_also_refuses_old_positions(
    redis_engine: RedisEngine, redis_server: RedisServer
) -> None:
    room = new_room()
    pubs = await publish_n(redis_engine, room, 3)
    redis_server.flushall()
    history = await redis_engine.history(room, StreamPosition(pubs[0].epoch, 3), 10)
    assert not history.recovered
    assert history.position.epoch != pubs[0].epoch
    assert history.publications == []
    nxt = await redis_engine.publish(room, "chat.message", {})
    assert (nxt.epoch, nxt.offset) == (history.position.epoch, 1), "the epoch that history saw is kept"


async def expect_unavailable(engine: Engine, room: str) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "publish": lambda: engine.publish(room, "chat.message", {}),
        "history": lambda: engine.history(room, None, 10),
        "broadcast": lambda: engine.broadcast(room, "presence:joined", {}),
        "presence_add": lambda: engine.presence_add(room, "c1", member("u1"), 60),
        "presence_remove": lambda: engine.presence_remove(room, "c1", "u1"),
        "presence_sweep": lambda: engine.presence_sweep(room),
        "presence_members": lambda: engine.presence_members(room, 10),
        "take_token": lambda: engine.take_token("k", 3, 1.0),
    }
    for name, call in calls.items():
        try:
            await asyncio.wait_for(call(), 5)
        except EngineUnavailable:
            continue
        except Exception as exc:
            pytest.fail(f"{name} raised {exc!r} instead of EngineUnavailable")
        pytest.fail(f"{name} succeeded while Redis is down")


async def test_redis_outage_raises_unavailable_then_reconnects_and_resyncs(
    redis_engine: RedisEngine, redis_server: RedisServer, listener: RecordingListener
) -> None:
    room = new_room()
    await redis_engine.follow(room)
    assert redis_engine.status.connected and redis_engine.status.outages == 0
    resyncs_before = listener.resyncs

    redis_server.kill()
    try:
        await expect_unavailable(redis_engine, room)
        assert await redis_engine.ping() is False
        await wait_until(lambda: not redis_engine.status.connected, 5, "the engine to notice the outage")
        assert redis_engine.status.outages == 1
        assert redis_engine.status.last_outage_started is not None
        assert listener.resyncs == resyncs_before, "no resync while down"
    finally:
        redis_server.start()

    await wait_until(lambda: redis_engine.status.connected, 5, "the engine to reconnect")
    await wait_until(lambda: listener.resyncs == resyncs_before + 1, 5, "on_resync after reconnecting")
    assert redis_engine.status.outages == 1
    assert redis_engine.status.last_outage_ended is not None
    assert await redis_engine.ping() is True

    pub = await redis_engine.publish(room, "chat.message", {"n": "after restart"})
    await wait_until(lambda: bool(listener.in_room(room)), DELIVERY_TIMEOUT_S, "delivery after resubscribing")
    assert listener.in_room(room)[-1].data == pub.data, "followed rooms are subscribed again"


async def test_redis_calls_succeed_as_soon_as_the_engine_has_reconnected(
    redis_engine: RedisEngine, redis_server: RedisServer, listener: RecordingListener
) -> None:
    """No call is made while Redis is down, so the pooled command connection is the one from before."""
    room = new_room()
    await redis_engine.follow(room)
    await redis_engine.publish(room, "chat.message", {"n": "before"})

    redis_server.kill()
    try:
        await wait_until(lambda: not redis_engine.status.connected, 5, "the engine to notice the outage")
    finally:
        redis_server.start()
    await wait_until(lambda: redis_engine.status.connected, 5, "the engine to reconnect")

    pub = await redis_engine.publish(room, "chat.message", {"n": "after"})
    assert pub.offset == 1, "Redis restarted without persistence: a new stream"
    assert (await redis_engine.history(room, None, 10)).position == StreamPosition(pub.epoch, 1)


async def test_presence_refresh_registers_many_connections_at_once_and_keeps_them_alive(engine: Engine) -> None:
    room = new_room()
    conns = {f"c{i}": member(f"u{i % 300}") for i in range(600)}  # 300 users, two tabs each
    await engine.presence_refresh(room, conns, 0.3)
    assert await head_count(engine, room) == 300
    await engine.presence_refresh(room, conns, 60)  # a refresh is not an arrival: still 300
    assert await head_count(engine, room) == 300
    await asyncio.sleep(0.4)  # past the first ttl: the refresh extended it
    assert await head_count(engine, room) == 300
    assert (await engine.presence_remove(room, "c0", "u0")).user_changed is False, "u0's other tab is registered"


async def test_streak_grows_within_the_window_and_restarts_after(engine: Engine) -> None:
    key = f"streak-{uuid.uuid4().hex[:8]}"
    assert await engine.streak(key, 1, 300) == 1
    assert await engine.streak(key, 2, 300) == 3
    assert await engine.streak(key, 1, 300) == 4
    await asyncio.sleep(0.45)
    assert await engine.streak(key, 5, 300) == 5, "a pause longer than the window starts a new streak"
    assert await engine.streak(f"{key}-other", 1, 300) == 1
