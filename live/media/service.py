"""The media of every room on this instance, with its housekeeping and figures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from live.media.delays import ForwardDelays
from live.media.errors import MediaError
from live.media.forwarding import set_fanout_threads
from live.media.room import MediaRoom, local_viewer
from live.media.viewer import LostHandler, OfferSender, ViewerPeer
from live.media.workers import WorkerFigures, WorkerPool
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity

log = logging.getLogger(__name__)

#: Publishes a room event to every member (the room bus): ``announce(room_id, type, data)``.
Announce = Callable[[str, str, dict[str, Any]], Awaitable[object]]


@dataclass(frozen=True)
class MediaFigures:
    """Totals over this instance's rooms (``/metrics`` and ``GET /api/media/stats``)."""

    rooms: int
    publishers: int
    viewers: int
    tracks: int
    packets_in: int
    packets_out: int
    keyframe_requests: int
    forward_p50_ms: float | None
    forward_p99_ms: float | None
    forward_last_copy_p99_ms: float | None
    forward_wait_p99_ms: float | None
    forward_pass_p99_ms: float | None
    workers: tuple[WorkerFigures, ...] = ()


class MediaService:
    """Creates each room's ``MediaRoom`` on first use, refreshes sender reports, drops empty rooms.

    With ``workers`` > 0, viewers' peer connections live in that many worker processes
    (``live/media/workers.py``); start them with :meth:`start_workers`."""

    def __init__(
        self,
        *,
        republish_grace_s: float = 15.0,
        announce: Announce | None = None,
        workers: int = 0,
        fanout_threads: int = 1,
        name: str = "media",
        log_level: str = "INFO",
    ) -> None:
        set_fanout_threads(fanout_threads)
        self.rooms: dict[str, MediaRoom] = {}
        self._announce = announce
        self._grace_s = republish_grace_s
        self.delays = ForwardDelays()
        self._task: asyncio.Task[None] | None = None
        self._closed_totals = (0, 0, 0)
        self.workers = (
            WorkerPool(workers, self.delays.observe, name=name, log_level=log_level, fanout_threads=fanout_threads)
            if workers > 0
            else None
        )

    async def start_workers(self) -> None:
        """Start the media worker processes, if any; returns when every one of them answers."""
        if self.workers is not None:
            await self.workers.start()

    def room(self, room_id: str) -> MediaRoom:
        room = self.rooms.get(room_id)
        if room is None or room.closed:
            room = MediaRoom(
                room_id,
                republish_grace_s=self._grace_s,
                observe_delay=self.delays.observe,
                make_viewer=self.workers.viewer if self.workers is not None else local_viewer,
            )
            self.rooms[room_id] = room
        return room

    # the socket and WHIP/WHEP entry points
    async def publish(self, who: Identity, stream: str, offer_sdp: str, *, owner: str | None = None) -> str:
        """Answer ``who``'s offer for one stream; ``owner`` names the connection it came through."""
        if not (who.grants.publish or who.user_id in self.stage(who.room_id)):
            raise forbidden("publishing media (staff may invite you on stage)")
        room = self.room(who.room_id)
        try:
            return await room.publish(who.user_id, stream, offer_sdp, owner=owner)
        except BaseException:
            self._drop_if_idle(room)  # a refused offer leaves nothing behind
            raise

    def _drop_if_idle(self, room: MediaRoom) -> None:
        if room.idle() and self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]

    # the stage: students invited to publish
    def stage(self, room_id: str) -> list[str]:
        """The students on stage in ``room_id``, sorted."""
        room = self.rooms.get(room_id)
        return sorted(room.stage) if room is not None else []

    async def invite(self, who: Identity, user_id: str) -> list[str]:
        """Staff invite a student on stage: they may then publish, and everyone receives them."""
        if not who.is_staff:
            raise forbidden("inviting on stage")
        room = self.room(who.room_id)
        if user_id not in room.stage:
            room.stage.add(user_id)
            await self._stage_changed(room)
        return sorted(room.stage)

    async def drop_member(self, room_id: str, user_id: str) -> None:
        """``user_id`` was removed from the room: their viewers and streams here end, and they leave the stage."""
        room = self.rooms.get(room_id)
        if room is None:
            return
        for viewer_id in [v.viewer_id for v in room.viewers.values() if v.user_id == user_id]:
            await room.leave(viewer_id)
        await self._off_stage(room, user_id)
        self._drop_if_idle(room)

    async def remove_from_stage(self, who: Identity, user_id: str) -> list[str]:
        """Staff send a student back to the audience (or a student leaves the stage): their tracks stop
        for every viewer at once."""
        if not who.is_staff and who.user_id != user_id:
            raise forbidden("sending someone else back to the audience")
        room = self.rooms.get(who.room_id)
        if room is None or user_id not in room.stage:
            return self.stage(who.room_id)
        await self._off_stage(room, user_id)
        self._drop_if_idle(room)
        return sorted(room.stage)

    async def _off_stage(self, room: MediaRoom, user_id: str) -> None:
        """``user_id``'s streams stop now, and if they were on stage, everyone hears they are off it."""
        on_stage = user_id in room.stage
        room.stage.discard(user_id)
        await room.unpublish(user_id)
        if on_stage:
            await self._stage_changed(room)

    async def _stage_changed(self, room: MediaRoom) -> None:
        if self._announce is not None:
            await self._announce(room.room_id, "stage.changed", {"users": sorted(room.stage)})

    async def disconnect_publisher(self, who: Identity, stream: str, *, owner: str) -> None:
        """``owner``'s connection is gone: close what it published, keeping the tracks for the grace period."""
        room = self.rooms.get(who.room_id)
        if room is not None:
            await room.disconnect_publisher(who.user_id, stream, owner)

    async def unpublish(self, who: Identity, stream: str | None) -> bool:
        room = self.rooms.get(who.room_id)
        return room is not None and await room.unpublish(who.user_id, stream)

    async def watch(
        self, who: Identity, viewer_id: str, send_offer: OfferSender, *, on_lost: LostHandler | None = None
    ) -> ViewerPeer:
        """Start ``who``'s viewer; ``on_lost`` tells its client to watch again if a media worker dies."""
        room = self.room(who.room_id)
        try:
            return await room.watch(viewer_id, who.user_id, send_offer, on_lost)
        except BaseException:
            self._drop_if_idle(room)
            raise

    async def answer_viewer(self, who: Identity, viewer_id: str, offer_sdp: str) -> str:
        """WHEP: answer a viewer's offer with the room's current tracks."""
        room = self.rooms.get(who.room_id)
        if room is None or not room.sources:
            raise MediaError("not_live", "nobody is publishing in this room")
        _, answer = await room.answer_viewer(viewer_id, offer_sdp, who.user_id)
        return answer

    async def end_session(self, who: Identity, session: str) -> None:
        """WHIP/WHEP ``DELETE``: end the stream or the viewer created as ``session``, if it is ``who``'s."""
        room = self.rooms.get(who.room_id)
        publisher = next((p for p in room.publishers.values() if p.owner == session), None) if room else None
        viewer = room.viewers.get(session) if room else None
        user = publisher.user_id if publisher else viewer.user_id if viewer else None
        if room is None or user is None:
            raise RoomError("not_found", "no such session")
        if user != who.user_id:
            raise forbidden("ending someone else's session")
        if publisher is not None:
            await room.unpublish(publisher.user_id, publisher.stream)
        else:
            await room.leave(session)

    async def answer(self, who: Identity, viewer_id: str, answer_sdp: str) -> None:
        room = self.rooms.get(who.room_id)
        if room is None:
            raise MediaError("invalid_state", "send media:watch first")
        await room.accept_answer(viewer_id, answer_sdp)

    async def leave(self, room_id: str, viewer_id: str) -> bool:
        room = self.rooms.get(room_id)
        return room is not None and await room.leave(viewer_id)

    async def end_room(self, room_id: str) -> None:
        """The lesson ended: close every peer connection of the room."""
        room = self.rooms.pop(room_id, None)
        if room is not None:
            self._retire(room)
            await room.close()

    def _retire(self, room: MediaRoom) -> None:
        packets_in, packets_out, keyframes = self._closed_totals
        for source in room.sources.values():
            packets_in += source.stats.packets_in
            packets_out += source.stats.packets_out
            keyframes += source.stats.keyframe_requests
        self._closed_totals = (packets_in, packets_out, keyframes)

    # figures
    def figures(self, window_s: float | None = None) -> MediaFigures:
        packets_in, packets_out, keyframes = self._closed_totals
        tracks = 0
        for room in self.rooms.values():
            for source in room.sources.values():
                tracks += 1
                packets_in += source.stats.packets_in
                packets_out += source.stats.packets_out
                keyframes += source.stats.keyframe_requests
        if self.workers is not None:
            packets_out += self.workers.packets_out
        delays = self.delays.figures(window_s)
        return MediaFigures(
            rooms=len(self.rooms),
            publishers=sum(len(r.publishers) for r in self.rooms.values()),
            viewers=sum(len(r.viewers) for r in self.rooms.values()),
            tracks=tracks,
            packets_in=packets_in,
            packets_out=packets_out,
            keyframe_requests=keyframes,
            forward_p50_ms=delays.p50_ms,
            forward_p99_ms=delays.p99_ms,
            forward_last_copy_p99_ms=delays.last_copy_p99_ms,
            forward_wait_p99_ms=delays.wait_p99_ms,
            forward_pass_p99_ms=delays.pass_p99_ms,
            workers=self.workers.figures() if self.workers is not None else (),
        )

    # housekeeping
    def start(self) -> None:
        self._task = asyncio.create_task(self._housekeeping(), name="media-housekeeping")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                for room_id, room in list(self.rooms.items()):
                    room.send_sender_reports()
                    if room.idle():
                        del self.rooms[room_id]
                        self._retire(room)
                        await room.close()
            except Exception:
                log.exception("media housekeeping failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rooms = list(self.rooms.values())
        self.rooms.clear()
        await asyncio.gather(*(room.close() for room in rooms), return_exceptions=True)
        if self.workers is not None:
            await self.workers.close()
