"""Browser tests' helpers: the real server process, join links from the CLI, pages in Debian's Chromium."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, expect

from tests.support import ServerProcess

REPO = Path(__file__).resolve().parent.parent
SOCKET_IO_BUILD = REPO / "static/node_modules/socket.io-client/dist/socket.io.min.js"
CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` cannot download browsers here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Media: a fake camera and microphone (a test pattern and a beep), permission prompts answered yes,
    # and sound allowed to play without a click.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 860}}


@contextmanager
def serve(data_dir: Path) -> Iterator[ServerProcess]:
    """``live-classroom serve`` with its own data dir, a random secret and ``LIVE_PUBLIC_URL`` set."""
    assert SOCKET_IO_BUILD.exists(), "run `npm ci --prefix static` first: the pages need socket.io-client"
    server = ServerProcess(data_dir, {"LIVE_SECRET": secrets.token_urlsafe(36)})
    server.env["LIVE_PUBLIC_URL"] = server.url
    try:
        asyncio.run(server.start())
        yield server
    finally:
        server.stop()
        if server.log_path.exists():  # pytest shows this only when a test failed
            print(f"--- server log ---\n{server.log_path.read_text(errors='replace')}")


def mint_links(server: ServerProcess, room: str, *users: tuple[str, str, str]) -> list[str]:
    """Page links for ``(user id, name, role)`` from ``live.cli token --link``, minted concurrently."""
    token = [sys.executable, "-m", "live.cli", "token", "--room", room, "--link"]
    procs = [
        subprocess.Popen(
            [*token, "--user", user, "--name", name, "--role", role],
            env=server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user, name, role in users
    ]
    links = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"token command failed: {err}"
        links.append(out.strip().splitlines()[-1])
    return links


@dataclass
class Watched:
    """A page and what it did that tests may forbid: dialogs and uncaught script errors."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def open_page(browser: Browser, url: str, **context: Any) -> Watched:
    """Open ``url`` in a fresh browser context: its own storage, as another person's browser."""
    page = await (await browser.new_context(**context)).new_page()
    watched = Watched(page)

    async def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    await page.goto(url)
    return watched


async def open_room(server: ServerProcess, browser: Browser, room: str) -> tuple[Watched, Watched]:
    """The teacher's studio first (a staff token creates the room), then a student's page on a phone."""
    teacher_url, student_url = mint_links(server, room, ("t1", "Teacher", "teacher"), ("s1", "Student Sam", "student"))
    assert "/studio#token=" in teacher_url and "/room#token=" in student_url
    teacher = await open_page(browser, teacher_url, **DESKTOP)
    await expect(teacher.page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live")
    student = await open_page(browser, student_url, **PHONE)
    await expect(student.page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live")
    return teacher, student
