"""The room and studio pages in headless Chromium against the real server: chat, presence, escaping."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser_support import Watched, open_room
from tests.support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

XSS = "<img src=x onerror=alert(1)>"


async def say(who: Watched, text: str) -> None:
    await who.page.get_by_test_id("chat-input").fill(text)
    await who.page.get_by_test_id("chat-send").click()
    await expect(who.page.get_by_test_id("chat-input")).to_have_value("")


async def test_chat_presence_and_plain_text(page_server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(page_server, browser, "room-chat")

    sent = []
    for author, text in ((student, "Hello from the student"), (teacher, "Welcome, Sam"), (student, XSS)):
        await say(author, text)
        sent.append(text)
        for who in (teacher, student):
            await expect(who.page.get_by_test_id("chat-text")).to_have_text(sent)
    await expect(teacher.page.get_by_test_id("chat-list")).to_contain_text("Student Sam")

    for who in (teacher, student):
        await expect(who.page.get_by_test_id("head-count")).to_have_text("2")
        await expect(who.page.get_by_test_id("member")).to_have_count(2)
        await expect(who.page.get_by_test_id("chat-input")).to_have_attribute("maxlength", "500")
        assert await who.page.locator("#chat-list img").count() == 0
    await teacher.page.wait_for_timeout(300)  # time for a failed image load to run onerror
    for who in (teacher, student):
        assert who.dialogs == []
        assert who.errors == []


async def test_recovers_missed_messages_after_reconnect(page_server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(page_server, browser, "room-recover")
    await say(teacher, "before")
    await expect(student.page.get_by_test_id("chat-text")).to_have_text(["before"])

    await student.page.evaluate("window.roomClient.socket.disconnect()")
    await expect(student.page.get_by_test_id("conn-state")).not_to_have_attribute("data-state", "live")
    await say(teacher, "missed one")
    await say(teacher, "missed two")
    frames: list[str | bytes] = []  # the reconnection opens a new websocket
    student.page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(frame)))
    await student.page.evaluate("window.roomClient.socket.connect()")

    await expect(student.page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live")
    await expect(student.page.get_by_test_id("chat-text")).to_have_text(["before", "missed one", "missed two"])
    assert any('"recovered":true' in str(frame) for frame in frames), "join with since was not recovered"
    assert student.errors == []


async def test_rate_limit_error_is_shown(page_server: ServerProcess, browser: Browser) -> None:
    _, student = await open_room(page_server, browser, "room-limits")
    page = student.page
    text, send, error = (
        page.get_by_test_id("chat-input"),
        page.get_by_test_id("chat-send"),
        page.get_by_test_id("chat-error"),
    )
    for n in range(40):  # students may send 20 messages per 30 s
        await text.fill(f"message {n}")
        await send.click()
        await expect(send).to_be_enabled()  # disabled until the server answers
        if await error.text_content():
            break
    await expect(error).to_contain_text("Try again in")
    await expect(text).to_have_value(f"message {n}")  # kept, to send again later
    assert student.errors == []
