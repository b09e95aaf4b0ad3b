"""A websocket client that sends and never reads holds a bounded share of the server: events without acks
are answered at most once a second once they pass the rate limit (unknown events count too), and a client
whose queue of undelivered packets passes ``SLOW_CONSUMER_PACKETS`` is cut off, as one whose transport
buffer passes a megabyte is. A packet that is not JSON is answered with an error, not a traceback, and a
browser's half surrogate pair becomes U+FFFD instead of losing the message.

Real parts: the app on a TCP port, raw websocket frames, python-socketio's client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

from live.sio_server import SLOW_CONSUMER_PACKETS
from tests.conftest import AppFactory
from tests.support import Member, token, wait_until

ROOM = "room-slow"


def masked_text_frame(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A Socket.IO connection over a raw websocket, with a tiny receive buffer, read only when asked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, jwt: str) -> RawSocket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)  # stops reading at 2 KiB
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        writer.write(masked_text_frame("40" + json.dumps({"token": jwt})))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer)

    def send(self, text: str) -> None:
        self.writer.write(masked_text_frame(text))

    async def texts(self, seconds: float) -> list[str]:
        """The text frames that arrive within ``seconds``."""
        out: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                head = await asyncio.wait_for(self.reader.readexactly(2), left)
            except TimeoutError:
                break
            size = head[1] & 0x7F
            if size == 126:
                size = struct.unpack(">H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(size)
            if head[0] & 0x0F == 1:
                out.append(payload.decode())
        return out

    def close(self) -> None:
        self.writer.close()


async def test_unknown_events_without_acks_get_one_answer_a_second_past_the_limit(start_app: AppFactory) -> None:
    url, services = await start_app()
    await services.rooms.create("Slow", room_id=ROOM)
    port = int(url.rsplit(":", 1)[1])
    raw = await RawSocket.connect(port, token(ROOM, "u1"))
    try:
        for _ in range(500):
            raw.send('42["nope",{}]')
        await raw.writer.drain()
        errors = [t for t in await raw.texts(1.5) if t.startswith('42["error"')]
        burst = services.settings.socket_event_burst
        assert burst <= len(errors) <= burst + 3, len(errors)  # each of the burst, then "rate_limited" once a second
        assert any('"rate_limited"' in e for e in errors)
    finally:
        raw.close()


async def test_a_socket_whose_undelivered_packets_pile_up_is_cut_off(start_app: AppFactory) -> None:
    url, services = await start_app()
    await services.rooms.create("Slow", room_id=ROOM)
    port = int(url.rsplit(":", 1)[1])
    raw = await RawSocket.connect(port, token(ROOM, "u1"))
    try:
        sio = services.gateway.sio
        await wait_until(lambda: len(sio.eio.sockets) == 1, what="the socket")
        (eio_socket,) = sio.eio.sockets.values()
        sid = sio.manager.sid_from_eio_sid(next(iter(sio.eio.sockets)), "/")
        # A slow path to the client: the kernel takes little of what the server writes.
        eio_socket.lc_transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Small packets, far from a megabyte in all: only their count can tell this reader never reads.
        for i in range(5 * SLOW_CONSUMER_PACKETS):
            sio.broadcast("room:event", {"n": i, "pad": "x" * 100}, sid)
            await asyncio.sleep(0)  # engineio's writer moves what it can, until the transport is full
        assert eio_socket.queue.qsize() <= SLOW_CONSUMER_PACKETS + 1  # and the close that engineio queues
        transport = eio_socket.lc_transport
        await wait_until(
            lambda: transport is None or transport.is_closing() or eio_socket.closed, what="the slow socket cut off"
        )
    finally:
        raw.close()


async def test_a_packet_that_is_not_json_is_answered_and_a_half_surrogate_pair_is_kept(
    start_app: AppFactory,
) -> None:
    url, services = await start_app()
    await services.rooms.create("Slow", room_id=ROOM)
    port = int(url.rsplit(":", 1)[1])
    raw = await RawSocket.connect(port, token(ROOM, "u1"))
    member = Member(url, token(ROOM, "ana"))
    try:
        raw.send('42["chat:send",{]')
        await raw.writer.drain()
        errors = [t for t in await raw.texts(1.0) if t.startswith('42["error"')]
        assert len(errors) == 1 and '"invalid"' in errors[0], errors

        await member.connect()
        await member.join()
        raw.send('420["join",{}]')
        # What a browser's JSON.stringify writes for text cut in the middle of an emoji: an escaped half pair.
        raw.send('421["chat:send",{"text":"cut \\ud83d"}]')
        await raw.writer.drain()
        acks = [t for t in await raw.texts(2.0) if t.startswith("431")]
        assert acks and '"ok":true' in acks[0], acks
        await wait_until(lambda: any(e["type"] == "chat.message" for e in member.events), what="the message")
        [message] = [e for e in member.events if e["type"] == "chat.message"]
        assert message["data"]["text"] == "cut \ufffd"
    finally:
        raw.close()
        await member.sio.disconnect()
