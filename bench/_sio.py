"""Minimal Socket.IO 5 / Engine.IO 4 client over websockets, for load generation.

Only what bench/fanout.py needs: websocket transport (no polling upgrade), namespace "/",
`auth` on connect, events with acks, Engine.IO ping -> pong. Room events are handed to a
callback as raw bytes, unparsed: the generators only look for a marker in the chat text,
so the hot path never runs json.loads.

Two transports with the same interface:
- `raw` (default): an asyncio.BufferedProtocol that does the RFC 6455 handshake and framing itself;
  frames are parsed inside buffer_updated, with no task switch per message.
- `aiohttp`: aiohttp's ws_connect with one reader task per client.
Measured here against a fake server (200 clients, 10k messages/s): raw costs about 25 us of CPU per
received message (14 user + 11 system), aiohttp about 41 us (22 + 19). On a 2-core machine every
microsecond the generators spend is taken from the servers under test, hence the raw default.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

RoomEventHandler = Callable[[bytes, float], None]
"""Called with the whole Socket.IO packet (b'42["room:event",{...}]') and time.time() at receipt."""

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BIN, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_ROOM_EVENT_PREFIX = b'42["room:event"'


class SioError(Exception):
    """Connection refused (connect_error), closed, or a protocol violation."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


# --------------------------------------------------------------------------- transports


def _mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client-to-server frame (clients must mask, RFC 6455 5.3)."""
    n = len(payload)
    head = bytearray([0x80 | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    mask = os.urandom(4)
    head += mask
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return bytes(head) + payload


_RECV_BUFFER = bytearray(256 * 1024)  # shared: buffer_updated consumes it before the next recv_into
_RECV_VIEW = memoryview(_RECV_BUFFER)


class _RawWsProtocol(asyncio.BufferedProtocol):
    # BufferedProtocol: asyncio's plain Protocol allocates a 256 KiB bytes object per recv(),
    # which showed up as more system time than the parsing itself.

    def __init__(self, key: bytes, on_text: Callable[[bytes, float], None], on_lost: Callable[[], None]):
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        self._on_text = on_text
        self._on_lost = on_lost
        self._buf = bytearray()
        self._fragments: bytearray | None = None
        self._is_upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(SioError(f"connection lost during handshake: {exc}"))
        self._on_lost()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self._buf += _RECV_VIEW[:nbytes]
        if not self._is_upgraded and not self._finish_handshake():
            return
        self._parse_frames(time.time())

    def _finish_handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end])
        del self._buf[: end + 4]
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" " or self._accept not in head:
            self.upgraded.set_exception(SioError(f"websocket upgrade refused: {status.decode(errors='replace')}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self._is_upgraded = True
        self.upgraded.set_result(None)
        return True

    def _parse_frames(self, now: float) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:  # servers must not mask
                self.close()
                return
            end = pos + header + length
            if end > size:
                break
            self._on_frame(b0 & 0x80, b0 & 0x0F, bytes(buf[pos + header : end]), now)
            pos = end
        if pos:
            del buf[:pos]

    def _on_frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode == _OP_TEXT and fin:
            self._on_text(payload, now)
        elif opcode in (_OP_TEXT, _OP_BIN):
            self._fragments = bytearray(payload)
        elif opcode == _OP_CONT and self._fragments is not None:
            self._fragments += payload
            if fin:
                whole, self._fragments = bytes(self._fragments), None
                self._on_text(whole, now)
        elif opcode == _OP_PING:
            self.send(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            self.send(_OP_CLOSE, payload[:2])
            self.close()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_mask_frame(opcode, payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RawTransport:
    def __init__(self, on_text: Callable[[bytes, float], None], on_lost: Callable[[], None]) -> None:
        self._on_text = on_text
        self._on_lost = on_lost
        self._proto: _RawWsProtocol | None = None

    async def open(self, host: str, port: int, path: str) -> None:
        key = base64.b64encode(os.urandom(16))
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _RawWsProtocol(key, self._on_text, self._on_lost), host, port)
        self._proto = proto
        assert proto.transport is not None
        proto.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await proto.upgraded

    def send_text(self, data: bytes) -> None:
        assert self._proto is not None
        self._proto.send(_OP_TEXT, data)

    async def close(self) -> None:
        if self._proto is not None:
            self._proto.send(_OP_CLOSE, (1000).to_bytes(2, "big"))
            self._proto.close()


class AiohttpTransport:
    _session: aiohttp.ClientSession | None = None  # one per process, shared by all clients

    def __init__(self, on_text: Callable[[bytes, float], None], on_lost: Callable[[], None]) -> None:
        self._on_text = on_text
        self._on_lost = on_lost
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def open(self, host: str, port: int, path: str) -> None:
        if AiohttpTransport._session is None or AiohttpTransport._session.closed:
            connector = aiohttp.TCPConnector(limit=0)
            AiohttpTransport._session = aiohttp.ClientSession(connector=connector)
        self._ws = await AiohttpTransport._session.ws_connect(
            f"http://{host}:{port}{path}", autoping=True, compress=0, max_msg_size=0
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data.encode(), time.time())
        finally:
            self._on_lost()

    def send_text(self, data: bytes) -> None:
        assert self._ws is not None
        task = asyncio.create_task(self._ws.send_str(data.decode()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()

    @classmethod
    async def close_session(cls) -> None:
        if cls._session is not None:
            await cls._session.close()
            cls._session = None


TRANSPORTS: dict[str, type[RawTransport] | type[AiohttpTransport]] = {
    "raw": RawTransport,
    "aiohttp": AiohttpTransport,
}


# --------------------------------------------------------------------------- Socket.IO


class SioClient:
    """One Socket.IO connection to namespace "/"."""

    def __init__(self, on_room_event: RoomEventHandler | None = None, transport: str = "raw") -> None:
        self._on_room_event = on_room_event
        self._transport = TRANSPORTS[transport](self._on_text, self._on_lost)
        self._opened: asyncio.Future[dict[str, Any]] | None = None
        self._connected: asyncio.Future[dict[str, Any]] | None = None
        self._acks: dict[int, Callable[[Any], None]] = {}
        self._next_ack = 0
        self.connected = False
        self.other_packets = 0  # presence, counts, errors...: everything that is not a room event
        self.other_events: Counter[bytes] | None = None  # by event name, when the owner wants it

    async def connect(self, host: str, port: int, token: str, timeout: float = 30.0) -> dict[str, Any]:
        """Engine.IO open, then Socket.IO CONNECT with auth; returns the CONNECT payload ({sid})."""
        loop = asyncio.get_running_loop()
        self._opened = loop.create_future()
        self._connected = loop.create_future()
        for fut in (self._opened, self._connected):  # failures of the one not awaited are expected
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        async with asyncio.timeout(timeout):
            await self._transport.open(host, port, "/socket.io/?EIO=4&transport=websocket")
            await self._opened
            self._transport.send_text(b"40" + json.dumps({"token": token}).encode())
            info = await self._connected
        self.connected = True
        return info

    def emit(self, event: str, data: Any, on_ack: Callable[[Any], None] | None = None) -> None:
        """Send an event; `on_ack` gets the first ack argument (the server's {ok, ...})."""
        body = json.dumps([event, data], separators=(",", ":")).encode()
        if on_ack is None:
            self._transport.send_text(b"42" + body)
            return
        ack_id = self._next_ack
        self._next_ack += 1
        self._acks[ack_id] = on_ack
        self._transport.send_text(b"42" + str(ack_id).encode() + body)

    async def call(self, event: str, data: Any, timeout: float = 30.0) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(res: Any) -> None:
            if not fut.done():
                fut.set_result(res)

        self.emit(event, data, on_ack)
        async with asyncio.timeout(timeout):
            return await fut

    async def close(self) -> None:
        self.connected = False
        await self._transport.close()

    # Engine.IO packet types: 0 open, 1 close, 2 ping, 3 pong, 4 message.
    # Socket.IO (inside message 4): 0 connect, 1 disconnect, 2 event, 3 ack, 4 connect_error.
    def _on_text(self, data: bytes, now: float) -> None:
        if data.startswith(_ROOM_EVENT_PREFIX):
            if self._on_room_event is not None:
                self._on_room_event(data, now)
            return
        if data == b"2":
            self._transport.send_text(b"3")
        elif data.startswith(b"43"):
            self._on_ack(data)
        elif data.startswith(b"42"):
            self.other_packets += 1
            if self.other_events is not None:
                self.other_events[data[4 : data.find(b'"', 4)]] += 1
        elif data.startswith(b"0{"):
            self._resolve(self._opened, json.loads(data[1:]))
        elif data.startswith(b"40"):
            self._resolve(self._connected, json.loads(data[2:]) if len(data) > 2 else {})
        elif data.startswith(b"44"):
            self._fail(SioError("connect_error", json.loads(data[2:]) if len(data) > 2 else None))
        elif data.startswith(b"41") or data == b"1":
            self.connected = False
            self._fail(SioError("disconnected by server"))

    def _on_ack(self, data: bytes) -> None:
        bracket = data.index(b"[")
        callback = self._acks.pop(int(data[2:bracket]), None)
        if callback is not None:
            args = json.loads(data[bracket:])
            callback(args[0] if args else None)

    def _on_lost(self) -> None:
        self.connected = False
        self._fail(SioError("connection lost"))

    @staticmethod
    def _resolve(fut: asyncio.Future[dict[str, Any]] | None, value: dict[str, Any]) -> None:
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _fail(self, exc: SioError) -> None:
        for fut in (self._opened, self._connected):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
