"""Operations endpoints: liveness, readiness (database and room bus) and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from live.db import database_ok
from live.metrics import Metrics
from rooms.engine import Engine


class OpsRoutes:
    """``/healthz``, ``/readyz`` and ``/metrics``."""

    def __init__(self, db: AsyncEngine, engine: Engine, metrics: Metrics) -> None:
        self.db = db
        self.engine = engine
        self.metrics = metrics

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        db_ok = await database_ok(self.db)
        bus = self.engine.status.to_dict()
        ready = db_ok and bus["connected"]
        body = {"ready": ready, "engine": self.engine.name, "database": {"ok": db_ok}, "bus": bus}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.metrics.bus_connected.set(1 if self.engine.status.connected else 0)
        self.metrics.bus_outages.set(self.engine.status.outages)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
