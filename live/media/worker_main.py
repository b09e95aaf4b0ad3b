"""A media worker process: viewers' peer connections, fed with the packets the instance hands over.

Started by ``live/media/workers.py`` as ``python -m live.media.worker_main --control-fd N --data-fd M``
with its ends of the two socket pairs. It mirrors each source it is told about (a ``TrackSource`` with
the same key, info and codec), creates and negotiates ``Viewer``s on request, and forwards each packet
read from the data socket to its own viewers' sinks. It exits when the instance closes the control
channel (or dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from array import array
from typing import Any

from aiortc import RTCPeerConnection

from live.logs import configure_logging
from live.media.errors import MediaError
from live.media.forwarding import TrackSource, set_fanout_threads
from live.media.ipc import KIND_PACKET, KIND_RESTART, MAX_DATAGRAM, MAX_LAG_S, PACKET, RESTART, Channel
from live.media.viewer import Viewer, spread_sender_reports

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5
READS_PER_WAKEUP = 256
MIRROR_KEYFRAME_INTERVAL_S = 0.05  # coalesces a burst of viewers' requests into one message


class WorkerRoom:
    """One room's viewers in this worker and the sources they are bound to."""

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.viewers: dict[int, Viewer] = {}
        self.keys: set[int] = set()


class MediaWorker:
    """The state of one worker process."""

    def __init__(self, control: socket.socket, data: socket.socket) -> None:
        self.channel = Channel(control, self.handle, "instance")
        self._data = data
        self.rooms: dict[str, WorkerRoom] = {}
        self.viewers: dict[int, tuple[WorkerRoom, Viewer]] = {}
        self.mirrors: dict[int, TrackSource] = {}
        self._arrival = 0.0
        self._retired_out = 0
        self.late_drops = 0
        self._delays = array("d")
        self._tasks: set[asyncio.Task[Any]] = set()

    # the data path
    def read_packets(self) -> None:
        """Forward the datagrams waiting on the data socket (called when it is readable)."""
        buffer = bytearray(MAX_DATAGRAM)
        view = memoryview(buffer)
        recv_into = self._data.recv_into
        mirrors = self.mirrors
        now = time.time
        for _ in range(READS_PER_WAKEUP):
            try:
                size = recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            if size >= PACKET.size and buffer[0] == KIND_PACKET:
                _, key, arrival, ssrc, ts, seq, marker = PACKET.unpack_from(buffer)
                mirror = mirrors.get(key)
                if mirror is not None:
                    if now() - arrival > MAX_LAG_S:  # forwarding it this late would only delay what follows
                        self.late_drops += 1
                        continue
                    self._arrival = arrival
                    # Its own bytes: the source sends a burst once it is all in, after this buffer is reused.
                    mirror.forward(ssrc, seq, ts, marker, view[PACKET.size : size].tobytes())
            elif size >= RESTART.size and buffer[0] == KIND_RESTART:
                self._restart(RESTART.unpack_from(buffer)[1])

    def _current_arrival(self) -> float:
        return self._arrival

    def _observe(self, arrival: float, start: float, end: float) -> None:
        self._delays.extend((arrival, start, end))

    # mirrored sources
    def _mirror(self, room: WorkerRoom, key: int, info: Any, codec: Any) -> TrackSource:
        mirror = self.mirrors.get(key)
        if mirror is None:
            mirror = TrackSource(info, codec, key=key)
            mirror.keyframe_interval_s = MIRROR_KEYFRAME_INTERVAL_S  # the instance's source throttles
            mirror.connect_upstream(self._keyframe_requester(key), self._current_arrival)
            mirror.observe_delays(self._observe)
            self.mirrors[key] = mirror
            room.keys.add(key)
        return mirror

    def _keyframe_requester(self, key: int) -> Any:
        def request(media_ssrc: int) -> None:
            self.channel.notify("keyframe", key=key)

        return request

    def _restart(self, key: int) -> None:
        mirror = self.mirrors.get(key)
        if mirror is not None:
            mirror.connect_upstream(self._keyframe_requester(key), self._current_arrival)

    def _drop(self, key: int) -> None:
        mirror = self.mirrors.pop(key, None)
        if mirror is not None:
            self._retired_out += mirror.stats.packets_out
            mirror.close()
        for room in self.rooms.values():
            room.keys.discard(key)

    def _sources(self, room: WorkerRoom, described: list[tuple[int, Any, Any]]) -> dict[str, TrackSource]:
        sources = {}
        for key, info, codec in described:
            sources[info.source_id] = self._mirror(room, key, info, codec)
        return sources

    # viewers
    def _room(self, room_id: str) -> WorkerRoom:
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = WorkerRoom(room_id)
        return room

    def _new_viewer(self, body: dict[str, Any], offers: bool) -> tuple[WorkerRoom, Viewer]:
        ref = int(body["ref"])
        room = self._room(body["room"])

        async def send_offer(viewer: Viewer, payload: dict[str, Any]) -> None:
            await self.channel.request("offer", ref=ref, payload=payload)

        viewer = Viewer(body["viewer"], body["user"], send_offer if offers else None)
        viewer.on_failed = lambda _: self.channel.notify("failed", ref=ref)
        room.viewers[ref] = viewer
        self.viewers[ref] = (room, viewer)
        return room, viewer

    async def _leave(self, ref: int) -> bool:
        entry = self.viewers.pop(ref, None)
        if entry is None:
            return False
        room, viewer = entry
        room.viewers.pop(ref, None)
        await viewer.close()
        if not room.viewers and self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]
            for key in list(room.keys):
                self._drop(key)
        return True

    # requests from the instance
    async def handle(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "hello":
            return {"pid": os.getpid()}
        if op == "update":
            found = self.viewers.get(int(body["ref"]))
            room, viewer = found if found is not None else self._new_viewer(body, bool(body["offers"]))
            await viewer.update(self._sources(room, body["sources"]))
            return {}
        if op == "whep":
            room, viewer = self._new_viewer(body, False)
            try:
                return {"sdp": await viewer.answer_offer(body["sdp"], self._sources(room, body["sources"]))}
            except BaseException:
                await self._leave(int(body["ref"]))
                raise
        if op == "answer":
            entry = self.viewers.get(int(body["ref"]))
            if entry is None:
                raise MediaError("invalid_state", "send media:watch first")
            await entry[1].accept_answer(body["sdp"])
            return {}
        if op == "leave":
            return {"left": await self._leave(int(body["ref"]))}
        if op == "drop":
            self._drop(int(body["key"]))
            return None
        if op == "restart":
            self._restart(int(body["key"]))
            return None
        if op == "inspect":
            return self.inspect()
        raise MediaError("invalid", f"unknown worker request {op!r}")

    def inspect(self) -> dict[str, Any]:
        """What this worker holds, for tests and operators."""
        gc.collect()
        return {
            "pid": os.getpid(),
            "rooms": len(self.rooms),
            "viewers": len(self.viewers),
            "mirrors": len(self.mirrors),
            "sinks": sum(len(m.sinks) for m in self.mirrors.values()),
            "viewer_objects": sum(1 for o in gc.get_objects() if isinstance(o, Viewer)),
            "peer_connections": sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection)),
            "tasks": len(asyncio.all_tasks()),
        }

    # housekeeping: sender reports and figures
    async def housekeeping(self) -> None:
        last_reports = 0.0
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                now = time.monotonic()
                if now - last_reports >= 1.0:
                    last_reports = now
                    spread_sender_reports(list(self.viewers), self._viewer)
                self._send_figures()
            except Exception:
                log.exception("media worker housekeeping failed")

    def _viewer(self, ref: int) -> Viewer | None:
        entry = self.viewers.get(ref)
        return entry[1] if entry is not None else None

    def _send_figures(self) -> None:
        delays, self._delays = self._delays, array("d")
        packets_out = self._retired_out + sum(m.stats.packets_out for m in self.mirrors.values())
        self.channel.notify(
            "stats",
            packets_out=packets_out,
            late_drops=self.late_drops,
            send_drops=sum(sink.dropped for mirror in self.mirrors.values() for sink in mirror.sinks),
            viewers=len(self.viewers),
            delays=delays.tobytes(),
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.channel.open()
        loop.add_reader(self._data.fileno(), self.read_packets)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        # Ctrl-C in a terminal reaches the whole process group: the server shuts its workers down itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        housekeeping = asyncio.create_task(self.housekeeping(), name="media-worker-housekeeping")
        closed = asyncio.create_task(self.channel.closed.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        loop.remove_reader(self._data.fileno())
        for task in (housekeeping, closed, stopped):
            task.cancel()
        for ref in list(self.viewers):
            with contextlib.suppress(Exception):
                await self._leave(ref)
        await self.channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A live-classroom media worker (started by the server).")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--data-fd", type=int, required=True)
    parser.add_argument("--name", default="media-worker")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--fanout-threads", type=int, default=1)
    args = parser.parse_args()
    set_fanout_threads(args.fanout_threads)
    configure_logging(args.log_level, args.name)
    logging.getLogger("aioice").setLevel(logging.WARNING)  # a line per ICE check of every viewer
    control = socket.socket(fileno=args.control_fd)
    data = socket.socket(fileno=args.data_fd)
    data.setblocking(False)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(MediaWorker(control, data).run())


if __name__ == "__main__":
    main()
