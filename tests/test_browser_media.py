"""Live video in the pages, in headless Chromium with a fake camera and microphone: the teacher goes live
from the studio, a student's page plays it (frames decoded, sound track present), and after the student's
connection drops the page recovers on its own; ending the lesson stops the video."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser_support import open_room
from tests.support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

FRAMES = "() => document.getElementById('lesson').getVideoPlaybackQuality().totalVideoFrames"


async def frames(page: Page) -> int:
    return int(await page.evaluate(FRAMES))


async def poll(page: Page, script: str, check: Callable[[Any], bool], what: str, timeout: float = 20) -> Any:
    """Evaluate ``script`` until ``check`` accepts its value (the pages' CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(script)
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.1)


async def wait_for_frames_to_rise(page: Page, above: int) -> int:
    return int(await poll(page, FRAMES, lambda n: n > above, f"more than {above} decoded frames"))


async def test_teacher_goes_live_and_the_student_page_plays_it(page_server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(page_server, browser, "room-media")
    t, s = teacher.page, student.page

    await expect(t.get_by_test_id("media-state")).to_have_attribute("data-state", "preview")
    await poll(t, "() => document.getElementById('preview').videoWidth", lambda w: w > 0, "the preview")
    await expect(s.get_by_test_id("media-state")).to_have_attribute("data-state", "waiting")

    await t.get_by_test_id("go-live").click()
    await expect(t.get_by_test_id("media-state")).to_have_attribute("data-state", "live", timeout=15_000)
    await expect(s.get_by_test_id("media-state")).to_have_attribute("data-state", "playing", timeout=15_000)
    await poll(s, "() => document.getElementById('lesson').videoWidth", lambda w: w > 0, "a sized video")
    first = await wait_for_frames_to_rise(s, 0)
    await wait_for_frames_to_rise(s, first + 10)  # decoding goes on
    audio = await s.evaluate("() => document.getElementById('lesson').srcObject.getAudioTracks().length")
    assert audio == 1, "the microphone plays with the camera"
    await expect(t.get_by_test_id("viewer-count")).to_have_text("1")

    # The student's connection drops (the socket, and with it the server's viewer); the page recovers.
    await s.evaluate("() => window.roomClient.socket.io.engine.close()")
    await expect(s.get_by_test_id("conn-state")).to_have_attribute("data-state", "live", timeout=15_000)
    before = await frames(s)
    await wait_for_frames_to_rise(s, before + 10)

    # The teacher's page reloads: viewers are fed again without reloading theirs.
    await t.reload()
    await expect(t.get_by_test_id("media-state")).to_have_attribute("data-state", "live", timeout=20_000)
    before = await frames(s)
    await wait_for_frames_to_rise(s, before + 10)

    await t.get_by_test_id("end-room").click()
    await t.get_by_test_id("ask-ok").click()
    await expect(s.get_by_test_id("conn-state")).to_have_attribute("data-state", "ended", timeout=15_000)
    assert not teacher.errors and not student.errors, (teacher.errors, student.errors)


async def test_student_invited_on_stage_is_seen_in_the_studio(page_server: ServerProcess, browser: Browser) -> None:
    teacher, student = await open_room(page_server, browser, "room-stage")
    t, s = teacher.page, student.page
    await t.get_by_test_id("go-live").click()
    await expect(s.get_by_test_id("media-state")).to_have_attribute("data-state", "playing", timeout=15_000)
    await expect(s.get_by_test_id("stage-panel")).to_be_hidden()

    sam = t.get_by_test_id("member").filter(has_text="Student Sam")
    await sam.get_by_test_id("stage-invite").click()
    await expect(sam.get_by_test_id("on-stage")).to_be_visible()
    await expect(s.get_by_test_id("stage-panel")).to_be_visible()
    await expect(s.get_by_test_id("stage-state")).to_have_attribute("data-state", "live", timeout=15_000)

    tile = (
        "() => { const v = document.querySelector('[data-testid=stage-video][data-user-id=s1]');"
        " return v ? v.getVideoPlaybackQuality().totalVideoFrames : -1; }"
    )
    first = await poll(t, tile, lambda n: n > 0, "the student's video in the studio")
    await poll(t, tile, lambda n: n > first + 10, "the student's video playing on")
    lesson = await frames(s)
    await wait_for_frames_to_rise(s, lesson + 10)  # the student still watches the teacher

    await sam.get_by_test_id("stage-remove").click()
    await expect(s.get_by_test_id("stage-panel")).to_be_hidden(timeout=10_000)
    await poll(t, tile, lambda n: n == -1, "the student's tile gone")
    assert await s.evaluate("() => window.lessonMedia.broadcaster.local") is None, "the camera is released"
    assert not teacher.errors and not student.errors, (teacher.errors, student.errors)
