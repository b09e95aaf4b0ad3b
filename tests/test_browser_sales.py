"""Course sales in the pages, in headless Chromium: the teacher pins a course and starts a flash sale, the
student page counts down, claims a live coupon, buys with it from the wallet when the sale opens and shows
the purchase; the studio shows the order; a refund gives the coins back."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser_support import open_room
from tests.sales_support import admin, course_in_room, fund
from tests.support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def countdown_s(page: Page) -> int:
    text = await page.get_by_test_id("card-countdown").inner_text()
    minutes, seconds = re.fullmatch(r"(\d+):(\d\d)", text.strip()).groups()  # type: ignore[union-attr]
    return int(minutes) * 60 + int(seconds)


async def test_flash_sale_countdown_coupon_and_purchase(page_server: ServerProcess, browser: Browser) -> None:
    url = page_server.url
    await fund(url, ["s1"], 2000)
    teacher, student = await open_room(page_server, browser, "room-sales")
    t, s = teacher.page, student.page
    await expect(s.get_by_test_id("card-empty")).to_be_visible()
    await course_in_room(url, "room-sales", "py-basics", price_minor=2000, title="Python basics", seats=None)

    await t.get_by_test_id("go-live").click()
    await expect(s.get_by_test_id("room-status")).to_have_attribute("data-status", "live")
    await t.get_by_test_id("courses-refresh").click()
    course = t.get_by_test_id("course").filter(has_text="Python basics")
    await course.get_by_test_id("course-pin").click()
    await expect(s.get_by_test_id("card-title")).to_have_text("Python basics")
    await expect(s.get_by_test_id("card-price")).to_have_text(re.compile(r"\$20\.00 · 2000 coins"))
    await expect(s.get_by_test_id("card-buy")).to_be_enabled()

    await t.get_by_test_id("sale-price").fill("15")
    await t.get_by_test_id("sale-countdown").fill("10")
    await t.get_by_test_id("sale-duration").fill("5")
    await t.get_by_test_id("sale-seats").fill("10")
    await t.get_by_test_id("sale-start").click()
    await expect(s.get_by_test_id("card-sale")).to_have_attribute("data-state", "countdown")
    await expect(s.get_by_test_id("card-buy")).to_be_disabled()
    await expect(s.get_by_test_id("card-seats")).to_have_text("10 of 10 seats left")
    first = await countdown_s(s)
    assert 5 <= first <= 10, first
    await asyncio.sleep(1.6)
    assert await countdown_s(s) < first  # it counts down by the server's clock

    await t.get_by_test_id("coupon-title").fill("Live bonus")
    await t.get_by_test_id("coupon-amount").fill("3")
    await t.get_by_test_id("coupon-quota").fill("5")
    await t.get_by_test_id("coupon-create").click()
    coupon = s.get_by_test_id("coupon").filter(has_text="Live bonus")
    await expect(coupon).to_contain_text("$3.00 off")
    await coupon.get_by_test_id("coupon-claim").click()
    await expect(coupon.get_by_test_id("coupon-claim")).to_have_text("Claimed")
    await expect(coupon).to_contain_text("1/5 claimed")
    await expect(t.get_by_test_id("coupon").filter(has_text="Live bonus")).to_contain_text("1/5 claimed")

    await expect(s.get_by_test_id("card-sale")).to_have_attribute("data-state", "open", timeout=15_000)
    await expect(s.get_by_test_id("card-price")).to_have_text(re.compile(r"\$15\.00 · 1500 coins"))
    await expect(s.get_by_test_id("card-list-price")).to_have_text("$20.00")
    await s.get_by_test_id("card-buy").click()
    await expect(s.get_by_test_id("buy-quote")).to_contain_text("1200 coins")
    await s.get_by_test_id("buy-pay").click()
    await expect(s.get_by_test_id("buy-result")).to_have_text("Please accept the refund policy first.")
    await s.get_by_test_id("buy-accept").check()
    await s.get_by_test_id("buy-pay").click()
    await expect(s.get_by_test_id("buy-result")).to_have_text("Bought Python basics for 1200 coins. It is yours.")
    await s.get_by_test_id("buy-cancel").click()
    await expect(s.get_by_test_id("wallet-balance")).to_have_text("800")
    await expect(s.get_by_test_id("card-owned")).to_be_visible()
    await expect(s.get_by_test_id("card-buy")).to_be_hidden()
    await expect(coupon.get_by_test_id("coupon-claim")).to_have_text("Used")
    await expect(s.get_by_test_id("order-item").first).to_have_attribute("data-status", "paid")
    for page in (s, t):
        await expect(page.get_by_test_id("card-seats")).to_have_text("9 of 10 seats left")

    order = t.get_by_test_id("order-item").first
    await expect(order).to_contain_text("Student Sam · Python basics · $12.00 (paid, wallet)")
    await expect(t.get_by_test_id("orders-summary")).to_have_text("1 paid · $12.00")
    paid = await admin(url, "GET", "/api/orders?room=room-sales", expect=200)
    assert [(o["buyer"], o["status"], o["amount_minor"]) for o in paid["orders"]] == [("s1", "paid", 1200)]

    # The student asks for a refund within the policy: the coins go back to the wallet.
    await s.get_by_test_id("order-refund").click()
    await s.get_by_test_id("ask-ok").click()
    await expect(s.get_by_test_id("order-item").first).to_have_attribute("data-status", "refunded")
    await expect(s.get_by_test_id("wallet-balance")).to_have_text("2000")
    await expect(order).to_have_attribute("data-status", "refunded")
    await expect(s.get_by_test_id("card-buy")).to_be_visible()
    for watched in (teacher, student):
        assert watched.dialogs == [] and watched.errors == [], (watched.dialogs, watched.errors)


async def test_card_purchase_is_paid_by_the_checkout_webhook(page_server: ServerProcess, browser: Browser) -> None:
    url = page_server.url
    teacher, student = await open_room(page_server, browser, "room-card")
    t, s = teacher.page, student.page
    await course_in_room(url, "room-card", "design-101", price_minor=4900, title="Design 101")
    await t.get_by_test_id("courses-refresh").click()
    await t.get_by_test_id("course").filter(has_text="Design 101").get_by_test_id("course-pin").click()
    await expect(s.get_by_test_id("card-price")).to_have_text(re.compile(r"\$49\.00"))

    await expect(s.get_by_test_id("wallet-balance")).to_have_text(re.compile(r"^\d+$"))
    balance = await s.get_by_test_id("wallet-balance").inner_text()
    await s.get_by_test_id("card-buy").click()
    await expect(s.get_by_test_id("buy-coupon")).to_have_value("")  # no coupon claimed
    await s.get_by_test_id("buy-method").select_option("checkout")
    await s.get_by_test_id("buy-accept").check()
    async with s.context.expect_page() as opened:
        await s.get_by_test_id("buy-pay").click()
    checkout = await opened.value
    await expect(checkout.get_by_test_id("sandbox-checkout")).to_contain_text("A course order for 49.00 USD")
    await expect(s.get_by_test_id("buy-result")).to_have_attribute("data-state", "pending")
    await expect(s.get_by_test_id("order-item").first).to_have_attribute("data-status", "pending")
    await expect(t.get_by_test_id("order-item").first).to_contain_text("waiting for payment, card")

    await checkout.get_by_test_id("sandbox-pay").click()
    await expect(checkout.get_by_test_id("sandbox-done")).to_contain_text("Order paid")
    await checkout.close()
    # Paid only by the verified webhook; the pages learn it from `sales:order`.
    await expect(s.get_by_test_id("order-item").first).to_have_attribute("data-status", "paid")
    await expect(s.get_by_test_id("card-owned")).to_be_visible()
    await expect(t.get_by_test_id("order-item").first).to_contain_text("Student Sam · Design 101 · $49.00 (paid, card)")
    await expect(s.get_by_test_id("wallet-balance")).to_have_text(balance)  # the card paid, not the wallet
    for watched in (teacher, student):
        assert watched.dialogs == [] and watched.errors == [], (watched.dialogs, watched.errors)
