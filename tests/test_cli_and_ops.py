"""The command line (token, demo) and the operations endpoints (health, readiness, metrics)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from live.auth import verify_token
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import TEST_SECRET, Member, drop_pg_database, free_port, token, wait_until


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "live.cli", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_token_command_prints_a_verifiable_token_or_link(tmp_path: Path) -> None:
    env = {"LIVE_SECRET": TEST_SECRET, "LIVE_DATA_DIR": str(tmp_path), "LIVE_PUBLIC_URL": "https://class.example"}
    out = cli("token", "--room", "maths", "--user", "u1", "--name", "Ana", "--role", "assistant", env=env)
    assert out.returncode == 0, out.stderr
    who = verify_token(TEST_SECRET, out.stdout.strip())
    assert (who.room_id, who.user_id, who.role, who.grants.room_admin) == ("maths", "u1", Role.ASSISTANT, True)
    link = cli("token", "--room", "maths", "--user", "u2", "--name", "Bo", "--role", "student", "--link", env=env)
    assert re.fullmatch(r"https://class\.example/room#token=[\w.-]+\n", link.stdout)

    bad = cli("token", "--room", "Bad Room", "--user", "u1", "--name", "A", "--role", "student", env=env)
    assert bad.returncode == 2 and "room id" in bad.stderr
    weak = cli(
        "token",
        "--room",
        "maths",
        "--user",
        "u1",
        "--name",
        "A",
        "--role",
        "student",
        env={**env, "LIVE_SECRET": "short"},
    )
    assert weak.returncode == 2 and "LIVE_SECRET" in weak.stderr


async def test_demo_prints_teacher_and_student_links_that_work(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LIVE_DATA_DIR": str(tmp_path)}
    env.pop("LIVE_SECRET", None)
    env.pop("LIVE_REDIS_URL", None)
    env.pop("LIVE_DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "live.cli",
        "demo",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        links: dict[str, str] = {}
        while len(links) < 2:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "demo exited before printing its links"
            if match := re.search(r"(teacher studio|student room):\s+(\S+)", line):
                links[match.group(1)] = match.group(2)
        assert "/studio#token=" in links["teacher studio"] and "/room#token=" in links["student room"]
        teacher = Member(f"http://127.0.0.1:{port}", links["teacher studio"].split("#token=")[1])
        student = Member(f"http://127.0.0.1:{port}", links["student room"].split("#token=")[1])
        for _ in range(100):
            try:
                await teacher.connect()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await teacher.join()
        await student.connect()
        snapshot = await student.join()
        assert snapshot["room"]["status"] == "live"
        assert (await student.call("chat:send", {"text": "hi from the demo"}))["ok"]
        await wait_until(lambda: teacher.chat_texts() == ["hi from the demo"], what="demo chat")
        async with aiohttp.ClientSession() as http:
            for page in ("/studio", "/room", "/static/vendor/socket.io.min.js"):
                async with http.get(f"http://127.0.0.1:{port}{page}") as r:
                    assert r.status == 200, page
        await teacher.close()
        await student.close()
    finally:
        proc.terminate()
        await proc.wait()


async def test_health_readiness_and_metrics(start_app: AppFactory, redis_url: str) -> None:
    url, _ = await start_app(LIVE_REDIS_URL=redis_url)
    student = Member(url, token("ops-room", "t1", Role.TEACHER))
    try:
        await student.connect()
        await student.join()
        assert (await student.call("chat:send", {"text": "counted"}))["ok"]
        assert (await student.call("chat:send", {"text": "x" * 600}))["error"]["code"] == "too_long"
        await wait_until(lambda: student.chat_texts() == ["counted"], what="delivery")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{url}/readyz") as r:
                body = await r.json()
                assert r.status == 200 and body["engine"] == "redis" and body["bus"]["connected"]
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
        assert "lc_connections 1.0" in text
        assert 'lc_events_in_total{event="chat:send"} 2.0' in text
        assert 'lc_events_rejected_total{code="too_long",event="chat:send"} 1.0' in text
        assert re.search(r"lc_deliveries_total [1-9]", text)
        assert re.search(r"lc_delivery_latency_seconds_count [1-9]", text)
        assert "lc_bus_connected 1.0" in text
    finally:
        await student.close()


async def test_pages_are_served_with_a_strict_content_security_policy(start_app: AppFactory) -> None:
    url, _ = await start_app()
    async with aiohttp.ClientSession() as http:
        for page in ("/", "/room", "/studio"):
            async with http.get(f"{url}{page}") as r:
                assert r.status == 200
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.postgres
async def test_readyz_reports_a_database_outage(pg_url: str, start_app: AppFactory) -> None:
    url, _ = await start_app(LIVE_DATABASE_URL=pg_url)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 200 and (await r.json())["database"]["ok"] is True
        await drop_pg_database(pg_url)  # WITH (FORCE): every open connection is cut
        async with http.get(f"{url}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["ready"] is False and body["database"]["ok"] is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIVE_LOG_LEVEL", "chatty"),
        ("LIVE_PORT", "http"),
        ("LIVE_PORT", "70000"),
        ("LIVE_REDIS_URL", "http://127.0.0.1:6379"),
        ("LIVE_DATABASE_URL", "mysql://db/live"),
        ("LIVE_DATABASE_URL", "sqlite:///:memory:"),
        ("LIVE_DATABASE_URL", "sqlite://"),
        ("LIVE_DATABASE_URL", "sqlite:///file::memory:?uri=true"),
        ("LIVE_DATABASE_URL", "sqlite:///file:x.db?mode=memory&uri=true"),
        ("LIVE_ALLOWED_ORIGINS", "school.example"),
        ("LIVE_PUBLIC_URL", "ftp://class.example"),
        ("LIVE_SECRET", "too-short"),
    ],
)
def test_bad_configuration_stops_the_server_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    env = {"LIVE_SECRET": TEST_SECRET, "LIVE_DATA_DIR": str(tmp_path), name: value}
    out = cli("serve", "--port", str(free_port()), env=env)
    assert out.returncode == 2 and name in out.stderr, out.stderr
