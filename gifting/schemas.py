"""Wire schemas of the money events that clients send (docs/protocol.md, "Client to server")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: A client-chosen idempotency key: the same key sends once, however often the request is repeated.
ClientKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class MoneyIn(BaseModel):
    """Strict: unknown fields and wrong types are errors, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GiftSendIn(MoneyIn):
    """Payload of ``gift:send``."""

    gift: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    count: int = 1
    key: ClientKey


class TipSendIn(MoneyIn):
    """Payload of ``tip:send``; the amount rules are the ledger's (``bad_amount``)."""

    coins: int
    key: ClientKey
    message: Annotated[str, StringConstraints(max_length=200)] | None = None


class CheckoutIn(MoneyIn):
    """Payload of ``wallet:checkout``: buy a coin pack."""

    pack: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class PaidMessageIn(MoneyIn):
    """Payload of ``message:paid``; the length rule depends on the tier the coins reach."""

    text: Annotated[str, StringConstraints(max_length=2000)]
    coins: int
    key: ClientKey


class WalletGetIn(MoneyIn):
    """Payload of ``wallet:get``."""


class CreditIn(MoneyIn):
    """Body of ``POST /api/wallets/{user_id}/credit``."""

    coins: Annotated[int, Field(gt=0, lt=2**53)]
    idempotency_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]


class LimitsIn(MoneyIn):
    """Payload of ``wallet:limits``: the user's own caps (null: the platform's)."""

    per_transfer: Annotated[int, Field(gt=0)] | None = None
    daily: Annotated[int, Field(gt=0)] | None = None
    hide_on_boards: bool = False


class BoardGetIn(MoneyIn):
    """Payload of ``board:get``: this lesson's board, or the room's over all its lessons."""

    scope: Literal["lesson", "room"] = "lesson"


class ReverseIn(MoneyIn):
    """Body of ``POST /api/ledger/operations/{key}/reverse``."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    idempotency_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
