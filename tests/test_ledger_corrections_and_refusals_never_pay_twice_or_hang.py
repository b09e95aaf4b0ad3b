"""Corner cases of the ledger's group commit, on SQLite and PostgreSQL: two reversals of one gift that
land in one batch reverse it once; only gifts, tips, paid messages and top-ups are reversed (an order is
refunded, a hold is voided); a submitter that gave up (cancelled) while its plan was being refused leaves
no other submitter of its batch waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from gifting import accounts as acct
from gifting import operations as ops
from gifting import tables as t
from gifting.ledger import Ledger
from gifting.plans import Caps, Outcome
from live.config import normalize_database_url
from live.db import create_engine, migrate
from rooms.engine import now_ms
from rooms.errors import RoomError

TEACHER = "tom"


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    url = normalize_database_url(db_url)
    await migrate(url)
    db = create_engine(url)
    led = Ledger(db, Caps())
    yield led
    await led.close()
    await db.dispose()


async def test_two_reversals_of_one_gift_in_one_batch_reverse_it_once(ledger: Ledger) -> None:
    await ledger.submit(ops.topup("fund-a", "ana", 1000, "sandbox", actor="host"))
    await ledger.submit(ops.topup("fund-b", "ben", 1000, "sandbox", actor="host"))
    await ledger.submit(ops.payment("g-0", "gift", "ben", TEACHER, 500, "room-1"))  # earnings to take back from
    await ledger.submit(ops.payment("g-1", "gift", "ana", TEACHER, 100, "room-1"))
    first, second = await asyncio.gather(
        ledger.submit(ops.reversal("rev-a", "g-1", "admin", "chargeback")),
        ledger.submit(ops.reversal("rev-b", "g-1", "admin", "clicked twice")),
        return_exceptions=True,
    )
    assert isinstance(first, Outcome)
    assert isinstance(second, RoomError) and second.code == "already_reversed"
    assert await ledger.balance(acct.wallet("ana")) == 1000
    assert await ledger.total() == 0


async def test_only_gifts_tips_messages_and_top_ups_are_reversed(ledger: Ledger) -> None:
    await ledger.submit(ops.topup("fund-a", "ana", 100, "sandbox", actor="host"))
    await ledger.submit(ops.hold("h-1", "hold-1", "ana", 30, now_ms() + 60_000, "room-1", "question"))
    refused = await asyncio.gather(ledger.submit(ops.reversal("rev-h", "h-1", "admin", "no")), return_exceptions=True)
    assert isinstance(refused[0], RoomError) and refused[0].code == "not_reversible"
    assert await ledger.balance(acct.held("ana")) == 30
    await ledger.submit(ops.topup("fund-b", "ana", 50, "sandbox", actor="host"))
    reversed_topup = await ledger.submit(ops.reversal("rev-t", "fund-b", "admin", "credited in error"))
    assert not reversed_topup.replayed
    assert await ledger.balance(acct.wallet("ana")) == 70 and await ledger.balance(acct.held("ana")) == 30


async def test_a_cancelled_submitter_refused_in_a_batch_strands_nobody(ledger: Ledger) -> None:
    await ledger.submit(ops.topup("fund-a", "ana", 1000, "sandbox", actor="host"))
    await ledger.submit(ops.topup("fund-b", "ben", 1000, "sandbox", actor="host"))
    a = t.accounts
    doomed = ops.payment("p-a", "tip", "ana", TEACHER, 10, "room-1")
    # Its first guard changes a row, its second refuses: the batch is applied again one plan at a time.
    doomed.guards = [
        (update(a).where(a.c.id == acct.wallet("ana")).values(balance=a.c.balance), RoomError("x", "first")),
        (update(a).where(a.c.id == "no-such-account").values(balance=0), RoomError("already_owned", "second")),
    ]
    gave_up = asyncio.create_task(ledger.submit(doomed))
    others = [
        asyncio.create_task(ledger.submit(ops.payment(f"p-{i}", "tip", "ben", TEACHER, 10 + i, "room-1")))
        for i in range(3)
    ]
    await asyncio.sleep(0)  # all queued: the writer has taken them as one batch
    gave_up.cancel()
    done, pending = await asyncio.wait(others, timeout=10)
    assert not pending, "every other submitter of the batch gets its answer"
    assert all(isinstance(task.result(), Outcome) for task in done)
    assert await ledger.balance(acct.wallet("ben")) == 1000 - (10 + 11 + 12)
    assert await ledger.total() == 0
