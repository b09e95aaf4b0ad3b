"""Every refused payment answers a clear error code and writes nothing: not enough coins, a cap, a minor,
a bad amount, an unknown gift, an idempotency key replayed with another body, no teacher to pay, paying
yourself. A replay with the same body returns the first result and writes nothing either."""

from __future__ import annotations

from typing import Any

import aiohttp
from sqlalchemy import func, select

from gifting import tables as t
from live.app import Services
from rooms.identity import Grants, Role
from tests.conftest import AppFactory
from tests.support import ADMIN_AUTH, Member, joined, token

ROOM = "money-rules"


async def written(services: Services) -> tuple[int, ...]:
    """Rows in every ledger table, and the sum of all balances."""
    async with services.db.connect() as conn:
        counts = [
            (await conn.execute(select(func.count()).select_from(table))).scalar() or 0
            for table in t.metadata.sorted_tables
        ]
        total = (await conn.execute(select(func.coalesce(func.sum(t.accounts.c.balance), 0)))).scalar()
    return (*counts, int(total or 0))


async def credit(url: str, user: str, coins: int, key: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=ADMIN_AUTH) as http,
        http.post(f"{url}/api/wallets/{user}/credit", json={"coins": coins, "idempotency_key": key}) as r,
    ):
        return r.status, dict(await r.json())


async def test_refusals_have_codes_and_write_nothing(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_SPEND_CAP_PER_TRANSFER="500", LIVE_SPEND_CAP_DAILY="1000")
    early = Member(url, token(ROOM, "early"))
    teacher = Member(url, token(ROOM, "teacher", Role.TEACHER, grants=Grants(chat=True, gift=True, room_admin=True)))
    rich, poor = Member(url, token(ROOM, "rich")), Member(url, token(ROOM, "poor"))
    minor = Member(url, token(ROOM, "kid", minor=True))
    members = [early, teacher, rich, poor, minor]
    try:
        await services.rooms.create("Money rules", room_id=ROOM)
        await joined(early)
        before = await written(services)
        no_teacher = await early.call("gift:send", {"gift": "heart", "key": "a"})
        assert no_teacher["error"]["code"] == "no_teacher"
        assert await written(services) == before

        await joined(teacher, rich, poor, minor)  # the first teacher to open the room receives its gifts
        assert (await credit(url, "rich", 2000, "fund-rich"))[0] == 201
        assert (await credit(url, "kid", 100, "fund-kid"))[0] == 201
        before = await written(services)
        refusals: list[tuple[Member, str, dict[str, Any], str]] = [
            (poor, "gift:send", {"gift": "coffee", "key": "p1"}, "insufficient_funds"),
            (rich, "tip:send", {"coins": 501, "key": "r1"}, "cap_reached"),
            (minor, "gift:send", {"gift": "heart", "key": "m1"}, "minor"),
            (minor, "tip:send", {"coins": 1, "key": "m2"}, "minor"),
            (rich, "tip:send", {"coins": 0, "key": "r2"}, "bad_amount"),
            (rich, "tip:send", {"coins": -5, "key": "r3"}, "bad_amount"),
            (rich, "tip:send", {"coins": 1.5, "key": "r4"}, "invalid"),
            (rich, "tip:send", {"coins": "10", "key": "r5"}, "invalid"),
            (rich, "gift:send", {"gift": "coffee", "count": 0, "key": "r6"}, "bad_amount"),
            (rich, "gift:send", {"gift": "coffee", "count": 100, "key": "r7"}, "bad_amount"),
            (rich, "gift:send", {"gift": "unicorn", "key": "r8"}, "unknown_gift"),
            (rich, "gift:send", {"gift": "coffee"}, "invalid"),
            (rich, "gift:send", {"gift": "coffee", "key": "bad key!"}, "invalid"),
            (teacher, "gift:send", {"gift": "heart", "key": "t1"}, "invalid"),
        ]
        for who, event, payload, code in refusals:
            answer = await who.call(event, payload)
            assert answer["ok"] is False and answer["error"]["code"] == code, (event, payload, answer)
            assert await written(services) == before, f"{event} {payload} wrote something"

        first = await rich.call("gift:send", {"gift": "star", "key": "once"})
        assert first["ok"] and first["balance"] == 1950
        after_first = await written(services)
        replay = await rich.call("gift:send", {"gift": "star", "key": "once"})
        assert replay["ok"] and replay["replayed"] and replay["balance"] == 1950 and replay["key"] == first["key"]
        assert await written(services) == after_first, "a replay writes nothing"
        other = await rich.call("gift:send", {"gift": "trophy", "key": "once"})
        assert other["error"]["code"] == "idempotency_mismatch"
        assert await written(services) == after_first

        tip = await rich.call("tip:send", {"coins": 500, "key": "big", "message": "thanks!"})
        assert tip["ok"] and tip["balance"] == 1450
        over_daily = await rich.call("tip:send", {"coins": 451, "key": "more"})
        assert over_daily["error"]["code"] == "cap_reached", "50 + 500 + 451 coins today passes the daily 1000"
        assert (await rich.call("tip:send", {"coins": 450, "key": "last"}))["ok"]

        status, replayed = await credit(url, "rich", 2000, "fund-rich")
        assert status == 200 and replayed["replayed"] is True
        status, mismatch = await credit(url, "rich", 3000, "fund-rich")
        assert status == 409 and mismatch["error"]["code"] == "idempotency_mismatch"
        wallet = (await rich.call("wallet:get", {}))["wallet"]
        assert wallet == {"balance": 1000, "held": 0, "earnings": 0}
        assert (await written(services))[-1] == 0, "the sum over all accounts is zero"
    finally:
        for m in members:
            await m.close()


async def test_admin_reversal_statements_and_own_caps(start_app: AppFactory) -> None:
    url, services = await start_app()
    teacher, student = Member(url, token(ROOM, "teacher", Role.TEACHER)), Member(url, token(ROOM, "stu"))
    try:
        await joined(teacher, student)
        assert (await credit(url, "stu", 500, "fund-stu"))[0] == 201
        gift = await student.call("gift:send", {"gift": "star", "key": "s1"})
        assert gift["ok"] and gift["balance"] == 450
        async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http:
            path = f"{url}/api/ledger/operations/{gift['key']}/reverse"
            async with http.post(path, json={"reason": "", "idempotency_key": "r1"}) as r:
                assert r.status == 400, "a reversal needs a reason"
            async with http.post(path, json={"reason": "sent by mistake", "idempotency_key": "r1"}) as r:
                assert r.status == 201, await r.text()
            async with http.post(path, json={"reason": "sent by mistake", "idempotency_key": "r1"}) as r:
                assert r.status == 200 and (await r.json())["replayed"] is True
            async with http.post(path, json={"reason": "again", "idempotency_key": "r2"}) as r:
                assert r.status == 409 and (await r.json())["error"]["code"] == "already_reversed"
            async with http.get(f"{url}/api/wallets/stu/statement") as r:
                statement = await r.json()
            async with http.get(f"{url}/api/wallets/teacher/statement", params={"account": "earnings"}) as r:
                earnings = await r.json()
            async with http.get(f"{url}/api/ledger/transfers", params={"room": ROOM, "format": "csv"}) as r:
                exported = await r.text()
        assert statement["balance"] == 500
        async with services.db.connect() as conn:
            audit = (await conn.execute(select(t.audit_log.c.actor, t.audit_log.c.target, t.audit_log.c.reason))).all()
        assert [tuple(row) for row in audit] == [("admin", gift["key"], "sent by mistake")]
        assert [line["amount"] for line in statement["lines"]] == [15, 35, -15, -35, 500]
        assert earnings["balance"] == 0 and [line["amount"] for line in earnings["lines"]] == [-35, 35]
        assert exported.splitlines()[0].startswith("id,op_key,kind") and len(exported.splitlines()) == 3

        too_high = await student.call("wallet:limits", {"per_transfer": 10**9})
        assert too_high["error"]["code"] == "bad_amount", "a user may only lower the platform's caps"
        assert (await student.call("wallet:limits", {"per_transfer": 40}))["limits"]["per_transfer"] == 40
        capped = await student.call("gift:send", {"gift": "star", "key": "s2"})
        assert capped["error"]["code"] == "cap_reached"
        assert (await student.call("gift:send", {"gift": "coffee", "key": "s3"}))["ok"]
        assert await services.ledger.total() == 0
    finally:
        await teacher.close()
        await student.close()
