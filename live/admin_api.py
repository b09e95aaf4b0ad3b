"""Admin API for hosts: rooms and join tokens, behind HTTP Basic with the API key and secret."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gifting.gifts import GiftService
from gifting.reports import ACCOUNT_COLUMNS, ACCOUNT_KINDS, EXPORT_COLUMNS, Reports
from gifting.schemas import CreditIn, ReverseIn
from live.auth import check_basic_auth, mint_token
from live.config import Settings
from live.http_util import error_response, export_format, read_json, table_response
from live.schemas import RoomCreateIn, RoomUpdateIn, TokenIn
from rooms.errors import RoomError
from rooms.identity import USER_ID_RE, Grants
from rooms.presence import PresenceKeeper
from rooms.qa import QuestionService
from rooms.service import RoomService, RoomStatus

#: Columns of the Q&A export, in order (CSV header and JSON keys).
QA_EXPORT_COLUMNS = (
    "id",
    "created_at",
    "state",
    "text",
    "anonymous",
    "user_id",
    "name",
    "role",
    "votes",
    "paid",
    "answer_text",
    "answer_private",
    "answer_live",
    "answered_by",
    "answered_at",
    "published_at",
    "updated_at",
)

OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")


class AdminApi:
    """Admin API routes; thin handlers over RoomService (docs/protocol.md, "Admin API")."""

    def __init__(
        self,
        settings: Settings,
        rooms: RoomService,
        qa: QuestionService,
        gifts: GiftService,
        reports: Reports,
        presence: PresenceKeeper,
    ) -> None:
        self.settings = settings
        self.rooms = rooms
        self.qa = qa
        self.gifts = gifts
        self.reports = reports
        self.presence = presence

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/openapi.yaml", self.openapi)
        app.router.add_post("/api/rooms", self.create_room)
        app.router.add_get("/api/rooms", self.list_rooms)
        app.router.add_get("/api/rooms/{id}", self.get_room)
        app.router.add_patch("/api/rooms/{id}", self.update_room)
        app.router.add_get("/api/rooms/{id}/questions", self.export_questions)
        app.router.add_post("/api/wallets/{user_id}/credit", self.credit)
        app.router.add_get("/api/wallets/{user_id}", self.get_wallet)
        app.router.add_get("/api/rooms/{id}/money", self.room_money)
        app.router.add_get("/api/wallets/{user_id}/statement", self.statement)
        app.router.add_get("/api/ledger/transfers", self.export_transfers)
        app.router.add_get("/api/ledger/accounts", self.export_accounts)
        app.router.add_post("/api/ledger/operations/{key}/reverse", self.reverse)
        app.router.add_post("/api/rooms/{id}/live", self.go_live)
        app.router.add_post("/api/rooms/{id}/end", self.end_room)
        app.router.add_post("/api/rooms/{id}/tokens", self.mint)

    def _authorize(self, request: web.Request) -> None:
        if not check_basic_auth(request.headers.get("Authorization"), self.settings.api_key, self.settings.api_secret):
            raise RoomError("unauthorized", "admin API needs HTTP Basic auth with LIVE_API_KEY and LIVE_API_SECRET")

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/yaml"})

    async def create_room(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request, RoomCreateIn)
        room = await self.rooms.create(
            body.title,
            room_id=body.id,
            scheduled_at=body.scheduled_at,
            qa_auto_approve=body.qa_auto_approve,
            qa_ask_interval_s=body.qa_ask_interval_s,
            teacher_id=body.teacher_id,
        )
        return web.json_response(room.to_dict(), status=201)

    async def update_room(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request, RoomUpdateIn)
        room = await self.rooms.update_settings(
            request.match_info["id"],
            auto_approve=body.qa_auto_approve,
            ask_interval_s=body.qa_ask_interval_s,
            teacher_id=body.teacher_id,
        )
        return web.json_response(room.to_dict())

    async def credit(self, request: web.Request) -> web.Response:
        """Coins for a user who paid the host directly; once per ``idempotency_key``."""
        self._authorize(request)
        user_id = _user_id(request)
        body = await read_json(request, CreditIn)
        result = await self.gifts.credit(user_id, body.coins, body.idempotency_key)
        wallet = await self.gifts.wallet(user_id)
        return web.json_response({**result, "wallet": wallet}, status=200 if result["replayed"] else 201)

    async def get_wallet(self, request: web.Request) -> web.Response:
        self._authorize(request)
        user_id = _user_id(request)
        return web.json_response({"user_id": user_id, **await self.gifts.wallet(user_id)})

    async def statement(self, request: web.Request) -> web.Response:
        """A wallet's (or, ``?account=earnings``, a teacher's earnings') balance and transfers."""
        self._authorize(request)
        user_id = _user_id(request)
        kind = request.query.get("account", "wallet")
        if kind not in ("wallet", "earnings", "held"):
            return error_response("invalid", "account must be wallet, earnings or held")
        limit = _int_query(request, "limit", 100, 1, 1000) or 100
        before = _int_query(request, "before", None, 1, 2**62)
        return web.json_response(await self.reports.statement(f"{kind}:{user_id}", limit, before))

    async def export_transfers(self, request: web.Request) -> web.Response:
        """Every transfer (of ``?room=``, from ``?since=`` ms), oldest first, as JSON or CSV."""
        self._authorize(request)
        fmt = export_format(request)
        since = _int_query(request, "since", None, 0, 2**62)
        rows = await self.reports.transfers(request.query.get("room"), since)
        return table_response(fmt, "transfers", rows, EXPORT_COLUMNS)

    async def export_accounts(self, request: web.Request) -> web.Response:
        """Every account's balance (``?kind=wallet`` for all wallets), by id, paged with ``?after=``."""
        self._authorize(request)
        fmt = export_format(request)
        kind = request.query.get("kind")
        if kind is not None and kind not in ACCOUNT_KINDS:
            return error_response("invalid", f"kind must be one of {', '.join(ACCOUNT_KINDS)}")
        limit = _int_query(request, "limit", 10_000, 1, 100_000) or 10_000
        rows = await self.reports.accounts(kind, request.query.get("after"), limit)
        return table_response(fmt, "accounts", rows, ACCOUNT_COLUMNS)

    async def reverse(self, request: web.Request) -> web.Response:
        """Reverse every transfer of an operation (a refund of a gift or tip, a chargeback of a top-up),
        with the reason in the audit log; once per operation, and once per ``idempotency_key``."""
        self._authorize(request)
        body = await read_json(request, ReverseIn)
        result = await self.gifts.reverse(request.match_info["key"], body.reason, body.idempotency_key)
        return web.json_response(result, status=200 if result["replayed"] else 201)

    async def room_money(self, request: web.Request) -> web.Response:
        """Coins paid in the room by gifts and tips, and the teacher's and the platform's shares."""
        self._authorize(request)
        room = await self.rooms.require(request.match_info["id"])
        return web.json_response({"room": room.id, **await self.gifts.room_totals(room.id)})

    async def export_questions(self, request: web.Request) -> web.Response:
        """The room's Q&A for reports: every question with its author (also of anonymous ones), votes,
        state and answer; ``?format=csv`` for a spreadsheet."""
        self._authorize(request)
        fmt = export_format(request)
        room = await self.rooms.require(request.match_info["id"])
        rows = [{c: row[c] for c in QA_EXPORT_COLUMNS} for row in await self.qa.export(room.id)]
        return table_response(fmt, "questions", rows, QA_EXPORT_COLUMNS, f"{room.id}-questions.csv", room=room.id)

    async def list_rooms(self, request: web.Request) -> web.Response:
        self._authorize(request)
        raw = request.query.get("status")
        try:
            status = RoomStatus(raw) if raw else None
        except ValueError:
            return error_response("invalid", "status must be scheduled, live or ended")
        return web.json_response({"rooms": [r.to_dict() for r in await self.rooms.list(status)]})

    async def get_room(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room = await self.rooms.require(request.match_info["id"])
        return web.json_response({**room.to_dict(), "head_count": await self.presence.count(room.id)})

    async def go_live(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room = await self.rooms.go_live(request.match_info["id"])
        return web.json_response(room.to_dict())

    async def end_room(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room = await self.rooms.end(request.match_info["id"])
        return web.json_response(room.to_dict())

    async def mint(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request, TokenIn)
        room = await self.rooms.require(request.match_info["id"])
        grants = body.grants if body.grants is not None else Grants.for_role(body.role)
        token = mint_token(
            self.settings.secret,
            room_id=room.id,
            user_id=body.user_id,
            name=body.name,
            role=body.role,
            grants=grants,
            ttl_s=body.ttl_s,
            minor=body.minor,
            member=body.member,
        )
        return web.json_response({"token": token, "url": self.settings.page_link(body.role, token)})


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not USER_ID_RE.match(user_id):
        raise RoomError("invalid", "user ids are 1-64 characters of A-Z, a-z, 0-9 and _.:@-")
    return user_id


def _int_query(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RoomError("invalid", f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise RoomError("invalid", f"{name} must be {low}-{high}")
    return value
