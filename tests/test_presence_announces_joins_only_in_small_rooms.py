"""Join and leave are announced per user while a room is small; past the limit only the head count says
it, so a join storm does not cost N squared deliveries."""

from __future__ import annotations

from typing import Any

from rooms.engine import Publication
from rooms.engine_memory import MemoryEngine
from rooms.identity import Grants, Identity, Role
from rooms.presence import PresenceKeeper


class Recorder:
    def __init__(self) -> None:
        self.ephemeral: list[tuple[str, dict[str, Any]]] = []

    async def on_publication(self, pub: Publication) -> None:
        pass

    async def on_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        self.ephemeral.append((event, data))

    async def on_resync(self) -> None:
        pass


def student(user: str) -> Identity:
    return Identity(user, user.upper(), "big-room", Role.STUDENT, Grants.for_role(Role.STUDENT))


async def test_joins_and_leaves_are_announced_only_up_to_the_limit() -> None:
    engine = MemoryEngine()
    recorder = Recorder()
    await engine.start(recorder)
    await engine.follow("big-room")
    keeper = PresenceKeeper(engine, "instance-1", announce_max=3)

    for i in range(5):
        await keeper.enter(f"sid{i}", student(f"u{i}"))
    await keeper.enter("sid0-tab2", student("u0"))  # a second tab is not a second arrival
    assert [d["user_id"] for e, d in recorder.ephemeral if e == "presence:joined"] == ["u0", "u1", "u2"]
    assert await keeper.count("big-room") == 5

    recorder.ephemeral.clear()
    await keeper.leave("sid0", student("u0"))  # u0 still has a tab open
    for i in range(1, 5):
        await keeper.leave(f"sid{i}", student(f"u{i}"))
    left = [d["user_id"] for e, d in recorder.ephemeral if e == "presence:left"]
    assert left == ["u3", "u4"], "announced once the room is below the limit again"
    assert await keeper.count("big-room") == 1


async def test_a_users_local_connections_are_found_per_room_as_tabs_come_and_go() -> None:
    # An order's event goes to the buyer's own connections: found directly, not by walking the room.
    engine = MemoryEngine()
    await engine.start(Recorder())
    keeper = PresenceKeeper(engine, "instance-1")
    other_room = Identity("u1", "U1", "other-room", Role.STUDENT, Grants.for_role(Role.STUDENT))
    await keeper.enter("a", student("u1"))
    await keeper.enter("b", student("u2"))
    await keeper.enter("c", student("u1"))  # a second tab
    await keeper.enter("d", other_room)
    assert keeper.local_sids("big-room", "u1") == ["a", "c"]
    assert keeper.local_sids("other-room", "u1") == ["d"]
    assert keeper.local_sids("big-room") == ["a", "b", "c"]
    assert keeper.local_sids("big-room", "nobody") == []

    await keeper.leave("a", student("u1"))
    assert keeper.local_sids("big-room", "u1") == ["c"]
    await keeper.leave("a", student("u1"))  # twice: nothing changes
    await keeper.leave("c", student("u1"))
    assert keeper.local_sids("big-room", "u1") == []
    assert keeper.local_sids("other-room", "u1") == ["d"]
    assert keeper._by_user.keys() == {("big-room", "u2"), ("other-room", "u1")}, "no empty entries left behind"
