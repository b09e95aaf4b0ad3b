"""Ledger account ids. An id names its kind and owner: ``wallet:ana``, ``held:ana``, ``earnings:tom``,
``platform:revenue``, ``world:stripe``."""

from __future__ import annotations

PLATFORM = "platform:revenue"

#: Kinds whose balance may not go below zero: everyone's but the outside world's.
FLOORED = frozenset({"wallet", "held", "earnings", "platform"})
KINDS = FLOORED | {"world"}


def wallet(user_id: str) -> str:
    """Coins a user can spend."""
    return f"wallet:{user_id}"


def held(user_id: str) -> str:
    """Coins of a user set aside by open holds (paid questions)."""
    return f"held:{user_id}"


def earnings(user_id: str) -> str:
    """What a teacher earned from gifts, tips and answered paid questions."""
    return f"earnings:{user_id}"


def world(source: str) -> str:
    """The outside world as seen through one payment source (``stripe``, ``sandbox``, ``host``): it
    goes negative by what it paid in, so the sum over all accounts stays zero."""
    return f"world:{source}"


def kind_of(account_id: str) -> str:
    return account_id.split(":", 1)[0]


def owner_of(account_id: str) -> str | None:
    kind, _, owner = account_id.partition(":")
    return owner if kind in ("wallet", "held", "earnings") else None


def split(amount: int, shares: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Split ``amount`` by ``shares`` (account, weight), rounding so the parts add up exactly (largest
    remainder; ties go to the earlier share). Parts of zero are left out."""
    total = sum(w for _, w in shares)
    exact = [(acct, amount * w // total, amount * w % total) for acct, w in shares]
    left = amount - sum(part for _, part, _ in exact)
    order = sorted(range(len(exact)), key=lambda i: (-exact[i][2], i))
    parts = [part for _, part, _ in exact]
    for i in order[:left]:
        parts[i] += 1
    return [(exact[i][0], parts[i]) for i in range(len(exact)) if parts[i] > 0]
