"""Fixtures: a private redis-server, fresh SQL databases (SQLite and PostgreSQL), in-process apps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, async_playwright

from live.app import SERVICES, Services, create_app
from live.config import Settings
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, serve
from tests.support import TEST_SECRET, RedisServer, ServerProcess, create_pg_database, drop_pg_database, free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test (restarted if an earlier test killed it)."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test that takes this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'live.db'}"
        return
    url = await create_pg_database()
    yield url
    await drop_pg_database(url)


def test_settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "LIVE_SECRET": TEST_SECRET,
        "LIVE_DATA_DIR": str(tmp_path),
        "LIVE_API_KEY": "test",
        "LIVE_API_SECRET": "test-api-secret",
    }
    return Settings.from_env({**base, **env})


@pytest.fixture
async def two_instances(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, pg_url: str
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two ``live-classroom serve`` processes on one redis-server and one PostgreSQL database."""
    env = {"LIVE_REDIS_URL": redis_url, "LIVE_DATABASE_URL": pg_url}
    a = ServerProcess(tmp_path / "a", {**env, "LIVE_INSTANCE_ID": "a"})
    b = ServerProcess(tmp_path / "b", {**env, "LIVE_INSTANCE_ID": "b"})
    try:
        await asyncio.gather(a.start(), b.start())
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``live-classroom serve`` per browser test module, serving the pages."""
    with serve(tmp_path_factory.mktemp("live")) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium."""
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


AppFactory = Callable[..., Awaitable[tuple[str, Services]]]


@pytest.fixture
async def start_app(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Start in-process apps on real TCP ports: ``url, services = await start_app(LIVE_REDIS_URL=...)``."""
    servers: list[TestServer] = []

    async def start(**env: Any) -> tuple[str, Services]:
        settings = test_settings(tmp_path, **env)
        server = TestServer(create_app(settings), host="127.0.0.1", port=free_port())
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), server.app[SERVICES]

    yield start
    for server in reversed(servers):
        await server.close()
