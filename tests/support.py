"""Real parts for tests: redis-server processes, PostgreSQL databases, server processes, socket clients."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import socketio

from live.auth import mint_token
from rooms.identity import Grants, Role

PG_ADMIN_DSN = os.environ.get("LIVE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TEST_SECRET = "test-secret-" + "x" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence, that tests may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (the test command installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: what a crash looks like; nothing is saved."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")


async def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    name = f"lc_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def joined(*members: Member) -> None:
    """Connect and join each member, in order (a staff member first opens a new room)."""
    for m in members:
        await m.connect()
        await m.join()


async def joined_together(members: list[Member], at_once: int = 50) -> None:
    """Connect and join many members, ``at_once`` at a time."""
    for i in range(0, len(members), at_once):
        chunk = members[i : i + at_once]
        await asyncio.gather(*(m.connect() for m in chunk))
        await asyncio.gather(*(m.join() for m in chunk))


#: Admin API credentials of the test servers, as an Authorization header.
ADMIN_AUTH = {"Authorization": "Basic " + base64.b64encode(b"test:test-api-secret").decode()}


def token(
    room: str,
    user: str,
    role: Role = Role.STUDENT,
    *,
    name: str | None = None,
    grants: Grants | None = None,
    ttl_s: int = 3600,
    secret: str = TEST_SECRET,
    minor: bool = False,
) -> str:
    return mint_token(
        secret, room_id=room, user_id=user, name=name or user, role=role, grants=grants, ttl_s=ttl_s, minor=minor
    )


class ServerProcess:
    """``live-classroom serve`` in its own process, as an operator runs it."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.env = {
            **os.environ,
            "LIVE_SECRET": TEST_SECRET,
            "LIVE_API_KEY": "test",
            "LIVE_API_SECRET": "test-api-secret",
            "LIVE_DATA_DIR": str(tmp),
            "LIVE_LOG_LEVEL": "WARNING",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "live.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"server not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    async def ready_again(self, timeout: float = 15.0) -> None:
        """Wait until ``/readyz`` answers 200 (after an outage of Redis or the database)."""
        deadline = time.monotonic() + timeout
        while (await self.readyz())[0] != 200:
            assert time.monotonic() < deadline, "readyz never recovered"
            await asyncio.sleep(0.1)

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/readyz") as r:
            return r.status, await r.json()


class RecordingClient(socketio.AsyncClient):  # type: ignore[misc]
    """A Socket.IO client that also keeps every raw Socket.IO packet it receives, as sent on the wire."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw: list[str] = []

    async def _handle_eio_message(self, data: Any) -> None:
        self.raw.append(data if isinstance(data, str) else repr(data))
        await super()._handle_eio_message(data)


@dataclass
class Member:
    """A real Socket.IO client that records what it receives and keeps its room position."""

    url: str
    jwt: str
    sio: RecordingClient = field(default_factory=lambda: RecordingClient(reconnection=False))
    events: list[dict[str, Any]] = field(default_factory=list)
    other: list[tuple[str, Any]] = field(default_factory=list)
    reloads: list[dict[str, Any]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    connect_errors: list[Any] = field(default_factory=list)
    epoch: str | None = None
    offset: int = 0
    snapshot: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.sio.on("room:event", self._on_event)
        self.sio.on("room:reload", self.reloads.append)
        self.sio.on("presence:count", lambda d: self.counts.append(d["count"]))
        self.sio.on("connect_error", self.connect_errors.append)
        for name in ("presence:joined", "presence:left", "removed", "error", "sales:order"):
            self.sio.on(name, lambda d, name=name: self.other.append((name, d)))

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["epoch"] == self.epoch and event["offset"] > self.offset:
            self.offset = event["offset"]

    async def connect(self, headers: dict[str, str] | None = None) -> None:
        await self.sio.connect(
            self.url, auth={"token": self.jwt}, transports=["websocket"], headers=headers or {}, wait_timeout=10
        )

    async def join(self, since: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        if since and self.epoch is not None:
            payload["since"] = {"epoch": self.epoch, "offset": self.offset}
        answer = await self.sio.call("join", payload, timeout=10)
        assert answer["ok"], answer
        if answer.get("recovered"):
            self.events.extend(answer["events"])  # what it missed, in order; the earlier snapshot still holds
        else:
            self.snapshot = answer
        self.epoch, self.offset = answer["position"]["epoch"], answer["position"]["offset"]
        return dict(answer)

    async def call(self, event: str, data: Any, timeout: float = 10) -> dict[str, Any]:
        return dict(await self.sio.call(event, data, timeout=timeout))

    async def refused(self) -> dict[str, Any]:
        """Connect, expecting a refusal; returns its ``{code, message}``."""
        try:
            await self.connect()
        except socketio.exceptions.ConnectionError:
            await wait_until(lambda: bool(self.connect_errors), what="connect_error data")
            error = self.connect_errors[-1]  # {"message", "data": {"code", "message"}}
            return dict(error.get("data") or {})
        raise AssertionError("the connection was accepted")

    def qa(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """The Q&A this member's client would show: the join snapshot, then every later event folded in
        (what static/client.js does): ``(questions by id, pinned id)``."""
        snap = self.snapshot or {}
        qa = snap.get("qa") or {"questions": [], "pin": None}
        questions = {q["id"]: dict(q) for q in qa["questions"]}
        pin = qa["pin"]
        since = (snap.get("position") or {}).get("offset", 0)
        for e in self.events:
            if e["offset"] <= since:
                continue
            data = e["data"]
            if e["type"] == "qa.question":
                q = data["q"]
                if q.get("removed"):
                    questions.pop(q["id"], None)
                else:
                    questions[q["id"]] = dict(q)
                pin = data["pin"]
            elif e["type"] == "qa.pin":
                pin = data["id"]
            elif e["type"] == "qa.votes":
                for qid, n in data["counts"].items():
                    if qid in questions:
                        questions[qid]["votes"] = n
        return questions, pin

    def votes(self, question_id: str) -> int | None:
        question = self.qa()[0].get(question_id)
        return None if question is None else int(question["votes"])

    def chat_texts(self) -> list[str]:
        return [e["data"]["text"] for e in self.events if e["type"] == "chat.message"]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
