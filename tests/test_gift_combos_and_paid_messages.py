"""Gifts of one kind from one user in quick succession grow one combo; a pause starts a new one. Paid
highlighted messages take the tier their coins reach (colour, pin time, length), and every member sees
them, while a student sees only a summary of ordinary gifts."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import ADMIN_AUTH, Member, joined, token, wait_until

ROOM = "combo-room"


def money(member: Member) -> list[dict[str, Any]]:
    return [e["data"] for e in member.events if e["type"] == "money"]


async def test_combos_and_paid_message_tiers(start_app: AppFactory) -> None:
    url, _ = await start_app(LIVE_GIFT_COMBO_MS="400")
    teacher, sam, viewer = (
        Member(url, token(ROOM, "teacher", Role.TEACHER)),
        Member(url, token(ROOM, "sam")),
        Member(url, token(ROOM, "viewer")),
    )
    try:
        await joined(teacher, sam, viewer)
        async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http:
            async with http.post(f"{url}/api/wallets/sam/credit", json={"coins": 1000, "idempotency_key": "s"}) as r:
                assert r.status == 201
        combos = [(await sam.call("gift:send", {"gift": "coffee", "key": f"c{i}"}))["combo"] for i in range(3)]
        assert combos == [1, 2, 3]
        assert (await sam.call("gift:send", {"gift": "coffee", "count": 2, "key": "c3"}))["combo"] == 5
        assert (await sam.call("gift:send", {"gift": "heart", "key": "h0"}))["combo"] == 1, "per kind of gift"
        replay = await sam.call("gift:send", {"gift": "coffee", "key": "c0"})
        assert replay["replayed"] and "combo" not in replay, "a replay is no new gift"
        await asyncio.sleep(0.6)
        assert (await sam.call("gift:send", {"gift": "coffee", "key": "c9"}))["combo"] == 1, "a pause ends a combo"

        too_cheap = await sam.call("message:paid", {"text": "hi", "coins": 5, "key": "m0"})
        too_long = await sam.call("message:paid", {"text": "x" * 51, "coins": 10, "key": "m1"})
        assert (too_cheap["error"]["code"], too_long["error"]["code"]) == ("bad_amount", "too_long")
        paid = await sam.call("message:paid", {"text": "Thank you for this lesson!", "coins": 60, "key": "m2"})
        assert paid["ok"] and paid["tier"] == {"level": 2, "colour": "green", "pin_s": 30}

        def paid_seen(member: Member) -> bool:
            events = [e for d in money(member) for e in d.get("events", d.get("highlights", []))]
            return any(e["type"] == "message.paid" for e in events)

        await wait_until(lambda: paid_seen(teacher) and paid_seen(viewer), what="the paid message reaches everyone")
        staff_gifts = [e["data"]["combo"] for d in money(teacher) for e in d["events"] if e["type"] == "gift.sent"]
        assert staff_gifts == [1, 2, 3, 5, 1, 1], "staff see every gift with its combo"
        assert all("events" not in d and "gifts" in d for d in money(viewer)), "students get the summary"
        every = [e for d in money(teacher) + money(viewer) for e in d.get("events", d.get("highlights", []))]
        assert every and all("balance" not in e["data"] for e in every), "no one sees a payer's balance"
    finally:
        for m in (teacher, sam, viewer):
            await m.close()


async def test_contribution_board_ranks_payers_and_respects_opt_out(start_app: AppFactory) -> None:
    url, services = await start_app()
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER))
    payers = [Member(url, token(ROOM, f"p{i}", name=f"Payer {i}")) for i in range(3)]
    try:
        await joined(teacher, *payers)
        async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http:
            for i in range(3):
                body = {"coins": 1000, "idempotency_key": f"f{i}"}
                async with http.post(f"{url}/api/wallets/p{i}/credit", json=body) as r:
                    assert r.status == 201
        for i, coins in enumerate((30, 200, 50)):
            assert (await payers[i].call("tip:send", {"coins": coins, "key": "t"}))["ok"]
        board = (await teacher.call("board:get", {"scope": "room"}))["entries"]
        assert [(e["name"], e["coins"]) for e in board] == [("Payer 1", 200), ("Payer 2", 50), ("Payer 0", 30)]

        assert (await payers[1].call("wallet:limits", {"hide_on_boards": True}))["limits"]["hide_on_boards"] is True
        board = (await payers[0].call("board:get", {"scope": "room"}))["entries"]
        assert [e["user_id"] for e in board] == ["p2", "p0"], "a user who opted out is not shown"
        assert (await payers[0].call("board:get", {"scope": "forever"}))["error"]["code"] == "invalid"
        assert await services.ledger.total() == 0
    finally:
        for m in (teacher, *payers):
            await m.close()
