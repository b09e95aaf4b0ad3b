"""The engine interface: room bus, presence and rate limits, with one memory and one Redis implementation.

The room bus gives every room event a per-room, monotonically increasing offset inside an epoch and keeps
a bounded history (DESIGN.md "Room bus", modelled on Centrifugo's Redis engine). A new epoch means the
history was lost (for example Redis restarted without persistence): offsets restart and clients must
reload instead of trusting a catch-up. Instances receive publications through :class:`BusListener`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol


class EngineUnavailable(Exception):
    """The shared store (Redis) cannot be reached; nothing was written."""


@dataclass(frozen=True)
class StreamPosition:
    """A point in a room's event stream: the epoch and the last offset."""

    epoch: str
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


@dataclass(frozen=True)
class Publication:
    """One numbered room event."""

    room_id: str
    offset: int
    epoch: str
    type: str
    data: dict[str, Any]
    ts: int

    def wire(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch, "type": self.type, "data": self.data, "ts": self.ts}


@dataclass(frozen=True)
class History:
    """Publications read from a room's history, with the stream's position at the time of reading."""

    position: StreamPosition
    publications: list[Publication]
    #: True when ``publications`` are exactly the events after the ``since`` that was asked for.
    recovered: bool = False


@dataclass
class BusStatus:
    """The bus connection as ``/readyz`` reports it."""

    connected: bool = True
    outages: int = 0
    last_outage_started: float | None = None
    last_outage_ended: float | None = None
    #: Rooms whose gap this instance filled from history, or told to reload, since the last outage began.
    rooms_recovered: int = 0
    rooms_reloaded: int = 0

    def to_dict(self) -> dict[str, Any]:
        last = None
        if self.last_outage_started is not None:
            last = {
                "started": self.last_outage_started,
                "ended": self.last_outage_ended,
                "rooms_recovered": self.rooms_recovered,
                "rooms_reloaded": self.rooms_reloaded,
            }
        return {"connected": self.connected, "outages": self.outages, "last_outage": last}


class BusListener(Protocol):
    """What an engine calls when something arrives for a room this instance follows."""

    async def on_publication(self, pub: Publication) -> None: ...

    async def on_ephemeral(self, room_id: str, event: str, data: dict[str, Any]) -> None: ...

    async def on_resync(self) -> None:
        """The subscription was down and is back: every followed room may have missed publications."""


def now_ms() -> int:
    """Wall-clock time in integer milliseconds, as every ``ts`` on the wire."""
    return int(time.time() * 1000)


def contiguous_after(since: StreamPosition, top: StreamPosition, pubs: list[Publication]) -> bool:
    """Whether ``pubs`` are exactly the publications after ``since`` up to ``top``, with nothing missing."""
    if since.epoch != top.epoch or since.offset > top.offset:
        return False
    if len(pubs) != top.offset - since.offset:
        return False
    return all(p.offset == since.offset + i + 1 for i, p in enumerate(pubs))


@dataclass(frozen=True)
class PresenceChange:
    """Result of adding or removing a connection: whether the *user* arrived in (or left) the room, and
    the room's head count (unique users) right after."""

    user_changed: bool
    count: int


@dataclass
class SweepResult:
    """Result of a presence sweep: the head count, and the users whose last connection expired."""

    count: int
    left: list[str] = field(default_factory=list)


class Engine(ABC):
    """Shared hot state for all instances: the room bus, presence and rate-limit buckets."""

    name: str
    status: BusStatus

    def __init__(self) -> None:
        self.listener: BusListener | None = None
        self.status = BusStatus()

    # lifecycle
    async def start(self, listener: BusListener) -> None:
        self.listener = listener

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    # room bus
    @abstractmethod
    async def publish(self, room_id: str, type: str, data: dict[str, Any]) -> Publication:
        """Append an event to the room's history and deliver it to every following instance."""

    @abstractmethod
    async def history(self, room_id: str, since: StreamPosition | None, limit: int) -> History:
        """Events after ``since`` (``recovered`` tells whether all of them were there), or the newest
        ``limit`` events when ``since`` is ``None`` or cannot be served."""

    @abstractmethod
    async def broadcast(self, room_id: str, event: str, data: dict[str, Any]) -> None:
        """Deliver an un-numbered, un-stored event (presence) to every instance following the room."""

    @abstractmethod
    async def follow(self, room_id: str) -> None:
        """Start receiving the room's publications on this instance."""

    @abstractmethod
    async def unfollow(self, room_id: str) -> None: ...

    # presence
    @abstractmethod
    async def presence_add(self, room_id: str, conn_id: str, member: dict[str, str], ttl_s: float) -> PresenceChange:
        """Register or refresh a connection; ``user_changed`` when it is the user's first one in the room."""

    async def presence_refresh(self, room_id: str, members: dict[str, dict[str, str]], ttl_s: float) -> None:
        """Re-register many connections (``conn_id -> member``) at once: keeps them alive, and restores
        them after Redis lost them. Engines with a network round trip override it to make one."""
        for conn_id, member in members.items():
            await self.presence_add(room_id, conn_id, member, ttl_s)

    @abstractmethod
    async def presence_remove(self, room_id: str, conn_id: str, user_id: str) -> PresenceChange:
        """Drop a connection; ``user_changed`` when it was the user's last one in the room."""

    @abstractmethod
    async def presence_sweep(self, room_id: str) -> SweepResult:
        """Expire connections whose instance stopped refreshing them; return the head count."""

    @abstractmethod
    async def presence_members(self, room_id: str, limit: int) -> list[dict[str, str]]: ...

    # rate limits
    @abstractmethod
    async def take_token(self, key: str, capacity: int, window_s: float) -> int:
        """Token bucket shared by all instances: 0 when allowed, else milliseconds until a token is back."""

    @abstractmethod
    async def streak(self, key: str, by: int, window_ms: int) -> int:
        """Add ``by`` to a counter shared by all instances that resets when nothing was added for
        ``window_ms`` (gift combos); returns the counter after adding."""

    # health
    @abstractmethod
    async def ping(self) -> bool: ...
