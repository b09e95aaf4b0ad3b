"""What a student pays for a course (pure functions). The order, as docs/protocol.md ("Sales") states it:

1. The base price is the lowest that applies of: the list price; the member price (members only); the
   flash-sale price (while the sale is open).
2. The coupon, if any, comes off the base price: a fixed amount; a percentage (the discount rounded down);
   or spend X save Y (only when the base price reaches X).
3. The final price is never below zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooms.errors import RoomError


@dataclass(frozen=True)
class Quote:
    """A price worked out: the list price, where the base came from, the coupon's discount and the total."""

    list_price: int
    base: int
    base_source: str
    coupon_off: int
    amount: int

    @property
    def discount(self) -> int:
        return self.list_price - self.amount

    def to_dict(self) -> dict[str, Any]:
        return {
            "list_price_minor": self.list_price,
            "base_minor": self.base,
            "base_source": self.base_source,
            "coupon_off_minor": self.coupon_off,
            "amount_minor": self.amount,
        }


def coupon_off(coupon: dict[str, Any], base: int) -> int:
    """What ``coupon`` takes off ``base`` (a coupon row); refuses a spend-X-save-Y below X."""
    kind = coupon["kind"]
    if kind == "fixed":
        return min(base, int(coupon["amount_off"]))
    if kind == "percent":
        return base * int(coupon["percent_off"]) // 100
    if base < int(coupon["min_spend"]):
        raise RoomError(
            "coupon_not_applicable",
            f"this coupon needs a price of at least {coupon['min_spend']}",
            min_spend=coupon["min_spend"],
        )
    return min(base, int(coupon["amount_off"]))


def quote(
    list_price: int,
    *,
    member_price: int | None = None,
    is_member: bool = False,
    sale_price: int | None = None,
    coupon: dict[str, Any] | None = None,
) -> Quote:
    candidates = [(list_price, "list")]
    if is_member and member_price is not None:
        candidates.append((member_price, "member"))
    if sale_price is not None:
        candidates.append((sale_price, "sale"))
    # min() keeps the first of equal prices: list, then member, then sale.
    base, source = min(candidates, key=lambda c: c[0])
    off = coupon_off(coupon, base) if coupon is not None else 0
    return Quote(list_price, base, source, off, max(0, base - off))
