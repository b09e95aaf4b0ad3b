"""Q&A in the pages, in headless Chromium: a student asks, the teacher approves, pins and answers in the
studio, and the student's page shows it pinned with its answer; votes and anonymity show as they should."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser_support import DESKTOP, mint_links, open_page, open_room
from tests.support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

XSS = "<img src=x onerror=alert(1)> why?"


async def test_student_asks_teacher_approves_pins_and_answers(page_server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(page_server, browser, "room-qa")
    (other_url,) = mint_links(page_server, "room-qa", ("s2", "Other Student", "student"))
    other = await open_page(browser, other_url, **DESKTOP)
    s, t, o = student.page, teacher.page, other.page
    await expect(o.get_by_test_id("conn-state")).to_have_attribute("data-state", "live")

    await s.get_by_test_id("qa-input").fill(XSS)
    await s.get_by_test_id("qa-anonymous").check()
    await s.get_by_test_id("qa-ask").click()
    await expect(s.get_by_test_id("qa-input")).to_have_value("")
    mine = s.get_by_test_id("qa-item")
    await expect(mine).to_have_count(1)
    await expect(mine.get_by_test_id("qa-text")).to_have_text(XSS)
    await expect(mine.get_by_test_id("qa-state")).to_have_text("Awaiting review")

    queued = t.get_by_test_id("qa-item")
    await expect(queued.get_by_test_id("qa-text")).to_have_text(XSS)
    await expect(queued.get_by_test_id("qa-author")).to_have_text("Student Sam")
    await expect(o.get_by_test_id("qa-item")).to_have_count(0)  # pending: not shown to other students

    await queued.get_by_test_id("qa-approve").click()
    await t.get_by_test_id("qa-filter").select_option("live")
    await expect(t.get_by_test_id("qa-item")).to_have_count(1)
    published = o.get_by_test_id("qa-item")
    await expect(published.get_by_test_id("qa-text")).to_have_text(XSS)
    await expect(published.get_by_test_id("qa-author")).to_have_text("Anonymous")

    await published.get_by_test_id("qa-upvote").click()
    await expect(published.get_by_test_id("qa-upvote")).to_contain_text("1")
    await expect(t.get_by_test_id("qa-item").get_by_test_id("qa-upvote")).to_contain_text("1")
    await expect(mine.get_by_test_id("qa-upvote")).to_be_disabled()  # not on your own question

    item = t.get_by_test_id("qa-item")
    await item.get_by_test_id("qa-pin").click()
    await expect(s.get_by_test_id("qa-pinned-text")).to_have_text(XSS)
    await item.get_by_test_id("qa-answer-open").click()
    await t.get_by_test_id("qa-answer-input").fill("Because of Rayleigh scattering.")
    await t.get_by_test_id("qa-answer-send").click()

    for page in (s, o, t):
        await expect(page.get_by_test_id("qa-pinned")).to_be_visible()
        await expect(page.get_by_test_id("qa-pinned-text")).to_have_text(XSS)
        await expect(page.get_by_test_id("qa-pinned-answer")).to_have_text("Answer: Because of Rayleigh scattering.")
    await expect(s.get_by_test_id("qa-item").get_by_test_id("qa-state")).to_have_text("Answered")

    await t.get_by_test_id("qa-unpin").click()
    await expect(s.get_by_test_id("qa-pinned")).to_be_hidden()
    for watched in (teacher, student, other):
        assert watched.dialogs == [] and watched.errors == [], (watched.dialogs, watched.errors)
