"""Messages between an instance and its media worker processes.

Two socket pairs join the instance to each worker:

- the **data** pair (``AF_UNIX``, ``SOCK_DGRAM``) carries each publisher packet once per worker: a
  24-byte header (the source's key, the packet's arrival time, its SSRC, timestamp, sequence number and
  marker) and the RTP payload, or a marker that a source changed publisher. Datagrams keep their order
  and boundaries; when a worker falls so far behind that its queue (about 100 packets) is full, packets are
  dropped (and counted), as a network would, and the worker drops packets that reach it more than 250 ms
  after they arrived at the instance;
- the **control** pair (``AF_UNIX``, ``SOCK_STREAM``) carries requests, replies and notices both ways
  (viewer creation and negotiation, offers to send, keyframe requests, figures): frames of a 4-byte
  length and a pickled dict. Both ends are processes of the same program, started together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from live.media.errors import MediaError, error_reply, reply_data
from rooms.errors import RoomError

log = logging.getLogger(__name__)

PACKET = struct.Struct("!BIdIIHB")  # kind, source key, arrival, ssrc, timestamp, sequence number, marker
RESTART = struct.Struct("!BI")  # kind, source key
KIND_PACKET = 1
KIND_RESTART = 2
DATA_BUFFER_BYTES = 128 << 10  # about 100 full-size packets queued per worker: a worker that falls behind drops
# packets rather than forwarding them late (a queue of seconds would delay every viewer of that worker)
MAX_LAG_S = 0.25  # a worker drops packets that arrived at the instance longer ago than this
MAX_DATAGRAM = 2048
FRAME = struct.Struct("!I")
MAX_FRAME = 16 << 20
REQUEST_TIMEOUT_S = 10.0

#: Handles one request or notice: ``handler(op, body)``; a request's reply is what it returns.
Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


def socket_pairs() -> tuple[tuple[socket.socket, socket.socket], tuple[socket.socket, socket.socket]]:
    """A new (control, data) pair of socket pairs: each is (instance end, worker end)."""
    control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    data = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in data:
        with contextlib.suppress(OSError):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DATA_BUFFER_BYTES)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DATA_BUFFER_BYTES)
    data[0].setblocking(False)
    data[1].setblocking(False)
    return control, data


class Channel:
    """Requests, replies and notices over one control socket; each incoming request runs in its own task."""

    def __init__(self, sock: socket.socket, handler: Handler, name: str) -> None:
        self._sock = sock
        self._handler = handler
        self.name = name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def open(self) -> None:
        """Start reading; ``closed`` is set when the other end goes away."""
        self._sock.setblocking(False)
        self._reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=MAX_FRAME)
        self._loop_task = asyncio.create_task(self._read_loop(), name=f"media-ipc-{self.name}")

    async def request(self, op: str, **body: Any) -> dict[str, Any]:
        """Send a request and wait for its reply; a refusal on the other side raises its ``RoomError``."""
        if self.closed.is_set():
            raise MediaError("unavailable", "the media worker is gone; try again")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._write({"op": op, "id": request_id, **body})
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise MediaError("unavailable", "the media worker does not answer; try again") from None
        finally:
            self._pending.pop(request_id, None)
        return reply_data(reply)

    def notify(self, op: str, **body: Any) -> None:
        """Send a notice (no reply); dropped if the other end is gone."""
        if not self.closed.is_set():
            self._write({"op": op, **body})

    def _write(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        raw = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(FRAME.pack(len(raw)) + raw)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                (size,) = FRAME.unpack(await self._reader.readexactly(FRAME.size))
                message = pickle.loads(await self._reader.readexactly(size))  # our own child process
                if "reply_to" in message:
                    future = self._pending.get(message["reply_to"])
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                task = asyncio.ensure_future(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._close_now()

    async def _handle(self, message: dict[str, Any]) -> None:
        op = message.pop("op")
        request_id = message.pop("id", None)
        reply: dict[str, Any]
        try:
            data = await self._handler(op, message)
            reply = {"data": data or {}}
        except RoomError as exc:
            reply = error_reply(exc)
        except Exception as exc:
            log.exception("media ipc %s: %s failed", self.name, op)
            reply = {"error": {"code": "unavailable", "message": f"media worker error: {exc}"}}
        if request_id is not None and not self.closed.is_set():
            with contextlib.suppress(ConnectionError, OSError):
                self._write({"reply_to": request_id, **reply})

    def _close_now(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._writer is None:
            self._sock.close()  # never opened
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MediaError("unavailable", "the media worker is gone; try again"))
        if self._writer is not None:
            self._writer.close()

    async def close(self) -> None:
        """Stop reading and writing; pending requests fail, running handlers are cancelled."""
        self._close_now()
        for task in [self._loop_task, *self._tasks]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for task in [self._loop_task, *list(self._tasks)]:
            if task is not None and task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
