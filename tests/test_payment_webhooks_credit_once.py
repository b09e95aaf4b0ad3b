"""Top-ups are credited only from a verified webhook, and only once: a Stripe-signed event (verified by
the ``stripe`` library over the raw body) credits once however often it is delivered; a bad signature, a
stale timestamp or a tampered body credits nothing. The sandbox checkout page completes a checkout through
the same webhook path."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from sqlalchemy import insert

from gifting import tables as t
from gifting.payments import sign
from live.app import Services
from rooms.engine import now_ms
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import ADMIN_AUTH, Member, joined, token

SECRET = "whsec_test_" + "x" * 24


async def balance(url: str, user: str) -> int:
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http, http.get(f"{url}/api/wallets/{user}") as r:
        return int((await r.json())["balance"])


def completed(event_id: str, checkout_id: str) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {"object": "checkout.session", "client_reference_id": checkout_id, "payment_status": "paid"}
        },
    }
    return json.dumps(event).encode()


async def deliver(url: str, body: bytes, header: str) -> tuple[int, dict[str, Any]]:
    headers = {"Stripe-Signature": header, "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/api/payments/stripe/webhook", data=body, headers=headers) as r,
    ):
        return r.status, dict(await r.json())


async def open_checkout(services: Services, user: str, coins: int) -> str:
    """A checkout as ``CheckoutService.start`` records it (creating the Stripe session itself needs
    Stripe's API, which tests cannot reach)."""
    checkout_id = f"co_test_{user}"
    async with services.db.begin() as conn:
        await conn.execute(
            insert(t.checkouts).values(
                id=checkout_id,
                provider="stripe",
                user_id=user,
                room_id=None,
                pack="coins-100",
                coins=coins,
                amount_minor=99,
                currency="usd",
                status="open",
                created_at=now_ms(),
            )
        )
    return checkout_id


async def test_stripe_event_credits_once_and_forgeries_credit_nothing(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_PAYMENT_PROVIDER="stripe", LIVE_STRIPE_WEBHOOK_SECRET=SECRET)
    checkout_id = await open_checkout(services, "ana", 100)
    body = completed("evt_1", checkout_id)

    forged = [
        ("wrong secret", body, sign("whsec_other", body, int(time.time()))),
        ("stale timestamp", body, sign(SECRET, body, int(time.time()) - 301)),
        (
            "tampered body",
            completed("evt_1", checkout_id).replace(b'"paid"', b'"paid" '),
            sign(SECRET, body, int(time.time())),
        ),
        ("no signature", body, ""),
    ]
    for why, payload, header in forged:
        status, answer = await deliver(url, payload, header)
        assert status == 400 and answer["error"]["code"] == "bad_signature", why
        assert await balance(url, "ana") == 0, f"{why} credited something"

    results = []
    for _ in range(3):
        status, answer = await deliver(url, body, sign(SECRET, body, int(time.time())))
        assert status == 200
        results.append(answer["result"])
    assert results == ["credited", "duplicate", "duplicate"]
    assert await balance(url, "ana") == 100

    other_event = completed("evt_2", checkout_id)  # the provider's retry under a new event id
    status, answer = await deliver(url, other_event, sign(SECRET, other_event, int(time.time())))
    assert status == 200 and answer["result"] == "duplicate"
    assert await balance(url, "ana") == 100, "a checkout is credited once"
    assert (await services.checkouts.checkout(checkout_id) or {})["status"] == "paid"


async def test_sandbox_checkout_page_pays_through_the_webhook(start_app: AppFactory) -> None:
    url, _ = await start_app()
    teacher, student = Member(url, token("shop", "teacher", Role.TEACHER)), Member(url, token("shop", "sam"))
    try:
        await joined(teacher, student)
        info = await student.call("wallet:get", {})
        assert info["wallet"]["balance"] == 0 and info["packs"][0]["id"] == "coins-100"
        started = await student.call("wallet:checkout", {"pack": "coins-100"})
        assert started["ok"] and started["url"].startswith("/sandbox/checkout/co_")
        async with aiohttp.ClientSession() as http:
            async with http.get(url + started["url"]) as r:
                assert r.status == 200 and "100 coins for 0.99 USD" in await r.text()
            for _ in range(2):  # paying twice credits once
                async with http.post(url + started["url"] + "/pay") as r:
                    assert r.status == 200 and "Coins added" in await r.text()
        assert await balance(url, "sam") == 100
        assert (await student.call("wallet:checkout", {"pack": "nope"}))["error"]["code"] == "not_found"
        async with aiohttp.ClientSession() as http, http.get(f"{url}/sandbox/checkout/co_unknown") as r:
            assert r.status == 404
        async with aiohttp.ClientSession() as http:
            body = completed("evt_x", "co_unknown")
            forged = sign("not-our-key", body, int(time.time()))
            async with http.post(
                f"{url}/api/payments/sandbox/webhook", data=body, headers={"Sandbox-Signature": forged}
            ) as r:
                assert r.status == 400
        assert await balance(url, "sam") == 100
    finally:
        await teacher.close()
        await student.close()
