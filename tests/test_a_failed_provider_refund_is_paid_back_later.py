"""A refund of an order paid through the provider is recorded in the ledger at once; if the provider's
refund call fails, the refund stays ``failed`` and is tried again (``retry_refunds``, run by a task of its
own every 30 s, each refund backing off from 30 s to an hour) under the same idempotency key, until the
provider has paid it back."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from gifting import orders as orders_module
from gifting import tables as t
from gifting.payments import SandboxProvider
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.sales_support import admin, buy, course_in_room
from tests.support import Member, joined, token

ROOM = "refund-room"


async def test_a_failed_provider_refund_is_paid_back_later(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, services = await start_app()
    teacher, ana = Member(url, token(ROOM, "tom", Role.TEACHER)), Member(url, token(ROOM, "ana"))
    try:
        await joined(teacher, ana)
        await course_in_room(url, ROOM, "py101", 1500)
        bought = await ana.call("course:buy", buy("py101", "k1", method="checkout"))
        assert bought["ok"], bought
        async with aiohttp.ClientSession() as http, http.post(url + bought["url"] + "/pay") as r:
            assert r.status == 200
        order = await services.sales.orders.get(bought["order"]["id"])
        assert order is not None and order["status"] == "paid"

        provider = services.checkouts.provider
        assert isinstance(provider, SandboxProvider)
        pay_back = provider.refund

        async def down(*args: Any) -> None:
            raise OSError("the provider is down")

        monkeypatch.setattr(provider, "refund", down)
        monkeypatch.setattr(orders_module, "REFUND_RETRY_MAX_S", 0.0)  # no back-off between the tries here
        body = {"reason": "not as described", "idempotency_key": "r1"}
        refunded = await admin(url, "POST", f"/api/orders/{order['id']}/refund", body, expect=201)
        assert refunded["order"]["status"] == "refunded"

        async def statuses() -> list[str]:
            async with services.db.connect() as conn:
                return list((await conn.execute(select(t.refunds.c.status))).scalars())

        assert await statuses() == ["failed"] and provider.refunds == []
        assert await services.sales.orders.retry_refunds(older_than_ms=0) == 0  # still down: tried, not paid
        monkeypatch.setattr(provider, "refund", pay_back)
        assert await services.sales.orders.retry_refunds(older_than_ms=0) == 1
        assert await statuses() == ["done"]
        [(payment_ref, amount, key)] = provider.refunds
        assert amount == 1500 and key == f"refund-{refunded['refund']}" and payment_ref == order["payment_ref"]
        assert await services.sales.orders.retry_refunds(older_than_ms=0) == 0, "paid back once"
    finally:
        await teacher.close()
        await ana.close()
