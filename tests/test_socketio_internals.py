"""live/sio_server.py leans on python-socketio and python-engineio internals. These tests fail loudly if an
upgrade changes them: exact pins, the ack-id hook, websockets without deflate, and the queue broadcast."""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiohttp
import engineio.async_socket
import socketio

from live.sio_server import ClassroomSocketServer
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.support import Member, joined, token, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_socketio_and_engineio_are_pinned_to_the_versions_installed() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("python-socketio", "python-engineio"):
        pins = [d for d in deps if re.match(rf"{name}==", d)]
        assert pins, f"{name} must be pinned exactly: live/sio_server.py uses its internals"
        assert pins[0] == f"{name}=={version(name)}", f"installed {name} differs from the pin; re-check sio_server.py"


def test_private_hooks_still_have_the_shapes_we_use() -> None:
    params = list(inspect.signature(socketio.AsyncServer._handle_event_internal).parameters)
    assert params == ["self", "server", "sid", "eio_sid", "data", "namespace", "id"]
    params = list(inspect.signature(socketio.AsyncServer._handle_eio_message).parameters)
    assert params == ["self", "eio_sid", "data"]
    server = ClassroomSocketServer()
    assert server.eio.handlers["message"] == server._handle_eio_message, "our override receives raw packets"
    assert "websocket" in server.eio._async and isinstance(server.eio.sockets, dict)
    assert "queue" in inspect.getsource(engineio.async_socket.AsyncSocket.send)
    assert "self.queue.get()" in inspect.getsource(engineio.async_socket.AsyncSocket.poll)


async def test_websockets_refuse_permessage_deflate(start_app: AppFactory) -> None:
    url, _ = await start_app()
    async with aiohttp.ClientSession() as http:
        ws_url = url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with http.ws_connect(ws_url, compress=15) as ws:
            assert ws.compress == 0, "the server accepted permessage-deflate"
            assert (await ws.receive_str()).startswith("0{")


async def test_broadcast_reaches_each_local_member_of_the_room_once(start_app: AppFactory) -> None:
    url, services = await start_app()
    members = [Member(url, token("bcast", "t", Role.TEACHER))]  # a staff token opens the room first
    members += [Member(url, token("bcast", f"s{i}")) for i in range(5)]
    outsider = Member(url, token("elsewhere", "t2", Role.TEACHER))
    try:
        await joined(*members, outsider)
        # Ack-less errors use the recorded ack flag: the `error` event arrives, the ack path returns none.
        await outsider.sio.emit("chat:send", {"text": 7})
        await wait_until(lambda: any(n == "error" for n, _ in outsider.other), what="error event")

        sent = services.gateway.sio.broadcast("room:reload", {"reason": "test"}, "bcast")
        assert sent == len(members)
        for m in members:
            await wait_until(lambda m=m: m.reloads == [{"reason": "test"}], what="one broadcast each")
        await asyncio.sleep(0.1)
        assert outsider.reloads == []
    finally:
        for m in [*members, outsider]:
            await m.close()


async def test_direct_frames_of_every_length_class_arrive_intact(start_app: AppFactory) -> None:
    url, services = await start_app()
    member = Member(url, token("frames", "t", Role.TEACHER))
    try:
        await member.connect()
        await member.join()
        reasons = ["x" * 10, "y" * 300, "z" * 70_000]  # 7-bit, 16-bit and 64-bit payload lengths
        for reason in reasons:
            assert services.gateway.sio.broadcast("room:reload", {"reason": reason}, "frames") == 1
        await wait_until(lambda: len(member.reloads) == 3, what="three frames")
        assert [r["reason"] for r in member.reloads] == reasons
    finally:
        await member.close()
