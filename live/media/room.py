"""A room's media on this instance: its publishers, the tracks they send, and the viewers of those tracks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from live.media.errors import MediaError
from live.media.forwarding import Outlet, TrackInfo, TrackSource
from live.media.internals import tap_receiver
from live.media.publisher import PublishedTrack, Publisher
from live.media.viewer import LostHandler, OfferSender, Viewer, ViewerPeer, spread_sender_reports

log = logging.getLogger(__name__)

#: Viewers one user may have in a room at once (tabs, WHEP sessions); a new one ends their oldest.
VIEWERS_PER_USER = 5

#: Creates a viewer for a room: ``make(room, viewer_id, user_id, send_offer, on_lost)``.
ViewerFactory = Callable[["MediaRoom", str, str, OfferSender | None, LostHandler | None], Awaitable[ViewerPeer]]


async def local_viewer(
    room: MediaRoom, viewer_id: str, user_id: str, send_offer: OfferSender | None, on_lost: LostHandler | None
) -> ViewerPeer:
    """A viewer whose peer connection lives in this process (no media workers)."""
    return Viewer(viewer_id, user_id, send_offer)


class MediaRoom:
    """Publishers and viewers of one room. Track changes are pushed to every viewer."""

    def __init__(
        self,
        room_id: str,
        *,
        republish_grace_s: float,
        observe_delay: Callable[[float, float, float], None],
        make_viewer: ViewerFactory = local_viewer,
    ) -> None:
        self.room_id = room_id
        self.sources: dict[str, TrackSource] = {}
        self.publishers: dict[tuple[str, str], Publisher] = {}
        self.viewers: dict[str, ViewerPeer] = {}
        self.outlets: list[Outlet] = []  # media workers holding viewers of this room; shared by its sources
        self._make_viewer = make_viewer
        self.stage: set[str] = set()  # students invited to publish
        self._grace_s = republish_grace_s
        self._observe_delay = observe_delay
        self._orphan_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self.closed = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # publishing
    async def publish(self, user_id: str, stream: str, offer_sdp: str, *, owner: str | None = None) -> str:
        """Answer a publisher's offer. Its tracks replace what the same user's stream sent before;
        viewers of those tracks continue on the new ones without renegotiating."""
        if self.closed:
            raise MediaError("not_live", "this room's media has ended")
        publisher = Publisher(user_id, stream, self._publisher_closed)
        publisher.owner = owner
        try:
            answer = await publisher.answer(offer_sdp)
        except BaseException:
            await publisher.close()
            raise
        async with self._lock:
            key = (user_id, stream)
            previous = self.publishers.get(key)
            self.publishers[key] = publisher
            timer = self._orphan_timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            labels = {track.label for track in publisher.tracks}
            for track in publisher.tracks:
                self._bind_track(user_id, publisher, track)
            for source_id, source in list(self.sources.items()):
                if source.info.user_id == user_id and self._stream_of(source.info.label) == stream:
                    if source.info.label not in labels:
                        self._drop_source(source_id)
        if previous is not None:
            await previous.close()
        await self._push_tracks()
        return answer

    @staticmethod
    def _stream_of(label: str) -> str:
        return "screen" if label == "screen" else "main"

    def _bind_track(self, user_id: str, publisher: Publisher, track: PublishedTrack) -> None:
        source_id = f"{user_id}:{track.label}"
        source = self.sources.get(source_id)
        codec = track.codec
        if source is not None and (source.mime_type, source.codec.parameters) != (codec.mimeType, codec.parameters):
            self._drop_source(source_id)
            source = None
        if source is None:
            info = TrackInfo(source_id=source_id, user_id=user_id, label=track.label, kind=track.kind)
            source = TrackSource(info, codec)
            source.outlets = self.outlets
            source.observe_delays(self._observe_delay)
            self.sources[source_id] = source
        arrival = publisher.arrival
        source.connect_upstream(publisher.keyframe_requester(track), lambda: arrival.current)
        tap_receiver(track.transceiver.receiver, source.on_packet)

    def _drop_source(self, source_id: str) -> None:
        source = self.sources.pop(source_id, None)
        if source is not None:
            source.close()

    async def unpublish(self, user_id: str, stream: str | None = None) -> bool:
        """Stop a user's stream (or all of their streams) now; returns whether anything was published."""
        keys = [key for key in self.publishers if key[0] == user_id and (stream is None or key[1] == stream)]
        async with self._lock:
            publishers = [self.publishers.pop(key) for key in keys]
            for key in keys:
                self._forget_stream(key)
        for publisher in publishers:
            await publisher.close()
        if keys:
            await self._push_tracks()
        return bool(keys)

    async def disconnect_publisher(self, user_id: str, stream: str, owner: str) -> None:
        publisher = self.publishers.get((user_id, stream))
        if publisher is not None and publisher.owner == owner:
            await publisher.close()  # -> _publisher_closed: the grace period starts

    def _forget_stream(self, key: tuple[str, str]) -> None:
        timer = self._orphan_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        user_id, stream = key
        for source_id, source in list(self.sources.items()):
            if source.info.user_id == user_id and self._stream_of(source.info.label) == stream:
                self._drop_source(source_id)

    def _publisher_closed(self, publisher: Publisher) -> None:
        """A publisher's connection failed or closed: keep its tracks for the grace period, so that
        viewers continue when it republishes (a reload, a network change), then drop them."""
        key = (publisher.user_id, publisher.stream)
        if self.publishers.get(key) is not publisher or self.closed:
            return
        del self.publishers[key]
        loop = asyncio.get_running_loop()

        def expire() -> None:
            self._orphan_timers.pop(key, None)
            if key not in self.publishers:
                self._forget_stream(key)
                self._spawn(self._push_tracks())

        self._orphan_timers[key] = loop.call_later(self._grace_s, expire)

    # viewing
    async def watch(
        self, viewer_id: str, user_id: str, send_offer: OfferSender, on_lost: LostHandler | None = None
    ) -> ViewerPeer:
        """Start a viewer whose offers go out through ``send_offer``; replaces that viewer's earlier one.
        ``on_lost`` tells its client to watch again if its connection is lost (a media worker died)."""
        if self.closed:
            raise MediaError("not_live", "this room's media has ended")
        await self.leave(viewer_id)
        await self._make_room_for(user_id)
        viewer = await self._make_viewer(self, viewer_id, user_id, send_offer, on_lost)
        if self.closed:
            await viewer.close()
            raise MediaError("not_live", "this room's media has ended")
        viewer.on_failed = lambda v: self._spawn(self._viewer_failed(v))
        self.viewers[viewer_id] = viewer
        await viewer.update(self.sources)
        return viewer

    async def answer_viewer(self, viewer_id: str, offer_sdp: str, user_id: str) -> tuple[ViewerPeer, str]:
        """WHEP: answer a viewer's own offer with the room's current tracks."""
        if self.closed:
            raise MediaError("not_live", "this room's media has ended")
        if not self.sources:
            raise MediaError("not_live", "nobody is publishing in this room")
        await self._make_room_for(user_id)
        viewer = await self._make_viewer(self, viewer_id, user_id, None, None)
        if self.closed:
            await viewer.close()
            raise MediaError("not_live", "this room's media has ended")
        viewer.on_failed = lambda v: self._spawn(self._viewer_failed(v))
        self.viewers[viewer_id] = viewer
        try:
            answer = await viewer.answer_offer(offer_sdp, self.sources)
        except BaseException:
            await self.leave(viewer_id)
            raise
        return viewer, answer

    async def accept_answer(self, viewer_id: str, answer_sdp: str) -> None:
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            raise MediaError("invalid_state", "send media:watch first")
        await viewer.accept_answer(answer_sdp)

    async def _make_room_for(self, user_id: str) -> None:
        """A user has at most ``VIEWERS_PER_USER`` viewers (tabs, WHEP sessions): the oldest go first, so a
        client that reconnects without ending its last session is never refused, and one that opens
        sessions in a loop holds no more than that."""
        mine = [v.viewer_id for v in self.viewers.values() if v.user_id == user_id]
        for viewer_id in mine[: max(0, len(mine) - VIEWERS_PER_USER + 1)]:
            await self.leave(viewer_id)

    async def leave(self, viewer_id: str) -> bool:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        await viewer.close()
        return True

    async def _viewer_failed(self, viewer: ViewerPeer) -> None:
        if self.viewers.get(viewer.viewer_id) is viewer:
            await self.leave(viewer.viewer_id)

    async def _push_tracks(self) -> None:
        viewers = list(self.viewers.values())
        results = await asyncio.gather(*(v.update(self.sources) for v in viewers), return_exceptions=True)
        for viewer, result in zip(viewers, results, strict=True):
            if isinstance(result, Exception):
                log.warning("media: could not update viewer %s: %r", viewer.viewer_id, result)

    def send_sender_reports(self) -> None:
        """Every viewer's RTCP sender reports, spread over the next second (call once a second)."""
        spread_sender_reports(list(self.viewers), self.viewers.get)

    def idle(self) -> bool:
        """Nothing published, nobody watching, nobody on stage, no publisher expected back."""
        return not (self.publishers or self.viewers or self.sources or self._orphan_timers or self.stage)

    def tracks(self) -> list[dict[str, str]]:
        return [
            {"user_id": s.info.user_id, "label": s.info.label, "kind": s.info.kind, "codec": s.mime_type}
            for s in self.sources.values()
        ]

    async def close(self) -> None:
        """End the room's media: every peer connection is closed."""
        self.closed = True
        for timer in self._orphan_timers.values():
            timer.cancel()
        self._orphan_timers.clear()
        viewers = list(self.viewers.values())
        publishers = list(self.publishers.values())
        self.viewers.clear()
        self.publishers.clear()
        await asyncio.gather(*(v.close() for v in viewers), *(p.close() for p in publishers))
        for source_id in list(self.sources):
            self._drop_source(source_id)
        for task in list(self._tasks):
            task.cancel()
