"""HTTP side of top-ups: the provider's webhook, and the sandbox provider's checkout page."""

from __future__ import annotations

import html
import time

import aiohttp
from aiohttp import web

from gifting.payments import CheckoutService, SandboxProvider, sign
from live.http_util import error_response
from rooms.errors import RoomError

MAX_WEBHOOK_BYTES = 64 * 1024
WEBHOOK_CALL_TIMEOUT_S = 10.0

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox checkout</title><link rel="stylesheet" href="/static/style.css"></head>
<body><main class="intro" data-testid="sandbox-checkout">{body}</main></body></html>
"""


class PaymentRoutes:
    """``POST /api/payments/{provider}/webhook`` (verified by signature, not by login) and, with the
    sandbox provider, ``/sandbox/checkout/{id}``: a page whose Pay button completes the checkout the way a
    real provider would, by calling our webhook with a signed event."""

    def __init__(self, checkouts: CheckoutService) -> None:
        self.checkouts = checkouts

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/payments/{provider}/webhook", self.webhook)
        if isinstance(self.checkouts.provider, SandboxProvider):
            app.router.add_get("/sandbox/checkout/{id}", self.sandbox_page)
            app.router.add_post("/sandbox/checkout/{id}/pay", self.sandbox_pay)

    async def webhook(self, request: web.Request) -> web.Response:
        if request.match_info["provider"] != self.checkouts.provider.name:
            return error_response("not_found", "no such payment provider here")
        if (request.content_length or 0) > MAX_WEBHOOK_BYTES:
            return error_response("too_large", "webhook body too large")
        raw = await request.read()  # the signature covers the raw bytes, before any parsing
        result = await self.checkouts.handle_webhook(raw, request.headers)
        return web.json_response({"received": True, "result": result})

    async def sandbox_page(self, request: web.Request) -> web.Response:
        checkout = await self.checkouts.checkout(request.match_info["id"])
        if checkout is None or checkout["provider"] != "sandbox":
            return _page("<h1>No such checkout</h1>", status=404)
        if checkout["status"] == "paid":
            return _page(
                '<h1>Paid</h1><p data-testid="sandbox-done">This checkout is paid. You can close this tab.</p>'
            )
        price = f"{checkout['amount_minor'] / 100:.2f} {html.escape(checkout['currency'].upper())}"
        what = "A course order" if checkout.get("order_id") else f"{int(checkout['coins'])} coins"
        form = (
            f"<h1>Sandbox checkout</h1><p>{what} for {price}. No real money moves.</p>"
            f'<form method="post" action="/sandbox/checkout/{html.escape(checkout["id"])}/pay">'
            '<button class="primary" data-testid="sandbox-pay">Pay</button></form>'
        )
        return _page(form)

    async def sandbox_pay(self, request: web.Request) -> web.Response:
        provider = self.checkouts.provider
        assert isinstance(provider, SandboxProvider)
        checkout = await self.checkouts.checkout(request.match_info["id"])
        if checkout is None or checkout["provider"] != "sandbox":
            return _page("<h1>No such checkout</h1>", status=404)
        body = provider.completed_event(checkout["id"])
        headers = {provider.header: sign(provider.secret, body, int(time.time())), "Content-Type": "application/json"}
        # Over HTTP to our own webhook, exactly as a provider calls it: at the address this request came in
        # on (our own listening socket), never at the Host header's, which the client chooses.
        url = f"{_own_origin(request)}/api/payments/sandbox/webhook"
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_CALL_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, data=body, headers=headers, allow_redirects=False) as r,
            ):
                if r.status != 200:
                    raise RoomError("unavailable", "the payment could not be completed; nothing was charged")
        except (aiohttp.ClientError, TimeoutError):
            raise RoomError("unavailable", "the payment could not be completed; nothing was charged") from None
        done = "Order paid" if checkout.get("order_id") else "Coins added"
        return _page(f'<h1>Paid</h1><p data-testid="sandbox-done">{done}. You can close this tab.</p>')


def _own_origin(request: web.Request) -> str:
    """``http://host:port`` of the socket this request arrived on."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise RoomError("unavailable", "the payment could not be completed; nothing was charged")
    host, port = str(sockname[0]), int(sockname[1])  # an accepted socket's own address, never a wildcard
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _page(body: str, status: int = 200) -> web.Response:
    return web.Response(text=PAGE.format(body=body), status=status, content_type="text/html")
