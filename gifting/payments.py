"""Top-ups: coins bought through a payment provider, credited only from its verified webhook.

Two providers behind one interface: ``sandbox`` (local use: our own checkout page, which completes and
calls our webhook, signed like Stripe's) and ``stripe`` (a Checkout Session; the webhook is verified with
the ``stripe`` library over the raw body, 300 s tolerance). A checkout is credited once: the ledger
operation's idempotency key is the checkout id, and event ids already handled are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting import operations as ops
from gifting import tables as t
from gifting.ledger import Ledger
from gifting.policy import CoinPack
from rooms.engine import now_ms
from rooms.errors import RoomError, forbidden
from rooms.identity import Identity
from rooms.tables import autocommit

TOLERANCE_S = 300
COMPLETED = "checkout.session.completed"


@dataclass(frozen=True)
class PaidEvent:
    """A verified webhook event: its id, type, and the checkout it pays (``None`` if it pays none)."""

    id: str
    type: str
    checkout_id: str | None
    #: The provider's payment (Stripe's payment intent), kept for refunds.
    payment_ref: str | None = None


class PaymentProvider(Protocol):
    """What a payment provider does for us: start a checkout, and verify its webhooks."""

    name: str

    async def start_checkout(self, checkout: dict[str, Any], success_url: str, cancel_url: str) -> str:
        """Create the provider's checkout for ``checkout``; returns the URL to send the buyer to."""

    def verify(self, raw_body: bytes, headers: Mapping[str, str]) -> PaidEvent:
        """The event in a webhook request, if its signature verifies; else ``bad_signature``."""

    async def refund(self, payment_ref: str, amount_minor: int, key: str) -> None:
        """Pay ``amount_minor`` of the payment back to the buyer (``key``: the provider's idempotency key)."""


def bad_signature(why: str) -> RoomError:
    return RoomError("bad_signature", f"webhook refused: {why}")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """A ``t=…,v1=…`` signature header: HMAC-SHA256 of ``"{t}.{body}"``, Stripe's scheme."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class SandboxProvider:
    """A provider for local use: the checkout is a page of this server, its webhook signed with our key."""

    name = "sandbox"
    header = "Sandbox-Signature"

    def __init__(self, secret: str) -> None:
        self.secret = secret
        #: Refunds asked for (payment, amount, key), newest last: what a real provider would have paid.
        self.refunds: list[tuple[str, int, str]] = []

    async def start_checkout(self, checkout: dict[str, Any], success_url: str, cancel_url: str) -> str:
        return f"/sandbox/checkout/{checkout['id']}"

    def completed_event(self, checkout_id: str) -> bytes:
        event = {
            "id": "evt_" + secrets.token_hex(12),
            "type": COMPLETED,
            "data": {
                "object": {
                    "client_reference_id": checkout_id,
                    "payment_status": "paid",
                    "payment_intent": "pi_sandbox_" + secrets.token_hex(8),
                }
            },
        }
        return json.dumps(event).encode()

    async def refund(self, payment_ref: str, amount_minor: int, key: str) -> None:
        """No real money moved, so there is nothing to pay back outside; the ledger records the refund."""
        self.refunds.append((payment_ref, amount_minor, key))

    def verify(self, raw_body: bytes, headers: Mapping[str, str]) -> PaidEvent:
        header = headers.get(self.header, "")
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        try:
            timestamp = int(parts["t"])
        except (KeyError, ValueError):
            raise bad_signature("no signature") from None
        if abs(time.time() - timestamp) > TOLERANCE_S:
            raise bad_signature("timestamp outside the tolerance")
        if not hmac.compare_digest(sign(self.secret, raw_body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}"):
            raise bad_signature("signature does not match")
        return _paid_event(json.loads(raw_body))


class StripeProvider:
    """Stripe Checkout through the ``stripe`` library."""

    name = "stripe"
    header = "Stripe-Signature"

    def __init__(self, api_key: str, webhook_secret: str) -> None:
        import stripe

        self.stripe = stripe
        self.client = stripe.StripeClient(api_key) if api_key else None
        self.webhook_secret = webhook_secret

    async def start_checkout(self, checkout: dict[str, Any], success_url: str, cancel_url: str) -> str:
        if self.client is None:
            raise RoomError("unavailable", "Stripe is not configured (LIVE_STRIPE_API_KEY)")
        params: Any = {
            "mode": "payment",
            "client_reference_id": checkout["id"],
            "metadata": {"checkout": checkout["id"], "user": checkout["user_id"]},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": checkout["currency"],
                        "unit_amount": checkout["amount_minor"],
                        "product_data": {"name": checkout.get("title") or f"{checkout['coins']} coins"},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        client = self.client
        session = await asyncio.to_thread(lambda: client.checkout.sessions.create(params=params))
        return str(session.url)

    def verify(self, raw_body: bytes, headers: Mapping[str, str]) -> PaidEvent:
        try:
            event = self.stripe.Webhook.construct_event(  # type: ignore[no-untyped-call]
                raw_body, headers.get(self.header, ""), self.webhook_secret, tolerance=TOLERANCE_S
            )
        except (self.stripe.SignatureVerificationError, ValueError) as exc:
            raise bad_signature(str(exc).split("\n")[0][:200]) from None
        return _paid_event(event.to_dict())

    async def refund(self, payment_ref: str, amount_minor: int, key: str) -> None:
        if self.client is None:
            raise RoomError("unavailable", "Stripe is not configured (LIVE_STRIPE_API_KEY)")
        client = self.client
        params: Any = {"payment_intent": payment_ref, "amount": amount_minor}
        await asyncio.to_thread(lambda: client.refunds.create(params=params, options={"idempotency_key": key}))


def _paid_event(event: dict[str, Any]) -> PaidEvent:
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise bad_signature("not an event")
    checkout_id = payment_ref = None
    if event.get("type") == COMPLETED:
        obj = (event.get("data") or {}).get("object") or {}
        if obj.get("payment_status") == "paid":
            checkout_id = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("checkout")
            payment_ref = obj.get("payment_intent") if isinstance(obj.get("payment_intent"), str) else None
    return PaidEvent(event["id"], str(event.get("type")), checkout_id, payment_ref)


class CourseOrders(Protocol):
    async def fulfil_checkout(self, checkout: dict[str, Any], payment_ref: str | None) -> str: ...


class CheckoutService:
    """Starting top-ups and fulfilling them from verified webhooks."""

    def __init__(self, db: AsyncEngine, ledger: Ledger, provider: PaymentProvider, packs: tuple[CoinPack, ...]) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.ledger = ledger
        self.provider = provider
        self.packs = packs
        #: Fulfils checkouts of course orders (gifting/orders.py), set when the app is wired.
        self.course_orders: CourseOrders | None = None
        self.return_url = "/room"

    async def start(self, buyer: Identity, pack_id: str, return_url: str) -> dict[str, Any]:
        """Open a checkout for a coin pack; returns where to send the buyer."""
        if not buyer.grants.gift:
            raise forbidden("buying coins")
        if buyer.minor:
            raise RoomError("minor", "spending is turned off for this account")
        pack = next((p for p in self.packs if p.id == pack_id), None)
        if pack is None:
            raise RoomError("not_found", f"no coin pack {pack_id[:32]!r}")
        checkout = {
            "id": "co_" + secrets.token_hex(12),
            "provider": self.provider.name,
            "user_id": buyer.user_id,
            "room_id": buyer.room_id,
            "pack": pack.id,
            "coins": pack.coins,
            "amount_minor": pack.amount_minor,
            "currency": pack.currency,
            "status": "open",
            "created_at": now_ms(),
        }
        async with self.db.begin() as conn:
            await conn.execute(insert(t.checkouts).values(**checkout))
        url = await self.provider.start_checkout(checkout, return_url, return_url)
        return {"checkout": checkout["id"], "url": url, "coins": pack.coins}

    async def checkout(self, checkout_id: str) -> dict[str, Any] | None:
        async with self.reads.connect() as conn:
            row = (await conn.execute(select(t.checkouts).where(t.checkouts.c.id == checkout_id))).first()
        return dict(row._mapping) if row is not None else None

    async def handle_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> str:
        """Verify, then credit the checkout the event pays, once. Returns what was done."""
        event = self.provider.verify(raw_body, headers)
        async with self.reads.connect() as conn:
            seen = (await conn.execute(select(t.payment_events.c.id).where(t.payment_events.c.id == event.id))).first()
        if seen is not None:
            return "duplicate"
        done = "ignored"
        if event.checkout_id is not None:
            done = await self._fulfil(event.checkout_id, event.payment_ref)
        try:
            async with self.db.begin() as conn:
                values = {"id": event.id, "provider": self.provider.name, "type": event.type, "received_at": now_ms()}
                await conn.execute(insert(t.payment_events).values(**values))
        except IntegrityError:
            return "duplicate"  # delivered twice at once: the ledger credited it once all the same
        return done

    async def _fulfil(self, checkout_id: str, payment_ref: str | None) -> str:
        checkout = await self.checkout(checkout_id)
        if checkout is None or checkout["provider"] != self.provider.name:
            raise RoomError("not_found", "the event pays no checkout of ours")
        if checkout["order_id"] is not None:
            if self.course_orders is None:
                raise RoomError("unavailable", "course orders are not served here")
            done = await self.course_orders.fulfil_checkout(checkout, payment_ref)
            await self._mark_paid(checkout_id)
            return done
        plan = ops.topup(
            f"checkout:{checkout_id}", checkout["user_id"], int(checkout["coins"]), self.provider.name, "webhook"
        )
        outcome = await self.ledger.submit(plan)
        await self._mark_paid(checkout_id)
        return "duplicate" if outcome.replayed else "credited"

    async def _mark_paid(self, checkout_id: str) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                update(t.checkouts)
                .where(t.checkouts.c.id == checkout_id, t.checkouts.c.status == "open")
                .values(status="paid", paid_at=now_ms())
            )

    async def start_course_checkout(self, order: dict[str, Any], title: str) -> dict[str, Any]:
        """A checkout at the provider for a pending course order; returns where to send the buyer."""
        checkout = {
            "id": "co_" + secrets.token_hex(12),
            "provider": self.provider.name,
            "user_id": order["buyer"],
            "room_id": order["room_id"],
            "pack": "course",
            "coins": 0,
            "order_id": order["id"],
            "amount_minor": order["amount_minor"],
            "currency": order["currency"],
            "status": "open",
            "created_at": now_ms(),
        }
        async with self.db.begin() as conn:
            await conn.execute(insert(t.checkouts).values(**checkout))
            await conn.execute(update(t.orders).where(t.orders.c.id == order["id"]).values(checkout_id=checkout["id"]))
        order["checkout_id"] = checkout["id"]
        url = await self.provider.start_checkout({**checkout, "title": title}, self.return_url, self.return_url)
        return {"checkout": checkout["id"], "url": url}
