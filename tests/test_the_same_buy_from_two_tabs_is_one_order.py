"""One buyer, two tabs, the same ``course:buy`` (same key, same body) at once, ten times: each time one
order, answered to one tab and replayed to the other (docs/protocol.md: "never a second order"), on SQLite
and PostgreSQL. Both land in one ledger batch, where the second is refused by the first's row; its
refusal is answered only once the first is committed, so it finds that order and replays it."""

from __future__ import annotations

import asyncio

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.sales_support import buy, course_in_room, fund
from tests.support import Member, joined, token

ROOM = "same-key"


async def test_the_same_buy_from_two_tabs_is_one_order(start_app: AppFactory, db_url: str) -> None:
    url, _ = await start_app(LIVE_DATABASE_URL=db_url)
    teacher = Member(url, token(ROOM, "tom", Role.TEACHER))
    tabs = [Member(url, token(ROOM, "ana")) for _ in range(2)]
    try:
        await joined(teacher, *tabs)
        await fund(url, ["ana"], 5000)
        answers = []
        for i in range(10):
            await course_in_room(url, ROOM, f"x{i}", 100)
            answers.append(await asyncio.gather(*(tab.call("course:buy", buy(f"x{i}", f"k{i}")) for tab in tabs)))
        for first, second in answers:
            assert first["ok"] and second["ok"], (first, second)
            assert first["order"]["id"] == second["order"]["id"]
            assert sorted([bool(first.get("replayed")), bool(second.get("replayed"))]) == [False, True]
    finally:
        await asyncio.gather(teacher.close(), *(tab.close() for tab in tabs))
