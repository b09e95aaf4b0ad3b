"""The app factory: wires config, database, engine, room services, Socket.IO and HTTP routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting.catalogue import Catalogue
from gifting.coupons import CouponService
from gifting.gifts import GiftService
from gifting.host_webhooks import HostWebhooks
from gifting.ledger import Ledger
from gifting.orders import OrderService
from gifting.payments import CheckoutService, PaymentProvider, SandboxProvider, StripeProvider
from gifting.plans import Caps
from gifting.reports import Reports
from gifting.sales import SalesService
from gifting.sales_reports import SalesReports
from gifting.seat_gate import MemorySeatGate, RedisSeatGate, SeatGate
from live.admin_api import AdminApi
from live.config import Settings
from live.db import create_engine, migrate
from live.gateway import SocketGateway
from live.http_util import errors_and_headers
from live.media.bus import LocalMediaBus, MediaBus, RedisMediaBus
from live.media.router import MediaRouter
from live.media.service import MediaService
from live.media_http import MediaHttp
from live.metrics import Metrics
from live.ops import OpsRoutes
from live.pages import Pages
from live.payments_http import PaymentRoutes
from live.sales_events import SalesServices
from live.sales_http import SalesHttp
from live.sio_server import ClassroomSocketServer
from rooms.chat import ChatService, ChatTranscript
from rooms.engine import Engine
from rooms.engine_memory import MemoryEngine
from rooms.engine_redis import RedisEngine
from rooms.presence import PresenceKeeper
from rooms.qa import QuestionService, qa_store_for
from rooms.qa_recorder import QaRecorder
from rooms.service import RoomService

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MAX_BODY_BYTES = 64 * 1024
COUNT_EVERY_S = 1.0
POSITION_CHECK_EVERY_S = 5.0
PRESENCE_REFRESH_EVERY_S = 10.0
OUTBOX_GRACE_MS = 5000
REFUND_RETRY_EVERY_S = 30.0


@dataclass
class Services:
    """What a running app holds; tests reach in through ``app[SERVICES]``."""

    settings: Settings
    db: AsyncEngine
    engine: Engine
    rooms: RoomService
    chat: ChatService
    transcript: ChatTranscript
    qa: QuestionService
    qa_recorder: QaRecorder
    ledger: Ledger
    gifts: GiftService
    checkouts: CheckoutService
    presence: PresenceKeeper
    gateway: SocketGateway
    metrics: Metrics
    media: MediaService
    sales: SalesServices
    webhooks: HostWebhooks
    gate: SeatGate


SERVICES = web.AppKey("services", Services)


def build_engine(settings: Settings) -> Engine:
    """The memory engine unless ``LIVE_REDIS_URL`` is set."""
    if settings.redis_url:
        return RedisEngine(settings.redis_url, history_size=settings.history_size, history_ttl_s=settings.history_ttl_s)
    return MemoryEngine(history_size=settings.history_size, history_ttl_s=settings.history_ttl_s)


def media_bus(settings: Settings) -> MediaBus:
    """Where rooms' media live: this process (memory engine) or the instance holding a Redis lease."""
    if settings.redis_url:
        return RedisMediaBus(settings.redis_url, settings.instance_id)
    return LocalMediaBus(settings.instance_id)


def seat_gate(settings: Settings) -> SeatGate:
    """Flash-sale seats: in this process (memory engine) or in Redis, shared by every instance."""
    return RedisSeatGate(settings.redis_url) if settings.redis_url else MemorySeatGate()


def payment_provider(settings: Settings) -> PaymentProvider:
    """The sandbox (local checkout page) unless ``LIVE_PAYMENT_PROVIDER=stripe``."""
    if settings.payment_provider == "stripe":
        return StripeProvider(settings.stripe_api_key, settings.stripe_webhook_secret)
    log.warning("payments: sandbox provider: coins are free (set LIVE_PAYMENT_PROVIDER=stripe in production)")
    return SandboxProvider(settings.sandbox_secret)


def origin_checker(settings: Settings) -> object:
    """Engine.IO calls this for requests that carry an Origin header (browsers always do)."""
    allowed = set(settings.allowed_origins)
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        allowed.add(f"{parts.scheme}://{parts.netloc}")

    def is_allowed(origin: str, environ: dict[str, str]) -> bool:
        if origin in allowed:
            return True
        scheme = environ.get("wsgi.url_scheme", "http")
        return origin == f"{scheme}://{environ.get('HTTP_HOST', '')}"

    return is_allowed


def create_app(settings: Settings) -> web.Application:
    """Build the aiohttp app: every service and route; connections open when it starts."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_and_headers])
    metrics = Metrics()
    sio = ClassroomSocketServer(
        cors_allowed_origins=origin_checker(settings),
        max_http_buffer_size=MAX_BODY_BYTES,
        ping_interval=25,  # Socket.IO's defaults; pings are most of an idle connection's cost
        ping_timeout=20,
        # Each connection's events are handled in order, in its reader task: no task per event, and a
        # client's vote-then-unvote can never be applied the other way round.
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)

    db = create_engine(settings.database_url)
    engine = build_engine(settings)
    rooms = RoomService(db, engine)
    transcript = ChatTranscript(db)
    chat = ChatService(engine, transcript, settings.chat, history_limit=settings.history_size)
    qa_recorder = QaRecorder(db)
    qa = QuestionService(qa_store_for(engine), engine, qa_recorder, settings.qa)
    presence = PresenceKeeper(engine, settings.instance_id)

    async def publish(room_id: str, type: str, data: dict[str, Any]) -> None:
        await engine.publish(room_id, type, data)

    caps = Caps(settings.gifts.per_transfer_cap, settings.gifts.daily_cap)
    ledger = Ledger(db, caps, publisher=publish)
    gifts = GiftService(ledger, settings.gifts, engine)
    qa.payments = gifts
    rooms.ending_hooks.append(gifts.release_room)  # paid questions left unanswered: coins go back
    checkouts = CheckoutService(db, ledger, payment_provider(settings), settings.gifts.packs)
    checkouts.return_url = f"{settings.base_url()}/room"
    catalogue = Catalogue(db, settings.sales)
    gate = seat_gate(settings)
    sales_service = SalesService(db, catalogue, gate, publish)
    coupons = CouponService(db, catalogue)
    webhooks = HostWebhooks(db, settings.sales.host_webhook_url, settings.sales.host_webhook_secret)

    async def notify(room_id: str, event: str, data: dict[str, Any]) -> None:
        await engine.broadcast(room_id, event, data)

    orders = OrderService(
        db, ledger, catalogue, coupons, sales_service, gate, checkouts, webhooks, settings.sales, notify
    )
    checkouts.course_orders = orders
    sales = SalesServices(catalogue, sales_service, coupons, orders)
    media = MediaService(
        republish_grace_s=settings.media_republish_grace_s,
        announce=publish,
        workers=settings.media_workers,
        fanout_threads=settings.media_fanout_threads,
        name=settings.instance_id,
        log_level=settings.log_level,
    )
    metrics.watch_media(media.figures)

    async def emit_to(event: str, data: dict[str, Any], sid: str) -> None:
        await sio.emit(event, data, to=sid)

    router = MediaRouter(media, media_bus(settings), emit_to)
    gateway = SocketGateway(settings, sio, engine, rooms, chat, qa, gifts, checkouts, presence, metrics, router, sales)
    services = Services(
        settings,
        db,
        engine,
        rooms,
        chat,
        transcript,
        qa,
        qa_recorder,
        ledger,
        gifts,
        checkouts,
        presence,
        gateway,
        metrics,
        media,
        sales,
        webhooks,
        gate,
    )
    app[SERVICES] = services
    AdminApi(settings, rooms, qa, gifts, Reports(db), presence).add_routes(app)
    PaymentRoutes(checkouts).add_routes(app)
    SalesHttp(settings, sales, SalesReports(db), webhooks, rooms).add_routes(app)
    MediaHttp(settings, media, router, rooms).add_routes(app)
    OpsRoutes(db, engine, metrics).add_routes(app)
    Pages(STATIC_DIR).add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await migrate(settings.database_url)
        await engine.start(gateway.follower)
        transcript.start()
        qa_recorder.start()
        media.start()
        await media.start_workers()
        await router.start()
        webhooks.start()
        housekeeping = asyncio.create_task(_housekeeping(services), name="housekeeping")
        refunds = asyncio.create_task(_retry_refunds(services), name="refund-retries")
        log.info("live-classroom ready: engine=%s instance=%s", engine.name, settings.instance_id)
        try:
            yield
        finally:
            for task in (housekeeping, refunds):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await router.close()
            await webhooks.close()
            await sales_service.close()
            await media.close()
            await qa.close()
            await ledger.close()
            await transcript.close()
            await qa_recorder.close()
            await engine.close()
            await gate.close()
            await db.dispose()

    async def close_sockets(app: web.Application) -> None:
        # aiohttp waits for open handlers before cleanup; websockets stay open until closed (aiohttp docs).
        for sid in list(gateway.sessions):
            with contextlib.suppress(Exception):
                await sio.disconnect(sid)

    app.on_shutdown.append(close_sockets)
    app.cleanup_ctx.append(lifecycle)
    return app


async def _retry_refunds(s: Services) -> None:
    """Refunds the payment provider failed to pay back, tried again every ``REFUND_RETRY_EVERY_S``: a task of
    its own, so a provider that hangs holds up nothing else."""
    while True:
        await asyncio.sleep(REFUND_RETRY_EVERY_S)
        try:
            await s.sales.orders.retry_refunds()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refund retries failed")


async def _housekeeping(s: Services) -> None:
    """Head counts every second, position checks every few seconds, presence refresh every ten."""
    loop = asyncio.get_running_loop()
    next_check = next_refresh = loop.time()
    outages_seen = 0
    while True:
        await asyncio.sleep(COUNT_EVERY_S)
        try:
            now = loop.time()
            status = s.engine.status
            if now >= next_refresh or (status.connected and status.outages != outages_seen):
                # After an outage Redis may have lost presence: register our connections again at once.
                outages_seen = status.outages
                next_refresh = now + PRESENCE_REFRESH_EVERY_S
                await s.presence.refresh()
            await s.presence.publish_counts(s.gateway.emit_count)
            if now >= next_check:
                next_check = now + POSITION_CHECK_EVERY_S
                await s.gateway.follower.check_all()
                # Money events whose publication a crash or an outage interrupted.
                await s.ledger.publish_outbox(older_than_ms=OUTBOX_GRACE_MS)
                await s.gifts.expire_holds()
            # Unpaid course orders give their seats back on time (checked every second).
            await s.sales.orders.expire_due()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("housekeeping round failed")
