"""A Hypothesis state machine drives the ledger through top-ups, gifts, tips, holds (capture, void,
expire), reversals and replays of idempotency keys, on SQLite and on PostgreSQL. After every step: the
sum over all accounts is zero, no balance but the outside world's is negative, every wallet holds what a
simple model of the steps says, and a replay or a refusal changed nothing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule
from sqlalchemy import func, select

from gifting import accounts as acct
from gifting import operations as ops
from gifting import tables as t
from gifting.ledger import Ledger
from gifting.plans import Caps, Plan
from live.config import normalize_database_url
from live.db import create_engine, migrate
from rooms.engine import now_ms
from rooms.errors import RoomError
from tests.support import create_pg_database, drop_pg_database

T = TypeVar("T")
USERS = ("ana", "ben", "cy")
TEACHER = "tom"
coins = st.integers(min_value=1, max_value=500)


class LedgerMachine(RuleBasedStateMachine):
    """The model: what each wallet and each held account should hold, and the operations done."""

    database_url: str = ""
    done = Bundle("done")  # (key, plan) of accepted operations
    open_holds = Bundle("open_holds")  # (hold id, user, coins, expired)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db = create_engine(self.database_url)
        self.ledger = Ledger(self.db, Caps())
        self.keys = itertools.count()
        self.wallets = dict.fromkeys(USERS, 0)
        self.held = dict.fromkeys(USERS, 0)
        self.paid_out = 0  # to the teacher and the platform
        self.reversed: set[str] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        async def reset() -> None:
            await self.ledger.close()  # its writer thread too
            async with self.db.begin() as conn:
                for table in reversed(t.metadata.sorted_tables):
                    await conn.execute(table.delete())
            await self.db.dispose()

        self.run(reset())
        self.loop.close()

    def key(self) -> str:
        return f"k{next(self.keys)}"

    def submit(self, plan: Plan) -> dict[str, Any] | RoomError:
        before = self.run(self.snapshot())
        try:
            return self.run(self.ledger.submit(plan)).result
        except RoomError as refused:
            assert self.run(self.snapshot()) == before, f"refused ({refused.code}) but something was written"
            return refused

    async def snapshot(self) -> tuple[Any, ...]:
        async with self.db.connect() as conn:
            balances = (await conn.execute(select(t.accounts.c.id, t.accounts.c.balance).order_by("id"))).all()
            transfers = (await conn.execute(select(func.count()).select_from(t.transfers))).scalar()
            holds = (await conn.execute(select(t.holds.c.id, t.holds.c.status).order_by("id"))).all()
        return tuple(balances), transfers, tuple(holds)

    @initialize()
    def fresh(self) -> None:
        assert self.run(self.ledger.total()) == 0

    @rule(target=done, user=st.sampled_from(USERS), amount=coins)
    def top_up(self, user: str, amount: int) -> Any:
        plan = ops.topup(self.key(), user, amount, "sandbox", actor="host")
        assert not isinstance(self.submit(plan), RoomError)
        self.wallets[user] += amount
        return (plan.key, plan)

    @rule(target=done, user=st.sampled_from(USERS), amount=coins, kind=st.sampled_from(["gift", "tip"]))
    def pay_teacher(self, user: str, amount: int, kind: str) -> Any:
        plan = ops.payment(self.key(), kind, user, TEACHER, amount, "room-1")
        outcome = self.submit(plan)
        if amount > self.wallets[user]:
            assert isinstance(outcome, RoomError) and outcome.code == "insufficient_funds"
            return (None, None)
        assert not isinstance(outcome, RoomError), outcome
        self.wallets[user] -= amount
        self.paid_out += amount
        return (plan.key, plan)

    @rule(target=open_holds, user=st.sampled_from(USERS), amount=coins, expired=st.booleans())
    def hold(self, user: str, amount: int, expired: bool) -> Any:
        hold_id = f"h{next(self.keys)}"
        expires_at = now_ms() + (-1 if expired else 3_600_000)
        outcome = self.submit(ops.hold(self.key(), hold_id, user, amount, expires_at, "room-1", "q1"))
        if amount > self.wallets[user]:
            assert isinstance(outcome, RoomError) and outcome.code == "insufficient_funds"
            return (None, user, 0, expired)
        assert not isinstance(outcome, RoomError), outcome
        self.wallets[user] -= amount
        self.held[user] += amount
        return (hold_id, user, amount, expired)

    @rule(hold=consumes(open_holds), how=st.sampled_from(["capture", "void", "expire"]))
    def close_hold(self, hold: tuple[str | None, str, int, bool], how: str) -> None:
        hold_id, user, amount, expired = hold
        if hold_id is None:
            return
        if how == "capture":
            plan = ops.capture(self.key(), hold_id, TEACHER, actor=TEACHER)
        else:
            plan = ops.release(self.key(), hold_id, actor=TEACHER, expired=how == "expire")
        outcome = self.submit(plan)
        if how == "expire" and not expired:
            assert isinstance(outcome, RoomError) and outcome.code == "invalid"
            return
        assert not isinstance(outcome, RoomError), outcome
        self.held[user] -= amount
        if how == "capture":
            self.paid_out += amount
        else:
            self.wallets[user] += amount
        again = self.submit(ops.release(self.key(), hold_id, actor=TEACHER))
        assert isinstance(again, RoomError) and again.code == "hold_closed", "a hold closes once"

    @rule(op=done)
    def reverse(self, op: tuple[str | None, Plan | None]) -> None:
        key, plan = op
        if key is None or plan is None:
            return
        outcome = self.submit(ops.reversal(self.key(), key, actor="admin", reason="chargeback"))
        if key in self.reversed:
            assert isinstance(outcome, RoomError) and outcome.code == "already_reversed"
            return
        # Reversing takes the coins back from wherever they went; refused if they are spent already.
        if plan.kind == "topup":
            user, amount = plan.body["user"], plan.body["coins"]
            if amount > self.wallets[user]:
                assert isinstance(outcome, RoomError) and outcome.code == "insufficient_funds"
                return
            self.wallets[user] -= amount
        else:
            assert not isinstance(outcome, RoomError), outcome  # the teacher never pays out here
            self.wallets[plan.body["payer"]] += plan.body["coins"]
            self.paid_out -= plan.body["coins"]
        assert not isinstance(outcome, RoomError), outcome
        self.reversed.add(key)

    @rule(op=done, same=st.booleans())
    def replay(self, op: tuple[str | None, Plan | None], same: bool) -> None:
        key, plan = op
        if key is None or plan is None:
            return
        if same:
            first = self.run(self.ledger.submit(plan))
            before = self.run(self.snapshot())
            again = self.run(self.ledger.submit(plan))
            assert again.replayed and again.result == first.result
            assert self.run(self.snapshot()) == before, "a replay changed something"
        else:
            other = Plan(**{**plan.__dict__, "body": {**plan.body, "coins": plan.body.get("coins", 0) + 1}})
            outcome = self.submit(other)
            assert isinstance(outcome, RoomError) and outcome.code == "idempotency_mismatch"

    @invariant()
    def money_is_neither_created_nor_lost(self) -> None:
        assert self.run(self.ledger.total()) == 0

    @invariant()
    def balances_match_the_model_and_none_is_negative(self) -> None:
        async def read() -> dict[str, int]:
            async with self.db.connect() as conn:
                rows = await conn.execute(select(t.accounts.c.id, t.accounts.c.balance))
                return {r.id: int(r.balance) for r in rows}

        balances = read_all = self.run(read())
        for account_id, balance in read_all.items():
            assert balance >= 0 or acct.kind_of(account_id) == "world", (account_id, balance)
        for user in USERS:
            assert balances.get(acct.wallet(user), 0) == self.wallets[user], user
            assert balances.get(acct.held(user), 0) == self.held[user], user
        assert balances.get(acct.earnings(TEACHER), 0) + balances.get(acct.PLATFORM, 0) == self.paid_out


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = normalize_database_url(f"sqlite:///{tmp_path / 'ledger.db'}")
        asyncio.run(migrate(url))
        yield url
        return
    raw = asyncio.run(create_pg_database())
    url = normalize_database_url(raw)
    asyncio.run(migrate(url))
    yield url
    asyncio.run(drop_pg_database(raw))


def test_ledger_state_machine(database_url: str) -> None:
    LedgerMachine.database_url = database_url
    runner = LedgerMachine.TestCase
    runner.settings = settings(
        max_examples=25,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    runner().runTest()


async def test_a_batch_that_fails_in_the_database_is_applied_one_by_one(tmp_path: Path) -> None:
    """Two holds with the same id in one batch pass the checks but not the database's primary key: the
    batch is retried operation by operation, so only the one at fault is refused (``conflict``)."""
    url = normalize_database_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    await migrate(url)
    db = create_engine(url)
    ledger = Ledger(db, Caps())
    try:
        await ledger.submit(ops.topup("fund", "ana", 100, "sandbox", actor="host"))
        expires = now_ms() + 60_000
        first, second, gift = await asyncio.gather(
            ledger.submit(ops.hold("h-a", "same-hold", "ana", 30, expires, "room-1", "q")),
            ledger.submit(ops.hold("h-b", "same-hold", "ana", 20, expires, "room-1", "q")),
            ledger.submit(ops.payment("g", "gift", "ana", TEACHER, 10, "room-1")),
            return_exceptions=True,
        )
        assert not isinstance(first, BaseException) and not isinstance(gift, BaseException)
        assert isinstance(second, RoomError) and second.code == "conflict"
        assert await ledger.balance(acct.wallet("ana")) == 60
        assert await ledger.balance(acct.held("ana")) == 30
        assert await ledger.total() == 0
    finally:
        await ledger.close()
        await db.dispose()
