"""Media signalling over the room's Socket.IO connection: thin handlers over ``MediaService``.

A publisher sends ``media:publish`` with its SDP offer and gets the answer in the ack. A viewer sends
``media:watch``; the server then sends ``media:offer`` whenever the room's tracks change, and the viewer
replies with ``media:answer``. The protocol is in docs/protocol.md ("Media").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from live.media.router import MediaRouter
from live.media.schemas import MAX_SDP_CHARS, MediaAnswerIn, MediaPublishIn, MediaUnpublishIn, StageIn
from rooms.schemas import EmptyIn

if TYPE_CHECKING:
    from live.gateway import Session

#: Events whose payload is an SDP, with the byte limit that replaces LIVE_MAX_EVENT_BYTES for them.
LARGE_EVENTS = {"media:publish": MAX_SDP_CHARS + 256, "media:answer": MAX_SDP_CHARS + 256}


class MediaSignalling:
    """The media events of one app's gateway."""

    def __init__(self, router: MediaRouter, ice_servers: tuple[str, ...]) -> None:
        self.router = router
        self._ice_servers = [{"urls": url} for url in ice_servers]

    def events(self) -> dict[str, tuple[type[Any], Callable[[Session, Any], Awaitable[dict[str, Any]]], bool]]:
        return {
            "media:publish": (MediaPublishIn, self.publish, True),
            "media:unpublish": (MediaUnpublishIn, self.unpublish, True),
            "media:watch": (EmptyIn, self.watch, True),
            "media:answer": (MediaAnswerIn, self.answer, True),
            "media:leave": (EmptyIn, self.leave, True),
            "stage:invite": (StageIn, self.invite, True),
            "stage:remove": (StageIn, self.remove_from_stage, True),
        }

    async def publish(self, session: Session, msg: MediaPublishIn) -> dict[str, Any]:
        answer = await self.router.publish(session.identity, msg.stream, msg.sdp, owner_key=session.sid)
        return {"sdp": answer, "ice_servers": self._ice_servers}

    async def unpublish(self, session: Session, msg: MediaUnpublishIn) -> dict[str, Any]:
        return {"stopped": await self.router.unpublish(session.identity, msg.stream, owner_key=session.sid)}

    async def watch(self, session: Session, _: EmptyIn) -> dict[str, Any]:
        await self.router.watch(session.identity, session.sid)
        return {"ice_servers": self._ice_servers}

    async def answer(self, session: Session, msg: MediaAnswerIn) -> dict[str, Any]:
        await self.router.answer(session.identity, session.sid, msg.sdp)
        return {}

    async def leave(self, session: Session, _: EmptyIn) -> dict[str, Any]:
        return {"left": await self.router.leave(session.identity, session.sid)}

    async def invite(self, session: Session, msg: StageIn) -> dict[str, Any]:
        return {"stage": await self.router.invite(session.identity, msg.user_id)}

    async def remove_from_stage(self, session: Session, msg: StageIn) -> dict[str, Any]:
        return {"stage": await self.router.remove_from_stage(session.identity, msg.user_id)}

    async def disconnected(self, session: Session) -> None:
        """The socket is gone: stop its viewer now; its published streams get the republish grace."""
        await self.router.leave(session.identity, session.sid)
        await self.router.disconnected(session.identity, session.sid)
