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


# In-stream course sales (docs/protocol.md, "Sales")

CourseId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
ObjectId = Annotated[str, StringConstraints(pattern=r"^[a-z]{3,4}_[0-9a-f]{16}$")]
Minor = Annotated[int, Field(ge=0, le=10**12)]


class SalesGetIn(MoneyIn):
    """Payload of ``sales:get``."""


class SalesPinIn(MoneyIn):
    """Payload of ``sales:pin``."""

    course_id: CourseId


class SaleStartIn(MoneyIn):
    """Payload of ``sales:start``: a flash sale of the pinned course."""

    price_minor: Minor
    countdown_s: Annotated[int, Field(ge=10, le=300)]
    duration_s: Annotated[int, Field(ge=10, le=86_400)]
    seats: Annotated[int, Field(ge=1, le=1_000_000)]
    per_student_limit: Annotated[int, Field(ge=1, le=10)] = 1
    starts_at: Annotated[int, Field(ge=0, lt=2**53)] | None = None


class CouponCreateIn(MoneyIn):
    """Payload of ``coupon:create`` (and the body of ``POST /api/rooms/{id}/coupons``)."""

    title: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    kind: Literal["fixed", "percent", "threshold"]
    quota: Annotated[int, Field(ge=1, le=1_000_000)]
    per_student: Annotated[int, Field(ge=1, le=100)] = 1
    amount_off: Minor | None = None
    percent_off: Annotated[int, Field(ge=1, le=100)] | None = None
    min_spend: Minor | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")] | None = None
    course_id: CourseId | None = None


class CouponIdIn(MoneyIn):
    """Payload of ``coupon:claim`` and ``coupon:stop``."""

    id: ObjectId


class BuyIn(MoneyIn):
    """Payload of ``course:buy``."""

    course_id: CourseId
    method: Literal["wallet", "checkout"]
    key: ClientKey
    coupon_id: ObjectId | None = None
    accept_refund_policy: bool = False


class RefundIn(MoneyIn):
    """Payload of ``order:refund`` (students: their own order, in full; staff: any order of the room)."""

    order_id: ObjectId
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    key: ClientKey
    amount_minor: Annotated[int, Field(gt=0, le=10**12)] | None = None


class OrdersListIn(MoneyIn):
    """Payload of ``orders:list``: staff get the room's orders, students their own."""


class CourseIn(MoneyIn):
    """Body of ``POST /api/courses`` (and, every field optional but ``id``, of ``PATCH``)."""

    id: CourseId
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=5000)] = ""
    cover_url: Annotated[str, StringConstraints(pattern=r"^https://", max_length=500)] | None = None
    price_minor: Minor
    member_price_minor: Minor | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
    seats: Annotated[int, Field(ge=1, le=10**7)] | None = None
    teacher_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")] | None = None
    refund_days: Annotated[int, Field(ge=0, le=365)] | None = None
    refund_max_consumed_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    active: bool = True


class CourseUpdateIn(MoneyIn):
    """Body of ``PATCH /api/courses/{id}``: fields left out are unchanged."""

    title: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=5000)] | None = None
    cover_url: Annotated[str, StringConstraints(pattern=r"^https://", max_length=500)] | None = None
    price_minor: Minor | None = None
    member_price_minor: Minor | None = None
    seats: Annotated[int, Field(ge=1, le=10**7)] | None = None
    teacher_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")] | None = None
    refund_days: Annotated[int, Field(ge=0, le=365)] | None = None
    refund_max_consumed_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    active: bool | None = None


class AdminRefundIn(MoneyIn):
    """Body of ``POST /api/orders/{id}/refund``: the whole rest of the order unless ``amount_minor``."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    idempotency_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    amount_minor: Annotated[int, Field(gt=0, le=10**12)] | None = None


class ProgressIn(MoneyIn):
    """Body of ``POST /api/entitlements/{user_id}/{course_id}/progress``: how much the user consumed."""

    consumed_pct: Annotated[int, Field(ge=0, le=100)]
