"""Our Socket.IO server: python-socketio's ``AsyncServer`` plus the three things the fan-out path needs.

Everything here touches python-socketio / python-engineio internals, so both are pinned exactly in
pyproject.toml and ``tests/test_socketio_internals.py`` fails loudly if an upgrade changes them:

- ``_handle_event_internal`` receives the ack id: we record whether the client asked for an ack, so an
  error for an event sent without one is reported on the ``error`` event instead of vanishing; and we
  write the ack frame ourselves, as room events are written (below).
- ``_handle_eio_message`` sees each raw packet: we record its size, so the per-event size limit costs a
  ``len()`` instead of encoding the payload again.
- Websockets without permessage-deflate. aiohttp's ``WebSocketResponse`` accepts it by default, and every
  browser offers it, so each delivery would be deflated once per recipient. Node's Engine.IO has it off
  by default too (``perMessageDeflate: false``).
- JSON through orjson (:class:`WireJson`), for every packet in and out: the standard library's encoder and
  decoder were about a tenth of the instance's CPU in a gift storm.
- :meth:`ClassroomSocketServer.broadcast`: a room event is encoded once, into one websocket frame (server
  frames are unmasked and, without deflate, the same bytes for every recipient), and written straight to
  each local websocket's transport: one ``transport.write`` per recipient, the floor for a socket server.
  python-socketio's ``emit`` instead creates a task and a coroutine chain per recipient, and engineio's
  writer task then builds the same frame again for each one. A socket that has packets waiting in its
  engineio queue or bytes in its transport buffer gets the packet through the queue instead, so frames
  never overtake each other; one whose buffer passes ``SLOW_CONSUMER_BYTES`` is disconnected (it comes
  back and catches up by offset, as with Centrifugo's slow-consumer rule).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

import socketio
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from socketio import packet as sio_packet

from rooms import wire_json

ACK_REQUESTED: ContextVar[bool] = ContextVar("ack_requested", default=False)
#: Size of the raw Socket.IO packet being handled (event name, ack id and JSON payload), in characters.
PACKET_SIZE: ContextVar[int] = ContextVar("packet_size", default=0)
NAMESPACE = "/"
SLOW_CONSUMER_BYTES = 1 << 20
#: Packets waiting in a socket's engineio queue past which it is cut off as a slow consumer: engineio's
#: writer stops at the transport's high-water mark, so a client that never reads grows the queue instead.
SLOW_CONSUMER_PACKETS = 1000


def websocket_text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, final text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


class UncompressedWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """engineio's aiohttp websocket wrapper, with permessage-deflate refused."""

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        owner = getattr(self.handler, "__self__", None)  # engineio's AsyncSocket for this connection
        if owner is not None:
            owner.lc_transport = request.transport
        try:
            await self.handler(self)
        finally:
            if owner is not None:
                owner.lc_transport = None
        return self._sock


class WireJson:
    """The ``json`` module interface that python-socketio and python-engineio call, on orjson. Numbers
    beyond 64-bit integers decode as floats, never as huge integers (engineio's own guard is against the
    cost of those); payload schemas bound every number anyway."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return wire_json.dumps(value)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return wire_json.loads(text)


class ClassroomSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with the ack flag, no deflate, orjson, and :meth:`broadcast`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(async_mode="aiohttp", json=WireJson, **kwargs)
        self.eio._async = {**self.eio._async, "websocket": UncompressedWebSocket}

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # Handlers run in tasks created from here, which copy this context.
        PACKET_SIZE.set(len(data) if isinstance(data, str | bytes) else 0)
        try:
            await super()._handle_eio_message(eio_sid, data)
        except json.JSONDecodeError:
            # Only decoding raises this here (handlers run in their own tasks): the packet is dropped, and
            # its sender told, since without its ack id it cannot be answered.
            sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
            if sid is not None:
                self.broadcast("error", {"code": "invalid", "message": "a packet that is not JSON was dropped"}, sid)

    async def _handle_event_internal(  # type: ignore[no-untyped-def]
        self, server, sid, eio_sid, data, namespace, id
    ):
        # python-socketio's own, except that the ack is written like a room event (see broadcast).
        ACK_REQUESTED.set(id is not None)
        result = await server._trigger_event(data[0], namespace, sid, *data[1:])
        if result == self.not_handled or id is None:
            return
        args = [] if result is None else list(result) if isinstance(result, tuple) else [result]
        if namespace != NAMESPACE:
            await server._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=args))
            return
        sock = self.eio.sockets.get(eio_sid)
        if sock is not None and not sock.closed:
            self._send(sock, str(sio_packet.ACK) + str(id) + _json(args))

    def broadcast(self, event: str, data: Any, room: str, exclude: frozenset[str] = frozenset()) -> int:
        """Send ``event`` to every local socket in ``room`` (a room id, or a socket's sid) except the sids
        in ``exclude``; returns how many sockets got it."""
        # Socket.IO's text encoding of an EVENT on "/" (socketio.packet.Packet.encode), without its search
        # of the whole payload for binary attachments: room events are JSON.
        encoded = str(sio_packet.EVENT) + _json([event, data])
        queued = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        frame = websocket_text_frame(queued.encode().encode())
        sockets = self.eio.sockets
        sent = 0
        for sid, eio_sid in self.manager.get_participants(NAMESPACE, room):
            if sid in exclude:
                continue
            sock = sockets.get(eio_sid)
            if sock is None or sock.closed:
                continue
            sent += 1
            self._write(sock, frame, queued)
        return sent

    def _send(self, sock: Any, encoded: str) -> None:
        queued = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        self._write(sock, websocket_text_frame(queued.encode().encode()), queued)

    @staticmethod
    def _write(sock: Any, frame: bytes, queued: Any) -> None:
        """Straight to the socket's transport when nothing is waiting before it, else through engineio's
        queue (so frames never overtake each other); a slow consumer is cut off."""
        transport = getattr(sock, "lc_transport", None)
        if transport is not None and sock.upgraded and not sock.upgrading:
            if transport.is_closing():
                return
            buffered = transport.get_write_buffer_size()
            if buffered == 0 and sock.queue.empty():
                transport.write(frame)
                return
            if buffered > SLOW_CONSUMER_BYTES or sock.queue.qsize() >= SLOW_CONSUMER_PACKETS:
                transport.abort()
                return
        elif sock.queue.qsize() >= SLOW_CONSUMER_PACKETS:
            return  # long-polling that stopped polling: engineio's ping timeout closes it
        sock.queue.put_nowait(queued)


_json = WireJson.dumps
