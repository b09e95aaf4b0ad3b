"""A pending order (paying through the provider's checkout) holds its flash-sale seat only until
``LIVE_ORDER_HOLD_S``: unpaid, it expires, gives the seat and its coupon claim back, and the seat sells
again. A payment that arrives after the expiry is paid back through the provider and grants nothing."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gifting.payments import SandboxProvider
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.sales_support import admin, buy, course_in_room, fund
from tests.support import Member, joined, token, wait_until

ROOM = "expiry-room"


async def test_unpaid_order_expires_and_its_seat_sells_again(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_ORDER_HOLD_S="10")
    teacher = Member(url, token(ROOM, "tom", Role.TEACHER))
    ana, ben = Member(url, token(ROOM, "ana")), Member(url, token(ROOM, "ben"))
    try:
        await joined(teacher, ana, ben)
        assert (await teacher.call("room:go_live", {}))["ok"]
        await course_in_room(url, ROOM, "solo", 3000)
        await fund(url, ["ben"], 5000)
        assert (await teacher.call("sales:pin", {"course_id": "solo"}))["ok"]
        coupon = (
            await teacher.call(
                "coupon:create", {"title": "1 off", "kind": "fixed", "amount_off": 100, "quota": 1, "currency": "usd"}
            )
        )["coupon"]
        assert (await ana.call("coupon:claim", {"id": coupon["id"]}))["ok"]
        started = await teacher.call(
            "sales:start", {"price_minor": 1000, "countdown_s": 10, "duration_s": 300, "seats": 1}
        )
        assert started["ok"], started
        await asyncio.sleep(max(0.0, started["state"]["sale"]["opens_at"] / 1000 - time.time()) + 0.05)

        pending = await ana.call("course:buy", buy("solo", "a1", method="checkout", coupon_id=coupon["id"]))
        assert pending["ok"], pending
        order = pending["order"]
        assert order["status"] == "pending" and order["amount_minor"] == 900 and pending["url"]
        refused = await ben.call("course:buy", buy("solo", "b1"))
        assert not refused["ok"] and refused["error"]["code"] == "sold_out"

        # Unpaid: it expires within the hold (housekeeping runs every second) and the seat comes back.
        await wait_until(
            lambda: any(name == "sales:order" and d["order"]["status"] == "expired" for name, d in ana.other),
            timeout=15,
            what="ana's order expired",
        )
        expired = await services.sales.orders.get(order["id"])
        assert expired is not None and expired["status"] == "expired"
        again = await ana.call("course:buy", buy("solo", "a1", method="checkout", coupon_id=coupon["id"]))
        assert again["ok"] and again["replayed"] and again["order"]["id"] == order["id"], "a replay, not a new order"
        claims = (await ana.call("sales:get", {}))["claims"]
        assert [c["coupon"]["id"] for c in claims] == [coupon["id"]], "the coupon claim came back"

        sold = await ben.call("course:buy", buy("solo", "b2"))
        assert sold["ok"] and sold["order"]["status"] == "paid" and sold["order"]["sale_id"] == order["sale_id"]
        assert (await admin(url, "GET", "/api/wallets/ben"))["balance"] == 4000

        # Ana pays the expired checkout anyway: the money goes back through the provider, nothing granted.
        async with aiohttp.ClientSession() as http, http.post(f"{url}/sandbox/checkout/{pending['checkout']}/pay") as r:
            assert r.status == 200
        provider = services.checkouts.provider
        assert isinstance(provider, SandboxProvider)
        assert [amount for _, amount, _ in provider.refunds] == [900]
        late = await services.sales.orders.get(order["id"])
        assert late is not None and late["status"] == "expired" and late["paid_at"] is None
        owners = await admin(url, "GET", "/api/entitlements?course=solo")
        assert [e["user_id"] for e in owners["entitlements"]] == ["ben"]
        assert await services.ledger.total() == 0
    finally:
        await asyncio.gather(teacher.close(), ana.close(), ben.close())
