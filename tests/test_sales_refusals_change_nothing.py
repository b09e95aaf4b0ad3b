"""Every refused sales request answers a clear error code and changes nothing in SQL: a replayed buy
returns the same order, a key reused with another body, a refund beyond what was paid, a coupon past its
quota or outside the live, not enough coins, owning the course already, students doing staff things,
and the refund policy the student accepted."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from gifting import tables as t
from live.app import Services
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.sales_support import admin, buy, course_in_room, fund
from tests.support import Member, joined, token

ROOM = "sales-rules"


async def everything(services: Services) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ledger and sales table."""
    out = {}
    async with services.db.connect() as conn:
        for table in t.metadata.sorted_tables:
            rows = (await conn.execute(select(table))).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def test_sales_refusals_have_codes_and_change_nothing(start_app: AppFactory) -> None:
    url, services = await start_app()
    teacher = Member(url, token(ROOM, "tom", Role.TEACHER))
    ana, ben = Member(url, token(ROOM, "ana")), Member(url, token(ROOM, "ben"))
    kid = Member(url, token(ROOM, "kid", minor=True))
    members = [teacher, ana, ben, kid]
    try:
        await joined(*members)
        await course_in_room(url, ROOM, "py101", 2000)
        await course_in_room(url, ROOM, "go101", 800)
        await admin(
            url,
            "POST",
            "/api/courses",
            {"id": "elsewhere", "title": "Not here", "price_minor": 100, "currency": "usd"},
            expect=201,
        )
        yen = await admin(
            url, "POST", "/api/courses", {"id": "jp", "title": "Yen", "price_minor": 100, "currency": "jpy"}
        )
        assert yen["error"]["code"] == "unsupported_currency"
        await fund(url, ["ana", "kid"], 5000)
        assert (await teacher.call("sales:pin", {"course_id": "py101"}))["ok"]
        threshold = (
            await teacher.call(
                "coupon:create",
                {
                    "title": "spend 1500 save 300",
                    "kind": "threshold",
                    "amount_off": 300,
                    "min_spend": 1500,
                    "quota": 1,
                    "currency": "usd",
                },
            )
        )["coupon"]

        # Before the lesson is live, coupons cannot be claimed.
        before = await everything(services)
        scheduled = await ana.call("coupon:claim", {"id": threshold["id"]})
        assert scheduled["error"]["code"] == "not_live"
        assert await everything(services) == before

        assert (await teacher.call("room:go_live", {}))["ok"]
        assert (await ana.call("coupon:claim", {"id": threshold["id"]}))["ok"]
        bought = await ana.call("course:buy", buy("py101", "k1", coupon_id=threshold["id"]))
        assert bought["ok"] and bought["order"]["amount_minor"] == 1700
        order = bought["order"]

        before = await everything(services)
        replay = await ana.call("course:buy", buy("py101", "k1", coupon_id=threshold["id"]))
        assert replay["ok"] and replay["replayed"] and replay["order"] == order
        assert await everything(services) == before, "a replay writes nothing"

        refusals: list[tuple[Member, str, dict[str, Any], str]] = [
            (ana, "course:buy", buy("py101", "k1"), "idempotency_mismatch"),
            (ana, "course:buy", buy("go101", "k1"), "idempotency_mismatch"),
            (ana, "course:buy", buy("py101", "k2"), "already_owned"),
            (ben, "course:buy", buy("go101", "b1"), "insufficient_funds"),
            (ben, "coupon:claim", {"id": threshold["id"]}, "coupon_exhausted"),
            (ana, "course:buy", {**buy("go101", "k3"), "accept_refund_policy": False}, "policy_not_accepted"),
            (ana, "course:buy", buy("elsewhere", "k4"), "not_found"),
            (ana, "course:buy", buy("go101", "k5", coupon_id="cpn_0000000000000000"), "coupon_not_claimed"),
            (kid, "course:buy", buy("go101", "c1"), "minor"),
            (ana, "course:buy", {**buy("go101", "k6"), "price_minor": 1}, "invalid"),
            (ana, "sales:pin", {"course_id": "go101"}, "forbidden"),
            (ana, "sales:start", {"price_minor": 1, "countdown_s": 10, "duration_s": 60, "seats": 5}, "forbidden"),
            (ana, "coupon:create", {"title": "free", "kind": "percent", "percent_off": 100, "quota": 5}, "forbidden"),
            (
                ana,
                "order:refund",
                {"order_id": order["id"], "reason": "half", "key": "r1", "amount_minor": 100},
                "invalid",
            ),
            (ben, "order:refund", {"order_id": order["id"], "reason": "not mine", "key": "r2"}, "not_found"),
            (
                teacher,
                "order:refund",
                {"order_id": order["id"], "reason": "too much", "key": "r3", "amount_minor": 1701},
                "refund_exceeds_paid",
            ),
            (
                teacher,
                "sales:start",
                {"price_minor": 2000, "countdown_s": 10, "duration_s": 60, "seats": 5},
                "bad_amount",
            ),
            (teacher, "sales:start", {"price_minor": 100, "countdown_s": 5, "duration_s": 60, "seats": 5}, "invalid"),
            (teacher, "coupon:create", {"title": "x", "kind": "fixed", "quota": 5, "currency": "usd"}, "bad_amount"),
            (teacher, "sales:stop", {}, "invalid_state"),
        ]
        for member, event, payload, code in refusals:
            before = await everything(services)
            answer = await member.call(event, payload)
            assert not answer["ok"] and answer["error"]["code"] == code, (event, payload, answer)
            assert await everything(services) == before, (event, payload, "wrote something")

        # A coupon whose threshold the price does not reach.
        small = (
            await teacher.call(
                "coupon:create",
                {
                    "title": "big",
                    "kind": "threshold",
                    "amount_off": 100,
                    "min_spend": 1000,
                    "quota": 5,
                    "currency": "usd",
                },
            )
        )["coupon"]
        assert (await ana.call("coupon:claim", {"id": small["id"]}))["ok"]
        before = await everything(services)
        below = await ana.call("course:buy", buy("go101", "k7", coupon_id=small["id"]))
        assert below["error"]["code"] == "coupon_not_applicable" and below["error"]["min_spend"] == 1000
        assert await everything(services) == before

        # The policy the student accepted: after consuming more than 20% of the course, no self-refund.
        await admin(url, "POST", "/api/entitlements/ana/py101/progress", {"consumed_pct": 50}, expect=200)
        before = await everything(services)
        late = await ana.call("order:refund", {"order_id": order["id"], "reason": "too late", "key": "r4"})
        assert late["error"]["code"] == "refund_window_closed"
        assert await everything(services) == before

        # Staff may refund part, then the rest; never more than was paid; the money returns to the wallet.
        part = await teacher.call(
            "order:refund", {"order_id": order["id"], "reason": "goodwill", "key": "r5", "amount_minor": 700}
        )
        assert part["ok"] and part["order"]["refunded_minor"] == 700 and part["order"]["status"] == "paid"
        before = await everything(services)
        reused = await teacher.call(
            "order:refund", {"order_id": order["id"], "reason": "goodwill", "key": "r5", "amount_minor": 800}
        )
        assert reused["error"]["code"] == "idempotency_mismatch", "the key of a refund of 700 is not one of 800"
        assert await everything(services) == before
        rest = await admin(
            url, "POST", f"/api/orders/{order['id']}/refund", {"reason": "closing", "idempotency_key": "r6"}, expect=201
        )
        assert rest["order"]["status"] == "refunded" and rest["order"]["refunded_minor"] == 1700
        before = await everything(services)
        body = {"reason": "closing", "idempotency_key": "r6"}
        replay = await admin(url, "POST", f"/api/orders/{order['id']}/refund", body, expect=200)
        assert replay["replayed"] and replay["refund"] == rest["refund"]
        assert await everything(services) == before
        again = await admin(
            url, "POST", f"/api/orders/{order['id']}/refund", {"reason": "again", "idempotency_key": "r7"}
        )
        assert again["error"]["code"] == "invalid_state"
        assert await everything(services) == before
        assert (await admin(url, "GET", "/api/wallets/ana"))["balance"] == 5000
        assert (await admin(url, "GET", "/api/wallets/tom"))["earnings"] == 0
        assert await services.ledger.total() == 0
        owners = await admin(url, "GET", "/api/entitlements?user=ana")
        assert [e["status"] for e in owners["entitlements"]] == ["revoked"]
    finally:
        await asyncio.gather(*(m.close() for m in members))
