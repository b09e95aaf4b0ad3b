"""The ledger's data types: an operation to apply (:class:`Plan`) and what applying it returned."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.sql.expression import Executable

from rooms.errors import RoomError


@dataclass(frozen=True)
class Leg:
    """One transfer of an operation."""

    debit: str
    credit: str
    amount: int


@dataclass(frozen=True)
class Caps:
    """Spending limits of a wallet, in coins: per operation and per UTC day (``None``: no limit)."""

    per_transfer: int | None = None
    daily: int | None = None


@dataclass
class Plan:
    """An operation to apply. Exactly one of ``legs``, ``hold_close`` or ``reverse_of`` says what moves:

    - ``legs``: these transfers (``hold_open`` also records a hold over them);
    - ``hold_close``: (hold id, captured | voided | expired, where a capture goes as (account, weight));
    - ``reverse_of``: the idempotency key of an operation whose transfers are all reversed.
    """

    key: str
    kind: str
    body: dict[str, Any]
    actor: str
    actor_name: str | None = None
    room_id: str | None = None
    legs: list[Leg] = field(default_factory=list)
    #: Whose spending this is (counts against their caps), if any.
    spender: str | None = None
    hold_open: dict[str, Any] | None = None
    hold_close: tuple[str, str, list[tuple[str, int]]] | None = None
    reverse_of: str | None = None
    reason: str | None = None
    #: Room events announcing the operation; ``{op}`` in a value is replaced by the result.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Returned to the caller (and on replays), with the transfers' ids and the time.
    result: dict[str, Any] = field(default_factory=dict)
    #: SQL statements that must each change exactly one row, in the same transaction, or the operation
    #: is refused with the error beside it (an order's seat, a coupon claim, a refund's ceiling).
    guards: list[tuple[Executable, RoomError]] = field(default_factory=list)
    #: SQL statements run in the same transaction when the operation is accepted (the order row, the
    #: entitlement, host webhooks).
    effects: list[Executable] = field(default_factory=list)

    def body_hash(self) -> str:
        """sha256 of the body as canonical JSON (sorted keys, no spaces, non-ASCII escaped as ``\\uXXXX``)."""
        body = {"kind": self.kind, **self.body}
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        if not canonical.isascii() or b"\x7f" in canonical:
            # orjson writes DEL and non-ASCII as they are; json (which made the hashes stored before) escapes them.
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canonical).hexdigest()


@dataclass
class Outcome:
    """What :meth:`Ledger.submit` returns: the operation's result, and whether it was a replay."""

    result: dict[str, Any]
    replayed: bool = False


def to_json(value: Any) -> str:
    """JSON text of a stored result or event list."""
    return orjson.dumps(value).decode()
