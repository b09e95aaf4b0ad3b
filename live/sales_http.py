"""Admin API for course sales: the catalogue, what each room may sell, coupons, orders and refunds,
entitlements and course progress, sales reports, and the host webhooks' delivery state."""

from __future__ import annotations

from aiohttp import web

from gifting.host_webhooks import HostWebhooks
from gifting.orders import PUBLIC
from gifting.sales_reports import SalesReports
from gifting.schemas import AdminRefundIn, CouponCreateIn, CourseIn, CourseUpdateIn, ProgressIn
from live.admin_api import _int_query, _user_id
from live.auth import check_basic_auth
from live.config import Settings
from live.http_util import error_response, export_format, read_json, table_response
from live.sales_events import SalesServices
from rooms.errors import RoomError
from rooms.service import RoomService


class SalesHttp:
    """Thin handlers over the sales services, behind the admin API's HTTP Basic auth."""

    def __init__(
        self,
        settings: Settings,
        sales: SalesServices,
        reports: SalesReports,
        webhooks: HostWebhooks,
        rooms: RoomService,
    ) -> None:
        self.settings = settings
        self.s = sales
        self.reports = reports
        self.webhooks = webhooks
        self.rooms = rooms

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/courses", self.create_course)
        r.add_get("/api/courses", self.list_courses)
        r.add_get("/api/courses/{id}", self.get_course)
        r.add_patch("/api/courses/{id}", self.update_course)
        r.add_get("/api/rooms/{id}/courses", self.room_courses)
        r.add_put("/api/rooms/{id}/courses/{course_id}", self.allow)
        r.add_delete("/api/rooms/{id}/courses/{course_id}", self.disallow)
        r.add_post("/api/rooms/{id}/coupons", self.create_coupon)
        r.add_get("/api/rooms/{id}/sales", self.room_report)
        r.add_get("/api/orders", self.list_orders)
        r.add_get("/api/orders/{id}", self.get_order)
        r.add_post("/api/orders/{id}/refund", self.refund)
        r.add_get("/api/entitlements", self.entitlements)
        r.add_post("/api/entitlements/{user_id}/{course_id}/progress", self.progress)
        r.add_get("/api/webhooks", self.list_webhooks)

    def _authorize(self, request: web.Request) -> None:
        if not check_basic_auth(request.headers.get("Authorization"), self.settings.api_key, self.settings.api_secret):
            raise RoomError("unauthorized", "admin API needs HTTP Basic auth with LIVE_API_KEY and LIVE_API_SECRET")

    async def create_course(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request, CourseIn)
        course = await self.s.catalogue.create(body.model_dump())
        return web.json_response(course.to_dict(), status=201)

    async def list_courses(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"courses": [c.to_dict() for c in await self.s.catalogue.list()]})

    async def get_course(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response((await self.s.catalogue.require(request.match_info["id"])).to_dict())

    async def update_course(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request, CourseUpdateIn)
        changes = body.model_dump(exclude_unset=True)
        return web.json_response((await self.s.catalogue.update(request.match_info["id"], changes)).to_dict())

    async def room_courses(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room = await self.rooms.require(request.match_info["id"])
        return web.json_response({"courses": [c.to_dict() for c in await self.s.catalogue.list(room.id)]})

    async def allow(self, request: web.Request) -> web.Response:
        """Let the room sell the course."""
        self._authorize(request)
        room = await self.rooms.require(request.match_info["id"])
        await self.s.catalogue.allow(room.id, request.match_info["course_id"])
        return web.json_response({"room": room.id, "course": request.match_info["course_id"]})

    async def disallow(self, request: web.Request) -> web.Response:
        self._authorize(request)
        room = await self.rooms.require(request.match_info["id"])
        if not await self.s.catalogue.disallow(room.id, request.match_info["course_id"]):
            return error_response("not_found", "the room does not sell that course")
        return web.Response(status=204)

    async def create_coupon(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_json(request, CouponCreateIn)
        room = await self.rooms.require(request.match_info["id"])
        coupon = await self.s.coupons.create(None, room, **body.model_dump())
        await self.s.sales.announce(room.id)
        return web.json_response(coupon, status=201)

    async def room_report(self, request: web.Request) -> web.Response:
        """Card impressions, orders, conversion and revenue per course sold in the room."""
        self._authorize(request)
        room = await self.rooms.require(request.match_info["id"])
        return web.json_response(await self.reports.room(room.id))

    async def list_orders(self, request: web.Request) -> web.Response:
        """Orders, newest first, of ``?room=`` and/or ``?buyer=``; ``?format=csv`` for a spreadsheet."""
        self._authorize(request)
        fmt = export_format(request)
        limit = _int_query(request, "limit", 10_000, 1, 100_000) or 10_000
        rows = await self.s.orders.list(
            room_id=request.query.get("room"), buyer=request.query.get("buyer"), limit=limit
        )
        return table_response(fmt, "orders", rows, PUBLIC)

    async def get_order(self, request: web.Request) -> web.Response:
        self._authorize(request)
        order = await self.s.orders.get(request.match_info["id"])
        if order is None:
            return error_response("not_found", "no such order")
        return web.json_response({k: order[k] for k in PUBLIC})

    async def refund(self, request: web.Request) -> web.Response:
        """Refund an order in full (or ``amount_minor`` of it), the way it was paid; once per key."""
        self._authorize(request)
        body = await read_json(request, AdminRefundIn)
        result = await self.s.orders.refund(
            None, request.match_info["id"], body.amount_minor, body.reason, body.idempotency_key
        )
        return web.json_response(result, status=200 if result["replayed"] else 201)

    async def entitlements(self, request: web.Request) -> web.Response:
        """Who may follow which course (``?user=``, ``?course=``)."""
        self._authorize(request)
        rows = await self.reports.entitlements(request.query.get("user"), request.query.get("course"))
        return web.json_response({"entitlements": rows})

    async def progress(self, request: web.Request) -> web.Response:
        """How much of the course the user consumed, as the host measures it (refund policies use it)."""
        self._authorize(request)
        user_id = _user_id(request)
        body = await read_json(request, ProgressIn)
        row = await self.reports.progress(user_id, request.match_info["course_id"], body.consumed_pct)
        return web.json_response(row)

    async def list_webhooks(self, request: web.Request) -> web.Response:
        """Webhooks to the host, newest first (``?undelivered=1``: only those not delivered yet)."""
        self._authorize(request)
        rows = await self.webhooks.list(request.query.get("undelivered") in ("1", "true"))
        return web.json_response({"webhooks": rows})
