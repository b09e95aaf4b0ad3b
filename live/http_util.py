"""Shared HTTP plumbing: one JSON error shape for every route, strict JSON bodies, security headers."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from rooms.engine import EngineUnavailable
from rooms.errors import RoomError, rate_limited

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)

STATUS_OF_CODE = {
    "invalid": 400,
    "bad_sdp": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "banned": 403,
    "not_found": 404,
    "room_not_found": 404,
    "conflict": 409,
    "room_ended": 409,
    "not_live": 409,
    "invalid_state": 409,
    "idempotency_mismatch": 409,
    "not_reversible": 409,
    "insufficient_funds": 409,
    "already_reversed": 409,
    "refund_exceeds_paid": 409,
    "order_expired": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "unavailable": 503,
}

# The pages load only their own scripts and styles; user text can never become markup or script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


def error_response(code: str, message: str, **extra: Any) -> web.Response:
    """A JSON error body ``{error: {code, message}}`` with the status that fits the code."""
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=STATUS_OF_CODE.get(code, 400))


@web.middleware
async def errors_and_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Middleware: domain errors become JSON errors; security headers on every response."""
    try:
        response = await handler(request)
    except RoomError as exc:
        response = error_response(exc.code, exc.message, **exc.extra)
    except web.HTTPRequestEntityTooLarge:
        response = error_response("too_large", "request body too large")
    except (EngineUnavailable, SQLAlchemyError, OSError):
        log.exception("%s %s failed", request.method, request.path)
        response = error_response("unavailable", "briefly unavailable; nothing was changed, try again")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


async def read_json(request: web.Request, model: type[Model]) -> Model:
    """Parse and validate a JSON body; bad input is a ``RoomError('invalid')``, nothing changes."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RoomError("invalid", f"{where}: {first['msg']}") from None


def export_format(request: web.Request) -> str:
    """``?format=`` of an export: ``json`` (the default) or ``csv``; anything else is refused."""
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise RoomError("invalid", "format must be json or csv")
    return fmt


def table_response(
    fmt: str, name: str, rows: Iterable[dict[str, Any]], columns: Sequence[str], filename: str = "", **extra: Any
) -> web.Response:
    """An export: ``{**extra, name: rows}`` as JSON, or ``columns`` of ``rows`` as CSV for a spreadsheet
    (formulas neutralised), downloaded as ``filename`` (default ``NAME.csv``)."""
    if fmt == "json":
        return web.json_response({**extra, name: list(rows)})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(csv_safe(row) for row in rows)
    disposition = f'attachment; filename="{filename or name + ".csv"}"'
    return web.Response(text=out.getvalue(), content_type="text/csv", headers={"Content-Disposition": disposition})


def csv_safe(row: dict[str, Any]) -> dict[str, Any]:
    """Neutralise spreadsheet formulas in text that users wrote (CSV injection, OWASP)."""
    risky = ("=", "+", "-", "@", "\t", "\r")
    return {k: "'" + v if isinstance(v, str) and v[:1] in risky else v for k, v in row.items()}


class RequestBuckets:
    """Token buckets by key (a user, say): ``take(key)`` refuses with ``rate_limited`` once a key has used its
    burst faster than ``rate_per_s`` refills it. Keys idle long enough to be full again are forgotten."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> None:
        now = time.monotonic()
        tokens, when = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            raise rate_limited(int((1.0 - tokens) / self.rate * 1000) + 1)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:
            full_after = self.burst / self.rate
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
