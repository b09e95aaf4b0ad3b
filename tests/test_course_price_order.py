"""The documented price order (docs/protocol.md "Sales"): the lowest of list, member and sale price, then
the coupon, never below zero."""

from __future__ import annotations

import pytest

from gifting.pricing import quote
from rooms.errors import RoomError


def coupon(kind: str, **fields: int) -> dict[str, int | str | None]:
    return {"kind": kind, "amount_off": None, "percent_off": None, "min_spend": None, **fields}


def test_base_is_the_lowest_price_that_applies() -> None:
    assert quote(1000).to_dict()["base_source"] == "list"
    assert quote(1000, member_price=800).base == 1000, "the member price is for members only"
    assert (
        quote(1000, member_price=800, is_member=True).base,
        quote(1000, member_price=800, is_member=True).base_source,
    ) == (800, "member")
    assert quote(1000, member_price=800, is_member=True, sale_price=500).base_source == "sale"
    assert quote(1000, member_price=400, is_member=True, sale_price=500).base_source == "member"


def test_coupons_come_off_the_base_price() -> None:
    assert quote(1000, sale_price=600, coupon=coupon("fixed", amount_off=100)).amount == 500
    assert quote(999, coupon=coupon("percent", percent_off=10)).amount == 900, "the discount is rounded down"
    assert quote(1000, coupon=coupon("threshold", amount_off=300, min_spend=1000)).amount == 700
    with pytest.raises(RoomError) as refused:
        quote(1000, sale_price=900, coupon=coupon("threshold", amount_off=300, min_spend=1000))
    assert refused.value.code == "coupon_not_applicable"


def test_the_price_never_goes_below_zero() -> None:
    free = quote(300, coupon=coupon("fixed", amount_off=500))
    assert (free.amount, free.coupon_off, free.discount) == (0, 300, 300)
    assert quote(300, coupon=coupon("percent", percent_off=100)).amount == 0
