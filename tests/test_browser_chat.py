"""The room and studio pages in headless Chromium against the real server: chat, presence, escaping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE, Watched, mint_links, open_page, serve
from tests.support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(tmp_path_factory.mktemp("live")) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def open_room(server: ServerProcess, browser: Browser, room: str) -> tuple[Watched, Watched]:
    """The teacher's studio first (a staff token creates the room), then a student's page on a phone."""
    teacher_url, student_url = mint_links(server, room, ("t1", "Teacher", "teacher"), ("s1", "Student Sam", "student"))
    assert "/studio#token=" in teacher_url and "/room#token=" in student_url
    teacher = await open_page(browser, teacher_url, **DESKTOP)
    await expect(teacher.page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live")
    student = await open_page(browser, student_url, **PHONE)
    await expect(student.page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live")
    return teacher, student


async def say(who: Watched, text: str) -> None:
    await who.page.get_by_test_id("chat-input").fill(text)
    await who.page.get_by_test_id("chat-send").click()
    await expect(who.page.get_by_test_id("chat-input")).to_have_value("")


async def test_chat_presence_and_plain_text(server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(server, browser, "room-chat")

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


async def test_recovers_missed_messages_after_reconnect(server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(server, browser, "room-recover")
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


async def test_rate_limit_error_is_shown(server: ServerProcess, browser: Browser) -> None:
    _, student = await open_room(server, browser, "room-limits")
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
