"""WHIP (RFC 9725) ingest and WHEP playback: an encoder or player POSTs an SDP offer with the join token
as bearer and gets ``201 Created``, the SDP answer and the session's ``Location``; ``DELETE`` on that
location ends the session. ICE servers are advertised with ``Link`` headers. No trickle ICE: offers
must carry their candidates (``PATCH`` answers 405), as most WHIP encoders send them.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict

from aiohttp import web

from live.auth import TokenError, check_basic_auth, verify_token
from live.config import Settings
from live.http_util import RequestBuckets
from live.media.errors import MediaError
from live.media.router import MediaRouter
from live.media.schemas import MAX_SDP_CHARS
from live.media.service import MediaService
from rooms.errors import RoomError
from rooms.identity import Identity
from rooms.service import RoomService

SDP = "application/sdp"
REQUESTS_PER_S = 1.0
REQUEST_BURST = 10


class MediaHttp:
    """``/whip/{room}`` and ``/whep/{room}``, and their session resources."""

    def __init__(self, settings: Settings, media: MediaService, router: MediaRouter, rooms: RoomService) -> None:
        self.settings = settings
        self.media = media
        self.router = router
        self.rooms = rooms
        #: WHIP and WHEP requests per user (a room behind one school's address is many users).
        self.requests = RequestBuckets(REQUESTS_PER_S, REQUEST_BURST)

    def add_routes(self, app: web.Application) -> None:
        for kind in ("whip", "whep"):
            app.router.add_route("OPTIONS", f"/{kind}/{{room}}", self.options)
            app.router.add_route("PATCH", f"/{kind}/{{room}}/{{session}}", self.no_trickle)
            app.router.add_route("DELETE", f"/{kind}/{{room}}/{{session}}", self.delete)
        app.router.add_post("/whip/{room}", self.whip)
        app.router.add_get("/api/media/stats", self.stats)
        app.router.add_post("/whep/{room}", self.whep)

    def _links(self) -> dict[str, str]:
        if not self.settings.ice_servers:
            return {}
        return {"Link": ", ".join(f'<{url}>; rel="ice-server"' for url in self.settings.ice_servers)}

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": SDP, **self._links()})

    async def no_trickle(self, request: web.Request) -> web.Response:
        return web.Response(status=405, headers={"Allow": "DELETE"}, text="trickle ICE is not supported")

    async def _caller(self, request: web.Request) -> Identity:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise RoomError("unauthorized", "send the join token as 'Authorization: Bearer <token>'")
        try:
            who = verify_token(self.settings.secret, token.strip())
        except TokenError as exc:
            raise RoomError("unauthorized", str(exc)) from None
        if who.room_id != request.match_info["room"]:
            raise RoomError("forbidden", "this token is for another room")
        self.requests.take(f"{who.room_id}/{who.user_id}")
        return who

    async def _offer(self, request: web.Request) -> str:
        if request.content_type != SDP:
            raise RoomError("unsupported_media_type", f"send the offer as {SDP}")
        if (request.content_length or 0) > MAX_SDP_CHARS:
            raise RoomError("too_large", "SDP offer too large")
        raw = await request.content.read(MAX_SDP_CHARS + 1)
        if len(raw) > MAX_SDP_CHARS:
            raise RoomError("too_large", "SDP offer too large")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MediaError("bad_sdp", "the offer is not UTF-8 text") from None

    def _created(self, request: web.Request, kind: str, session: str, answer: str) -> web.Response:
        location = f"/{kind}/{request.match_info['room']}/{session}"
        return web.Response(
            status=201,
            body=answer.encode(),
            content_type=SDP,
            headers={"Location": location, "ETag": f'"{session}"', **self._links()},
        )

    async def whip(self, request: web.Request) -> web.Response:
        """Publish the main stream (camera and microphone) of the token's user."""
        who = await self._caller(request)
        if not who.grants.publish:
            raise RoomError("forbidden", "your token does not allow publishing media")
        offer = await self._offer(request)
        await self.rooms.require_admitted(who)  # the room exists, has not ended, and has not removed the user
        session = "whip-" + secrets.token_urlsafe(12)
        answer = await self.router.publish(who, "main", offer, owner_key=session)
        return self._created(request, "whip", session, answer)

    async def whep(self, request: web.Request) -> web.Response:
        """Watch the room's current tracks."""
        who = await self._caller(request)
        offer = await self._offer(request)
        await self.rooms.require_admitted(who)
        session = "whep-" + secrets.token_urlsafe(12)
        answer = await self.router.answer_viewer(who, session, offer)
        return self._created(request, "whep", session, answer)

    async def stats(self, request: web.Request) -> web.Response:
        """Admin: this instance's media figures; ``?window_s=`` limits the delay percentiles to recent packets."""
        if not check_basic_auth(request.headers.get("Authorization"), self.settings.api_key, self.settings.api_secret):
            raise RoomError("unauthorized", "admin API needs HTTP Basic auth with LIVE_API_KEY and LIVE_API_SECRET")
        raw = request.query.get("window_s")
        try:
            window = None if raw is None else float(raw)
        except ValueError:
            window = -1.0
        if window is not None and not 0 < window <= 3600:
            raise RoomError("invalid", "window_s must be a number of seconds between 0 and 3600")
        return web.json_response(asdict(self.media.figures(window)))

    async def delete(self, request: web.Request) -> web.Response:
        who = await self._caller(request)
        await self.router.end_session(who, request.match_info["session"])
        return web.Response(status=200)
