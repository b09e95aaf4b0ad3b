"""Plans for the ledger's operations: top-ups, gifts, tips, holds and reversals (pure functions)."""

from __future__ import annotations

from typing import Any

from gifting import accounts as acct
from gifting.plans import Leg, Plan
from rooms.errors import RoomError

#: Default share of a gift or tip that goes to the teacher, in basis points (the rest to the platform).
TEACHER_SHARE_BP = 7000


def _positive(amount: Any) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0 or amount >= 2**53:
        raise RoomError("bad_amount", "amounts are positive whole numbers of coins")
    return amount


def topup(key: str, user_id: str, coins: int, source: str, actor: str, **body: Any) -> Plan:
    """Coins bought outside (a payment provider, or the host): the world's account pays the wallet."""
    coins = _positive(coins)
    return Plan(
        key=key,
        kind="topup",
        body={"user": user_id, "coins": coins, "source": source, **body},
        actor=actor,
        legs=[Leg(acct.world(source), acct.wallet(user_id), coins)],
        result={"user": user_id, "coins": coins},
    )


def payment(
    key: str,
    kind: str,
    payer: str,
    teacher: str,
    coins: int,
    room_id: str | None,
    *,
    teacher_share_bp: int = TEACHER_SHARE_BP,
    body: dict[str, Any] | None = None,
    events: list[tuple[str, dict[str, Any]]] | None = None,
    payer_name: str | None = None,
) -> Plan:
    """A gift, tip or paid message: the payer's wallet pays the teacher and the platform, split."""
    coins = _positive(coins)
    if payer == teacher:
        raise RoomError("invalid", "you cannot pay yourself")
    shares = [(acct.earnings(teacher), teacher_share_bp), (acct.PLATFORM, 10_000 - teacher_share_bp)]
    legs = [Leg(acct.wallet(payer), to, amount) for to, amount in acct.split(coins, shares)]
    return Plan(
        key=key,
        kind=kind,
        body={"payer": payer, "teacher": teacher, "coins": coins, "room": room_id, **(body or {})},
        actor=payer,
        actor_name=payer_name,
        room_id=room_id,
        legs=legs,
        spender=payer,
        events=events or [],
        result={"coins": coins, "teacher_coins": sum(leg.amount for leg in legs if leg.credit != acct.PLATFORM)},
    )


def hold(
    key: str, hold_id: str, user_id: str, coins: int, expires_at: int, room_id: str | None, purpose: str | None
) -> Plan:
    """Set coins aside (a paid question): from the wallet to the user's held account."""
    coins = _positive(coins)
    return Plan(
        key=key,
        kind="hold",
        body={"hold": hold_id, "user": user_id, "coins": coins, "expires_at": expires_at, "purpose": purpose},
        actor=user_id,
        room_id=room_id,
        legs=[Leg(acct.wallet(user_id), acct.held(user_id), coins)],
        spender=user_id,
        hold_open={
            "id": hold_id,
            "owner": user_id,
            "amount": coins,
            "room_id": room_id,
            "purpose": purpose,
            "expires_at": expires_at,
        },
        result={"hold": hold_id, "coins": coins},
    )


def capture(key: str, hold_id: str, teacher: str, actor: str, teacher_share_bp: int = TEACHER_SHARE_BP) -> Plan:
    """The held coins go to the teacher and the platform (the paid question was answered)."""
    shares = [(acct.earnings(teacher), teacher_share_bp), (acct.PLATFORM, 10_000 - teacher_share_bp)]
    return Plan(
        key=key,
        kind="capture",
        body={"hold": hold_id, "teacher": teacher},
        actor=actor,
        hold_close=(hold_id, "captured", shares),
        result={"hold": hold_id, "status": "captured"},
    )


def release(key: str, hold_id: str, actor: str, expired: bool = False) -> Plan:
    """The held coins go back to the wallet: voided (dismissed, lesson over) or expired."""
    status = "expired" if expired else "voided"
    return Plan(
        key=key,
        kind="expire" if expired else "void",
        body={"hold": hold_id},
        actor=actor,
        hold_close=(hold_id, status, []),
        result={"hold": hold_id, "status": status},
    )


def reversal(key: str, op_key: str, actor: str, reason: str) -> Plan:
    """An admin correction: every transfer of operation ``op_key`` is reversed, with the reason audited."""
    reason = reason.strip()
    if not reason:
        raise RoomError("invalid", "a reversal needs a reason")
    return Plan(
        key=key,
        kind="reversal",
        body={"reverses": op_key, "reason": reason},
        actor=actor,
        reverse_of=op_key,
        reason=reason,
        result={"reversed": op_key},
    )
