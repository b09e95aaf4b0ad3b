"""The Q&A store contract: the same tests on the memory store and the Redis store (Lua).

States and their allowed moves, one vote per user, concurrent votes counted exactly, counts published
together, snapshots at a bus position, and loading from SQL's record only into an empty store.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rooms.engine import Engine, Publication
from rooms.engine_memory import MemoryEngine
from rooms.engine_redis import RedisEngine
from rooms.errors import RoomError
from rooms.qa import ACTIONS, ANSWER, qa_store_for
from rooms.qa_store import QaNotLoaded, QaStore, QuestionState, Restore
from tests.test_engine_contract import RecordingListener, wait_until_subscribed

S = QuestionState


@pytest.fixture(params=["memory", "redis"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Engine, RecordingListener]]:
    listener = RecordingListener()
    engine: Engine
    if request.param == "memory":
        engine = MemoryEngine(history_size=1000)
    else:
        engine = RedisEngine(request.getfixturevalue("redis_url"), history_size=1000)
    await engine.start(listener)
    await wait_until_subscribed(engine, listener)
    yield engine, listener
    await engine.close()


@pytest.fixture
async def store(engine: tuple[Engine, RecordingListener]) -> QaStore:
    return qa_store_for(engine[0])


def new_room() -> str:
    return f"qa-{uuid.uuid4().hex[:8]}"


def question(author: str = "s1", state: S = S.PUBLISHED, anonymous: bool = False) -> dict[str, Any]:
    now = 1_700_000_000_000
    return {
        "id": "q" + uuid.uuid4().hex[:16],
        "text": 'Why is the sky blue? ünïcödé / "quoted"',
        "anonymous": anonymous,
        "author": {"user_id": author, "name": author.upper(), "role": "student"},
        "state": state.value,
        "answer": None,
        "ts": now,
        "published_ts": now if state.visible else None,
        "updated_ts": now,
        "v": 1,
    }


async def loaded_room(store: QaStore) -> str:
    room = new_room()
    assert await store.restore(room, Restore())
    return room


async def test_nothing_works_until_the_room_is_loaded_and_loading_happens_once(store: QaStore) -> None:
    room = new_room()
    with pytest.raises(QaNotLoaded):
        await store.ask(room, question())
    with pytest.raises(QaNotLoaded):
        await store.snapshot(room)
    q = question()
    assert await store.restore(room, Restore(questions=[q], voters=[(q["id"], "s2"), (q["id"], "s3")], seq=7))
    assert not await store.restore(room, Restore()), "a loaded room is never overwritten"
    snap = await store.snapshot(room)
    assert snap.questions[q["id"]]["votes"] == 2
    assert snap.questions[q["id"]]["text"] == q["text"]
    result = await store.vote(room, q["id"], "s4", True)
    assert (result.changed, result.votes, result.seq) == (True, 3, 8), "the vote sequence continues from SQL's"


async def test_ask_publishes_the_record_and_snapshot_is_at_a_bus_position(
    store: QaStore, engine: tuple[Engine, RecordingListener]
) -> None:
    bus, _ = engine
    room = await loaded_room(store)
    q = question(state=S.PENDING, anonymous=True)
    change = await store.ask(room, q)
    assert change.question == {**q, "votes": 0}
    assert change.publication.type == "qa.question"
    assert change.publication.data == {"q": {**q, "votes": 0}, "pin": None}
    snap = await store.snapshot(room)
    assert snap.questions == {q["id"]: {**q, "votes": 0}}
    history = await bus.history(room, None, 10)
    assert snap.position == history.position
    assert history.publications[-1].offset == change.publication.offset


async def test_every_action_moves_only_from_its_allowed_states(store: QaStore) -> None:
    room = await loaded_room(store)
    for move in ACTIONS.values():
        for start in S:
            q = question(state=start)
            await store.ask(room, q)
            if start in move.allowed_from:
                change = await store.change(room, q["id"], move, {}, 2)
                assert change.question["state"] == move.to.value
                assert change.question["v"] == 2
            else:
                with pytest.raises(RoomError) as refused:
                    await store.change(room, q["id"], move, {}, 2)
                assert refused.value.code == "invalid_state"
                assert (await store.snapshot(room)).questions[q["id"]]["state"] == start.value, "nothing changed"
    with pytest.raises(RoomError) as missing:
        await store.change(room, "q" + "0" * 16, ACTIONS["hide"], {}, 2)
    assert missing.value.code == "not_found"


async def test_publishing_sets_published_ts_once_and_patch_sets_fields(store: QaStore) -> None:
    room = await loaded_room(store)
    q = question(state=S.PENDING)
    await store.ask(room, q)
    approved = (await store.change(room, q["id"], ACTIONS["approve"], {}, 5)).question
    assert approved["published_ts"] == 5
    answer = {"text": "Rayleigh scattering", "private": False, "live": False, "by": {"user_id": "t"}, "ts": 6}
    answered = (await store.change(room, q["id"], ANSWER, {"answer": answer}, 6)).question
    assert answered["answer"] == answer and answered["published_ts"] == 5 and answered["updated_ts"] == 6
    reopened = (await store.change(room, q["id"], ACTIONS["reopen"], {"answer": None}, 7)).question
    assert reopened["answer"] is None and reopened["v"] == 4


async def test_votes_one_per_user_not_own_not_on_closed_questions(store: QaStore) -> None:
    room = await loaded_room(store)
    q = question(author="s1")
    await store.ask(room, q)
    first = await store.vote(room, q["id"], "s2", True)
    again = await store.vote(room, q["id"], "s2", True)
    assert (first.changed, first.votes) == (True, 1)
    assert (again.changed, again.votes) == (False, 1), "a second vote changes nothing"
    back = await store.vote(room, q["id"], "s2", False)
    back_again = await store.vote(room, q["id"], "s2", False)
    assert (back.changed, back.votes, back_again.changed, back_again.votes) == (True, 0, False, 0)
    with pytest.raises(RoomError) as own:
        await store.vote(room, q["id"], "s1", True)
    assert own.value.code == "own_question"
    for state in (S.PENDING, S.DISMISSED, S.HIDDEN):
        closed = question(state=state)
        await store.ask(room, closed)
        with pytest.raises(RoomError) as refused:
            await store.vote(room, closed["id"], "s2", True)
        assert refused.value.code == "invalid_state"
    with pytest.raises(RoomError) as missing:
        await store.vote(room, "q" + "1" * 16, "s2", True)
    assert missing.value.code == "not_found"
    answered = question(state=S.ANSWERED)
    await store.ask(room, answered)
    assert (await store.vote(room, answered["id"], "s2", True)).votes == 1, "answered questions take votes"


async def test_concurrent_votes_are_counted_exactly(store: QaStore) -> None:
    room = await loaded_room(store)
    q = question()
    await store.ask(room, q)
    users = [f"u{i}" for i in range(300)]
    results = await asyncio.gather(*(store.vote(room, q["id"], u, True) for u in users + users))
    assert sum(r.changed for r in results) == 300
    assert len({r.seq for r in results if r.changed}) == 300, "every change has its own sequence number"
    assert (await store.snapshot(room)).questions[q["id"]]["votes"] == 300
    await asyncio.gather(*(store.vote(room, q["id"], u, False) for u in users))
    assert (await store.snapshot(room)).questions[q["id"]]["votes"] == 0
    assert await store.voted(room, "u1", [q["id"]]) == set()


async def test_flush_publishes_current_counts_of_voted_questions_only(
    store: QaStore, engine: tuple[Engine, RecordingListener]
) -> None:
    bus, listener = engine
    room = await loaded_room(store)
    await bus.follow(room)
    a, b, c = question(), question(), question()
    for q in (a, b, c):
        await store.ask(room, q)
    assert (await store.flush_votes(room)).publication is None, "nothing voted, nothing published"
    for user in ("u1", "u2", "u3"):
        await store.vote(room, a["id"], user, True)
    last = await store.vote(room, b["id"], "u1", True)
    pub = (await store.flush_votes(room)).publication
    assert pub is not None and pub.type == "qa.votes"
    assert pub.data == {"counts": {a["id"]: 3, b["id"]: 1}, "seq": last.seq}
    assert (await store.flush_votes(room)).publication is None
    await store.vote(room, c["id"], "u1", True)
    held = await store.flush_votes(room, min_interval_ms=60_000)
    assert held.publication is None and 0 < held.retry_in_ms <= 60_000, "counts went out a moment ago: wait"
    later = (await store.flush_votes(room)).publication
    assert later is not None and later.data["counts"] == {c["id"]: 1}, "the held counts are not lost"
    assert await store.voted(room, "u1", [a["id"], b["id"], c["id"]]) == {a["id"], b["id"], c["id"]}

    async def arrived() -> list[Publication]:
        for _ in range(100):
            pubs = [p for p in listener.in_room(room) if p.type == "qa.votes"]
            if pubs:
                return pubs
            await asyncio.sleep(0.02)
        return []

    assert [p.data for p in await arrived()] == [pub.data, later.data], "flushes reach following instances"


async def test_pin_only_visible_questions_and_unpin_when_they_leave(store: QaStore) -> None:
    room = await loaded_room(store)
    shown, waiting = question(), question(state=S.PENDING)
    await store.ask(room, shown)
    await store.ask(room, waiting)
    with pytest.raises(RoomError) as refused:
        await store.pin(room, waiting["id"])
    assert refused.value.code == "invalid_state"
    pub = await store.pin(room, shown["id"])
    assert pub is not None and pub.data == {"id": shown["id"]}
    assert await store.pin(room, shown["id"]) is None, "pinning the pinned question changes nothing"
    assert (await store.snapshot(room)).pin == shown["id"]
    hidden = await store.change(room, shown["id"], ACTIONS["hide"], {}, 9)
    assert hidden.publication.data["pin"] is None, "a hidden question is unpinned in the same step"
    assert (await store.snapshot(room)).pin is None
