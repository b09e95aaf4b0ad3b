"""Money in the pages, in headless Chromium: a student tops up through the sandbox checkout, sends a
gift, and the teacher's studio shows it while the student's balance drops by its price."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser_support import open_room
from tests.support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


async def test_top_up_then_gift_reaches_the_teacher(page_server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(page_server, browser, "room-money")
    s, t = student.page, teacher.page
    await expect(s.get_by_test_id("wallet-balance")).to_have_text("0")

    await s.get_by_test_id("topup-pack").select_option("coins-100")
    async with s.context.expect_page() as opened:
        await s.get_by_test_id("topup").click()
    checkout = await opened.value
    await expect(checkout.get_by_test_id("sandbox-checkout")).to_contain_text("100 coins")
    await checkout.get_by_test_id("sandbox-pay").click()
    await expect(checkout.get_by_test_id("sandbox-done")).to_contain_text("Coins added")
    await checkout.close()
    await s.bring_to_front()
    await s.evaluate("window.dispatchEvent(new Event('focus'))")  # headless tabs get no real focus
    await expect(s.get_by_test_id("wallet-balance")).to_have_text("100")

    await s.get_by_test_id("gift-coffee").click()
    await expect(s.get_by_test_id("wallet-balance")).to_have_text("90")
    item = t.get_by_test_id("money-item").first
    await expect(item).to_have_text("Student Sam sent 1 \u00d7 Coffee (10 coins)")
    await expect(t.get_by_test_id("lesson-earnings")).to_have_text("7")
    await expect(s.get_by_test_id("money-item").first).to_contain_text("Coffee")

    await s.get_by_test_id("gift-rocket").click()
    await expect(s.get_by_test_id("money-error")).to_have_text("not enough coins")
    await expect(s.get_by_test_id("wallet-balance")).to_have_text("90")
    for watched in (teacher, student):
        assert watched.dialogs == [] and watched.errors == [], (watched.dialogs, watched.errors)
