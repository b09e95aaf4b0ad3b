"""One wallet funded for exactly 100 gifts sends 300 at once through two server processes (PostgreSQL):
exactly 100 succeed, the wallet ends at 0, and the teacher and the platform hold exactly their split.
Every refusal says ``insufficient_funds``; staff see exactly the 100 accepted gifts announced."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest

from rooms.identity import Role
from tests.support import ADMIN_AUTH, Member, ServerProcess, joined, token, wait_until

pytestmark = pytest.mark.postgres

ROOM = "gift-storm"
PRICE = 10  # the "coffee" gift
CONNECTIONS_PER_INSTANCE = 10  # the same student on 20 connections: each stays under the per-connection burst


async def wallet(url: str, user: str) -> dict[str, int]:
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http, http.get(f"{url}/api/wallets/{user}") as r:
        assert r.status == 200
        return dict(await r.json())


async def test_300_gifts_from_a_wallet_funded_for_100(
    two_instances: tuple[ServerProcess, ServerProcess], pg_url: str
) -> None:
    a, b = two_instances
    teacher = Member(a.url, token(ROOM, "teacher", Role.TEACHER))
    sockets = [Member((a, b)[i % 2].url, token(ROOM, "spender")) for i in range(2 * CONNECTIONS_PER_INSTANCE)]
    try:
        await joined(teacher, *sockets)
        async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http:
            body = {"coins": 100 * PRICE, "idempotency_key": "fund-spender"}
            async with http.post(f"{a.url}/api/wallets/spender/credit", json=body) as r:
                assert r.status == 201, await r.text()

        sends = [sockets[i % len(sockets)].call("gift:send", {"gift": "coffee", "key": f"g{i}"}) for i in range(300)]
        acks = await asyncio.gather(*sends)
        accepted = [ack for ack in acks if ack["ok"]]
        refused = [ack["error"]["code"] for ack in acks if not ack["ok"]]
        assert len(accepted) == 100, f"{len(accepted)} accepted; refusals: {set(refused)}"
        assert set(refused) == {"insufficient_funds"}
        assert sorted(ack["balance"] for ack in accepted) == [PRICE * i for i in range(100)], "each spent once"

        for url in (a.url, b.url):
            assert (await wallet(url, "spender"))["balance"] == 0
            assert (await wallet(url, "teacher"))["earnings"] == 100 * PRICE * 70 // 100
        conn = await asyncpg.connect(pg_url)
        try:
            platform = await conn.fetchval("SELECT balance FROM ledger_accounts WHERE id = 'platform:revenue'")
            total = await conn.fetchval("SELECT SUM(balance) FROM ledger_accounts")
            transfers = await conn.fetchval("SELECT COUNT(*) FROM ledger_transfers WHERE kind = 'gift'")
        finally:
            await conn.close()
        assert platform == 100 * PRICE * 30 // 100
        assert total == 0, "no coin created or lost"
        assert transfers == 200, "two linked transfers per accepted gift, none for the refused ones"

        def announced() -> list[str]:
            """Gifts in the ``money`` events the teacher (staff: every event in full) received."""
            return [g["data"]["key"] for e in teacher.events if e["type"] == "money" for g in e["data"]["events"]]

        await wait_until(lambda: len(announced()) >= 100, timeout=15, what="every accepted gift announced")
        assert sorted(announced()) == sorted(ack["key"] for ack in accepted), "each accepted gift exactly once"
    finally:
        for m in (teacher, *sockets):
            await m.close()
