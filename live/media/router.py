"""Sends each media request to the instance that hosts the room's media, and answers those sent here.

Sockets and WHIP/WHEP sessions may land on any instance. The router claims the room for this instance
if nobody hosts it yet; otherwise it relays the request to the owner over the media bus. Peer
connections always go to the owner (its SDP answers carry its addresses). Offers for a viewer whose
socket is elsewhere travel back over the bus. When an owner disappears, sockets that watched or
published through it are told ``media:restart`` and start again on the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from live.media.bus import MediaBus
from live.media.errors import MediaError
from live.media.service import MediaService
from live.media.viewer import LostHandler, OfferSender
from rooms.errors import RoomError
from rooms.identity import Grants, Identity, Role

log = logging.getLogger(__name__)

#: Emits a Socket.IO event to one local socket: ``emit(event, data, sid)``.
Emit = Callable[[str, dict[str, Any], str], Awaitable[None]]

OWNER_CHECK_S = 2.0
#: Socket events the hosting instance sends to a viewer's socket on another instance, by their op on the bus.
SOCKET_EVENTS = {"offer": "media:offer", "restart": "media:restart"}


@dataclass(frozen=True)
class Remote:
    """A local socket's media that lives on another instance."""

    room_id: str
    owner: str


def identity_wire(who: Identity) -> dict[str, Any]:
    return {
        "room": who.room_id,
        "user": who.user_id,
        "name": who.name,
        "role": who.role.value,
        "grants": who.grants.to_dict(),
    }


def identity_from(wire: dict[str, Any]) -> Identity:
    return Identity(
        user_id=wire["user"],
        name=wire["name"],
        room_id=wire["room"],
        role=Role(wire["role"]),
        grants=Grants.from_claim(wire["grants"]),
    )


class MediaRouter:
    """The entry point for media requests on this instance (socket signalling and WHIP/WHEP)."""

    def __init__(self, media: MediaService, bus: MediaBus, emit: Emit) -> None:
        self.media = media
        self.bus = bus
        self._emit = emit
        self._watching: dict[str, Remote] = {}  # local sid -> where its viewer lives
        self._published: dict[str, dict[str, Remote]] = {}  # connection -> stream -> its host elsewhere
        self._stage_seen: dict[str, list[str]] = {}  # room -> stage from stage.changed events
        self._task: asyncio.Task[None] | None = None

    @property
    def me(self) -> str:
        return self.bus.instance_id

    async def start(self) -> None:
        await self.bus.start(self.handle)
        self._task = asyncio.create_task(self._watch_owners(), name="media-owner-check")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.bus.close()

    async def _owner(self, room_id: str) -> str:
        """The room's media owner, claiming it for this instance when nobody has it."""
        owner = await self.bus.owner(room_id)
        if owner is None or owner == self.me:
            owner = await self.bus.claim(room_id)
        return owner

    # requests from local sockets and WHIP/WHEP
    async def publish(self, who: Identity, stream: str, sdp: str, *, owner_key: str) -> str:
        """Publish ``stream`` for ``who``; ``owner_key`` names the connection (a socket id or a WHIP
        session), unique across instances, which later ends or disconnects it."""
        host = await self._owner(who.room_id)
        if host == self.me:
            return await self.media.publish(who, stream, sdp, owner=owner_key)
        message = {"op": "publish", "who": identity_wire(who), "stream": stream, "sdp": sdp, "owner_key": owner_key}
        answer = str((await self.bus.request(host, message))["sdp"])
        self._published.setdefault(owner_key, {})[stream] = Remote(who.room_id, host)
        return answer

    async def unpublish(self, who: Identity, stream: str | None, *, owner_key: str) -> bool:
        streams = self._published.get(owner_key, {})
        for name in [stream] if stream is not None else list(streams):
            streams.pop(name, None)
        host = await self.bus.owner(who.room_id)
        if host is None:
            return False
        if host == self.me:
            return await self.media.unpublish(who, stream)
        reply = await self.bus.request(host, {"op": "unpublish", "who": identity_wire(who), "stream": stream})
        return bool(reply["stopped"])

    async def end_session(self, who: Identity, session: str) -> None:
        """WHIP/WHEP ``DELETE``, from whichever instance it reaches."""
        self._published.pop(session, None)
        owner = await self.bus.owner(who.room_id)
        if owner is None:
            raise RoomError("not_found", "no such session")
        if owner == self.me:
            await self.media.end_session(who, session)
        else:
            await self.bus.request(owner, {"op": "end_session", "who": identity_wire(who), "session": session})

    async def disconnected(self, who: Identity, owner_key: str) -> None:
        """The connection ``owner_key`` is gone: what it published gets the republish grace on its host."""
        for stream in ("main", "screen"):  # a no-op for streams it did not publish here
            await self.media.disconnect_publisher(who, stream, owner=owner_key)
        for stream, remote in self._published.pop(owner_key, {}).items():
            message = {
                "op": "disconnect_publisher",
                "who": identity_wire(who),
                "stream": stream,
                "owner_key": owner_key,
            }
            with contextlib.suppress(MediaError):
                await self.bus.notify(remote.owner, message)

    async def watch(self, who: Identity, sid: str) -> None:
        owner = await self._owner(who.room_id)
        viewer_id = f"{self.me}/{sid}"
        if owner == self.me:
            self._watching.pop(sid, None)
            await self.media.watch(
                who, viewer_id, self._offer_sender(self.me, sid), on_lost=self._restarter(self.me, sid)
            )
            return
        await self.bus.request(owner, {"op": "watch", "who": identity_wire(who), "viewer": viewer_id, "sid": sid})
        self._watching[sid] = Remote(who.room_id, owner)

    async def answer(self, who: Identity, sid: str, sdp: str) -> None:
        viewer_id = f"{self.me}/{sid}"
        remote = self._watching.get(sid)
        if remote is None:
            await self.media.answer(who, viewer_id, sdp)
            return
        await self.bus.request(
            remote.owner, {"op": "answer", "who": identity_wire(who), "viewer": viewer_id, "sdp": sdp}
        )

    async def leave(self, who: Identity, sid: str) -> bool:
        viewer_id = f"{self.me}/{sid}"
        remote = self._watching.pop(sid, None)
        if remote is None:
            return await self.media.leave(who.room_id, viewer_id)
        with contextlib.suppress(MediaError):
            await self.bus.notify(remote.owner, {"op": "leave", "who": identity_wire(who), "viewer": viewer_id})
        return True

    async def answer_viewer(self, who: Identity, session: str, sdp: str) -> str:
        owner = await self.bus.owner(who.room_id)
        if owner is None:
            raise MediaError("not_live", "nobody is publishing in this room")
        if owner == self.me:
            return await self.media.answer_viewer(who, session, sdp)
        reply = await self.bus.request(owner, {"op": "whep", "who": identity_wire(who), "viewer": session, "sdp": sdp})
        return str(reply["sdp"])

    async def invite(self, who: Identity, user_id: str) -> list[str]:
        owner = await self._owner(who.room_id)
        if owner == self.me:
            return await self.media.invite(who, user_id)
        reply = await self.bus.request(owner, {"op": "invite", "who": identity_wire(who), "user_id": user_id})
        return list(reply["stage"])

    async def remove_from_stage(self, who: Identity, user_id: str) -> list[str]:
        owner = await self.bus.owner(who.room_id)
        if owner is None or owner == self.me:
            return await self.media.remove_from_stage(who, user_id)
        reply = await self.bus.request(
            owner, {"op": "remove_from_stage", "who": identity_wire(who), "user_id": user_id}
        )
        return list(reply["stage"])

    def stage(self, room_id: str) -> list[str]:
        """Who is on stage, as this instance knows it (its own rooms, or the last stage.changed seen)."""
        if room_id in self.media.rooms:
            return self.media.stage(room_id)
        return list(self._stage_seen.get(room_id, []))

    def note_stage(self, room_id: str, users: list[str]) -> None:
        self._stage_seen[room_id] = list(users)

    async def drop_member(self, room_id: str, user_id: str) -> None:
        """A member was removed (every instance hears it): where the room's media is, theirs ends."""
        if room_id in self.media.rooms:
            await self.media.drop_member(room_id, user_id)

    async def end_room(self, room_id: str) -> None:
        self._stage_seen.pop(room_id, None)
        if room_id in self.media.rooms:
            await self.media.end_room(room_id)
            await self.bus.release(room_id)

    # offers to viewers
    def _offer_sender(self, instance: str, sid: str) -> OfferSender:
        async def send(viewer: Any, payload: dict[str, Any]) -> None:
            await self._to_socket(instance, sid, "offer", payload)

        return send

    def _restarter(self, instance: str, sid: str) -> LostHandler:
        """Tells the socket ``sid`` (here or on ``instance``) that its viewer is lost: it watches again."""

        async def restart() -> None:
            await self._to_socket(instance, sid, "restart", {"reason": "the media worker restarted"})

        return restart

    async def _to_socket(self, instance: str, sid: str, op: str, payload: dict[str, Any]) -> None:
        """Emit ``SOCKET_EVENTS[op]`` to the socket ``sid``: here, or relayed to ``instance`` (best effort)."""
        if instance == self.me:
            await self._emit(SOCKET_EVENTS[op], payload, sid)
        else:
            with contextlib.suppress(MediaError):
                await self.bus.notify(instance, {"op": op, "sid": sid, "payload": payload})

    # requests from other instances
    async def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        op = message["op"]
        if op in SOCKET_EVENTS:
            await self._emit(SOCKET_EVENTS[op], message["payload"], message["sid"])
            return None
        who = identity_from(message["who"])
        if op != "leave" and op != "disconnect_publisher" and await self.bus.owner(who.room_id) != self.me:
            raise MediaError("unavailable", "this instance no longer hosts the room's media; try again")
        if op == "publish":
            return {"sdp": await self.media.publish(who, message["stream"], message["sdp"], owner=message["owner_key"])}
        if op == "unpublish":
            return {"stopped": await self.media.unpublish(who, message["stream"])}
        if op == "end_session":
            await self.media.end_session(who, message["session"])
            return {}
        if op == "disconnect_publisher":
            await self.media.disconnect_publisher(who, message["stream"], owner=message["owner_key"])
            return None
        if op == "watch":
            instance, _, sid = message["viewer"].partition("/")
            await self.media.watch(
                who, message["viewer"], self._offer_sender(instance, sid), on_lost=self._restarter(instance, sid)
            )
            return {}
        if op == "answer":
            await self.media.answer(who, message["viewer"], message["sdp"])
            return {}
        if op == "leave":
            await self.media.leave(who.room_id, message["viewer"])
            return None
        if op == "whep":
            return {"sdp": await self.media.answer_viewer(who, message["viewer"], message["sdp"])}
        if op == "invite":
            return {"stage": await self.media.invite(who, message["user_id"])}
        if op == "remove_from_stage":
            return {"stage": await self.media.remove_from_stage(who, message["user_id"])}
        raise MediaError("invalid", f"unknown media operation {op!r}")

    # an owner that went away
    async def _watch_owners(self) -> None:
        while True:
            await asyncio.sleep(OWNER_CHECK_S)
            try:
                await self._check_owners()
                for room_id in self.bus.owned():
                    room = self.media.rooms.get(room_id)
                    if room is None or room.idle():
                        await self.bus.release(room_id)
            except Exception:
                log.exception("media owner check failed")

    async def _check_owners(self) -> None:
        owners: dict[str, str | None] = {}
        used = [(sid, r) for sid, r in self._watching.items()]
        used += [(key, r) for key, streams in self._published.items() for r in streams.values()]
        for key, remote in used:
            if remote.room_id not in owners:
                owners[remote.room_id] = await self.bus.owner(remote.room_id)
            if owners[remote.room_id] != remote.owner:
                # The host died or gave the room up: start again wherever it lives now.
                self._watching.pop(key, None)
                self._published.pop(key, None)
                await self._emit("media:restart", {"reason": "the media server changed"}, key)
