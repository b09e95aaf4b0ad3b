"""Webhooks to the host (order.paid, entitlement.granted, order.refunded) reach a host that was down for
a while: first not listening at all, then answering 503, then up. Every request that was ever sent, failed
or not, carries a signature that verifies over its exact body, and each event arrives under one id."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.sales_support import buy, course_in_room, fund
from tests.support import Member, free_port, joined, token, wait_until

ROOM = "webhook-room"
SECRET = "host-webhook-secret-for-tests-0123456789"


def verifies(header: str, body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    expected = hmac.new(SECRET.encode(), f"{parts.get('t', '')}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", "")) and abs(time.time() - int(parts["t"])) < 300


async def test_webhooks_reach_a_host_that_was_down(start_app: AppFactory) -> None:
    port = free_port()
    received: list[tuple[str, bytes, str]] = []  # (id header, raw body, signature header), every attempt
    state = {"answer": 503}

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers["Live-Webhook-Id"], await request.read(), request.headers["Live-Signature"]))
        return web.Response(status=state["answer"])

    url, services = await start_app(
        LIVE_HOST_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook", LIVE_HOST_WEBHOOK_SECRET=SECRET
    )
    teacher = Member(url, token(ROOM, "tom", Role.TEACHER))
    ana = Member(url, token(ROOM, "ana"))
    host: web.AppRunner | None = None
    try:
        await joined(teacher, ana)
        await course_in_room(url, ROOM, "hooked", 1200)
        await fund(url, ["ana"], 2000)
        bought = await ana.call("course:buy", buy("hooked", "k1"))
        assert bought["ok"], bought
        refunded = await teacher.call(
            "order:refund", {"order_id": bought["order"]["id"], "reason": "test", "key": "r1", "amount_minor": 200}
        )
        assert refunded["ok"], refunded

        await asyncio.sleep(2.5)  # the host is not listening: connection refused, retried with backoff
        pending = await services.webhooks.list(undelivered_only=True)
        assert len(pending) == 3 and all(w["attempts"] >= 1 and w["last_error"] for w in pending)

        app = web.Application()
        app.router.add_post("/hook", hook)
        host = web.AppRunner(app)
        await host.setup()
        await web.TCPSite(host, "127.0.0.1", port).start()
        await wait_until(lambda: len(received) >= 3, timeout=15, what="retries reach the host (answering 503)")
        state["answer"] = 200
        for _ in range(100):  # retries back off up to 8 s here
            rows = await services.webhooks.list(undelivered_only=False)
            if sum(1 for w in rows if w["delivered_at"] is not None) == 3:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"not all delivered: {rows}")
    finally:
        await asyncio.gather(teacher.close(), ana.close())
        if host is not None:
            await host.cleanup()

    assert all(verifies(signature, body) for _, body, signature in received), "every attempt verifies"
    events: dict[str, dict[str, Any]] = {}
    for event_id, body, _ in received:
        event = json.loads(body)
        assert event["id"] == event_id
        assert events.setdefault(event_id, event) == event, "a retry sends the same body"
    types = sorted(e["type"] for e in events.values())
    assert types == ["entitlement.granted", "order.paid", "order.refunded"]
    paid = next(e for e in events.values() if e["type"] == "order.paid")
    assert paid["data"]["id"] == bought["order"]["id"] and paid["data"]["amount_minor"] == 1200
    refund = next(e for e in events.values() if e["type"] == "order.refunded")
    assert refund["data"]["refund"]["amount_minor"] == 200
    assert len(received) > 3, "some deliveries failed first and were retried"
