"""RoomFollower over the Redis engine: in-order, gap-free delivery, gaps filled from history, reload when
history is lost, and catch-up after the subscriber was down.

"This instance" is engine ``a`` with a RoomFollower as its listener; "another instance" is engine ``b``,
which publishes to the same Redis and follows nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from rooms.engine import Publication
from rooms.engine_redis import RedisEngine
from rooms.follower import RoomFollower
from tests.support import RedisServer, wait_until

HISTORY_LIMIT = 50
TIMEOUT_S = 3.0


@dataclass
class RecordingDelivery:
    """A ``LocalDelivery`` that keeps what the follower hands to local clients."""

    delivered: list[Publication] = field(default_factory=list)
    ephemerals: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    reloads: list[tuple[str, str]] = field(default_factory=list)

    async def deliver(self, pub: Publication) -> None:
        self.delivered.append(pub)

    async def deliver_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        self.ephemerals.append((room_id, event, data))

    async def reload(self, room_id: str, reason: str) -> None:
        self.reloads.append((room_id, reason))

    def in_room(self, room_id: str) -> list[Publication]:
        return [p for p in self.delivered if p.room_id == room_id]

    def positions(self, room_id: str) -> list[tuple[str, int]]:
        return [(p.epoch, p.offset) for p in self.in_room(room_id)]

    def reloaded(self, room_id: str) -> list[str]:
        return [reason for room, reason in self.reloads if room == room_id]


@dataclass
class Instances:
    a: RedisEngine
    follower: RoomFollower
    delivery: RecordingDelivery
    b: RedisEngine


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def wait_until_subscribed(inst: Instances) -> None:
    """Barrier: something ``b`` publishes reaches ``a``'s follower, so ``a``'s subscriber is up."""
    room = f"ready-{uuid.uuid4().hex[:8]}"
    await inst.follower.follow(room)
    deadline = time.monotonic() + 5
    while not inst.delivery.in_room(room):
        assert time.monotonic() < deadline, "the follower never received a publication"
        await inst.b.publish(room, "ready", {})
        await asyncio.sleep(0.02)
    await inst.follower.unfollow(room)


@pytest.fixture
async def inst(redis_url: str) -> AsyncIterator[Instances]:
    a = RedisEngine(redis_url, history_size=200)
    b = RedisEngine(redis_url, history_size=200)
    delivery = RecordingDelivery()
    follower = RoomFollower(a, delivery, history_limit=HISTORY_LIMIT)
    await a.start(follower)
    instances = Instances(a, follower, delivery, b)
    try:
        await wait_until_subscribed(instances)
        yield instances
    finally:
        await a.close()
        await b.close()


async def publish(engine: RedisEngine, room: str, *ns: int) -> list[Publication]:
    return [await engine.publish(room, "chat.message", {"n": n, "text": f"message {n}"}) for n in ns]


async def wait_delivered(inst: Instances, room: str, count: int) -> None:
    await wait_until(lambda: len(inst.delivery.in_room(room)) >= count, TIMEOUT_S, f"{count} deliveries in {room}")


def same(got: list[Publication], expected: list[Publication]) -> bool:
    key = [(p.epoch, p.offset, p.type, p.data) for p in expected]
    return [(p.epoch, p.offset, p.type, p.data) for p in got] == key


async def test_publications_are_delivered_in_order_without_duplicates(inst: Instances) -> None:
    room = new_room()
    await inst.follower.follow(room)
    pubs = list(await asyncio.gather(*(inst.b.publish(room, "chat.message", {"n": n}) for n in range(40))))
    pubs.sort(key=lambda p: p.offset)
    await wait_delivered(inst, room, 40)
    assert same(inst.delivery.in_room(room), pubs)

    # A publication handed over twice (pub/sub after a catch-up already delivered it) is not re-delivered.
    await inst.follower.on_publication(pubs[10])
    await inst.follower.on_publication(pubs[-1])
    assert await inst.follower.check(room) == "current"
    assert len(inst.delivery.in_room(room)) == 40
    assert inst.delivery.reloads == []


async def test_a_gap_seen_on_the_bus_is_filled_from_history_in_order(inst: Instances) -> None:
    room, sentinel_room = new_room(), new_room()
    await inst.follower.follow(room)
    await inst.follower.follow(sentinel_room)
    delivered = await publish(inst.b, room, 1, 2)
    await wait_delivered(inst, room, 2)

    # Stop this instance's subscription to the room (the follower still believes it follows it) ...
    await inst.a.unfollow(room)
    missed = await publish(inst.b, room, 3, 4, 5, 6)
    # ... and prove the bus really dropped 3..6: the sentinel, published after them, arrives alone.
    await publish(inst.b, sentinel_room, 1)
    await wait_delivered(inst, sentinel_room, 1)
    assert [p.offset for p in inst.delivery.in_room(room)] == [1, 2], "3..6 did not come through pub/sub"

    await inst.a.follow(room)
    revealing = await publish(inst.b, room, 7)
    await wait_delivered(inst, room, 7)
    assert same(inst.delivery.in_room(room), delivered + missed + revealing)
    assert inst.delivery.reloads == []

    nxt = await publish(inst.b, room, 8)
    await wait_delivered(inst, room, 8)
    assert same(inst.delivery.in_room(room)[-1:], nxt), "delivery goes on after the catch-up"


async def test_a_later_publication_handed_over_directly_fills_the_gap_before_it(inst: Instances) -> None:
    room = new_room()
    await inst.a.publish(room, "chat.message", {"n": 0})  # before following: not for us
    await inst.follower.follow(room)
    await inst.a.unfollow(room)  # this instance hears nothing from the bus for this room
    pubs = await publish(inst.b, room, 1, 2, 3, 4, 5)

    latest = (await inst.a.history(room, None, 1)).publications[0]
    assert latest.offset == 6
    await inst.follower.on_publication(latest)

    assert same(inst.delivery.in_room(room), pubs), "offsets 2..6, in order, each once"
    assert inst.delivery.reloads == []


async def test_a_gap_larger_than_the_history_limit_makes_local_clients_reload(inst: Instances) -> None:
    room = new_room()
    await inst.follower.follow(room)
    await inst.a.unfollow(room)
    for n in range(HISTORY_LIMIT + 5):
        await inst.b.publish(room, "chat.message", {"n": n})
    latest = (await inst.a.history(room, None, 1)).publications[0]

    await inst.follower.on_publication(latest)
    assert inst.delivery.reloaded(room) == ["missed events not in history"]
    assert inst.delivery.in_room(room) == [], "no partial, gapped delivery"

    await inst.a.follow(room)
    nxt = await publish(inst.b, room, 999)
    await wait_delivered(inst, room, 1)
    assert same(inst.delivery.in_room(room), nxt), "after the reload, delivery resumes from the new position"


async def test_flushall_makes_the_follower_reload_the_room(inst: Instances, redis_server: RedisServer) -> None:
    room = new_room()
    await inst.follower.follow(room)
    before = await publish(inst.b, room, 1, 2, 3)
    await wait_delivered(inst, room, 3)

    redis_server.flushall()
    first_after = await publish(inst.b, room, 4)
    assert first_after[0].epoch != before[0].epoch and first_after[0].offset == 1
    await wait_until(lambda: bool(inst.delivery.reloaded(room)), TIMEOUT_S, "a reload")
    assert inst.delivery.reloaded(room) == ["history lost"]

    second_after = await publish(inst.b, room, 5)
    await wait_delivered(inst, room, 4)
    assert same(inst.delivery.in_room(room), before + second_after), "the new epoch is followed from its start"
    assert await inst.follower.check(room) == "current"


async def test_redis_restart_without_persistence_makes_followed_rooms_reload(
    inst: Instances, redis_server: RedisServer
) -> None:
    room = new_room()
    await inst.follower.follow(room)
    before = await publish(inst.b, room, 1, 2)
    await wait_delivered(inst, room, 2)

    redis_server.kill()
    try:
        await wait_until(lambda: not inst.a.status.connected, 5, "the subscriber to notice the outage")
        assert await inst.follower.check(room) == "unavailable"
    finally:
        redis_server.start()

    await wait_until(lambda: inst.a.status.connected, 5, "the subscriber to reconnect")
    await wait_until(lambda: bool(inst.delivery.reloaded(room)), TIMEOUT_S, "on_resync to reload the room")
    assert inst.delivery.reloaded(room) == ["missed events not in history"]
    assert (inst.a.status.outages, inst.a.status.rooms_reloaded, inst.a.status.rooms_recovered) == (1, 1, 0)

    after = await publish(inst.b, room, 3)
    assert after[0].epoch != before[0].epoch
    await wait_delivered(inst, room, 3)
    assert same(inst.delivery.in_room(room), before + after)


@contextlib.asynccontextmanager
async def new_connections_refused(admin: aioredis.Redis) -> AsyncIterator[None]:
    """While inside, Redis refuses new connections once the subscribers' connections are dropped."""
    original = str((await admin.config_get("maxclients"))["maxclients"])
    clients = await admin.client_list()
    subscribers = [c for c in clients if int(c["sub"]) > 0]
    # Redis refuses a connection when the clients already connected reach maxclients.
    await admin.config_set("maxclients", len(clients) - len(subscribers))
    try:
        yield
    finally:
        await admin.config_set("maxclients", original)


async def test_on_resync_delivers_what_was_published_while_the_subscriber_was_down(
    inst: Instances, redis_url: str
) -> None:
    room = new_room()
    await inst.follower.follow(room)
    before = await publish(inst.b, room, 1, 2)
    await wait_delivered(inst, room, 2)

    admin = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with new_connections_refused(admin):
            # Drop the subscriber's connection; Redis keeps the data, and refuses the reconnection.
            await admin.client_kill_filter(_type="pubsub")
            await wait_until(lambda: not inst.a.status.connected, 5, "the subscriber to notice")
            missed = await publish(inst.b, room, 3, 4, 5)  # b's pooled connection is already open
            assert not inst.a.status.connected, "the subscriber stayed down while 3..5 were published"
            assert len(inst.delivery.in_room(room)) == 2
    finally:
        await admin.aclose()

    await wait_until(lambda: len(inst.delivery.in_room(room)) >= 5, 5, "on_resync to deliver 3..5")
    assert same(inst.delivery.in_room(room), before + missed)
    assert inst.delivery.reloads == []
    assert (inst.a.status.outages, inst.a.status.rooms_recovered, inst.a.status.rooms_reloaded) == (1, 1, 0)

    nxt = await publish(inst.b, room, 6)
    await wait_delivered(inst, room, 6)
    assert same(inst.delivery.in_room(room), before + missed + nxt), "followed again after the resync"


async def test_check_catches_up_a_gap_no_later_publication_reveals(inst: Instances) -> None:
    room = new_room()
    await inst.follower.follow(room)
    await inst.a.unfollow(room)
    pubs = await publish(inst.b, room, 1, 2, 3)
    assert inst.delivery.in_room(room) == []

    assert await inst.follower.check(room) == "recovered"
    assert same(inst.delivery.in_room(room), pubs)
    assert await inst.follower.check(room) == "current"
    assert len(inst.delivery.in_room(room)) == 3


async def test_follow_learns_the_current_position_and_skips_older_events(inst: Instances) -> None:
    room = new_room()
    old = await publish(inst.b, room, 1, 2)
    await inst.follower.follow(room)
    assert await inst.follower.check(room) == "current"
    new = await publish(inst.b, room, 3)
    await wait_delivered(inst, room, 1)
    assert same(inst.delivery.in_room(room), new), f"not the events from before follow(): {old}"
