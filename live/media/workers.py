"""Media worker processes: viewers' peer connections spread over several processes, so that forwarding
one room to many viewers uses every core.

The instance keeps the publishers (their RTP arrives here) and all signalling. Each viewer is placed on
the worker with the fewest viewers; a ``RemoteViewer`` stands for it in the room and delegates its
negotiation to the worker over the control channel (``live/media/ipc.py``). Every packet of a source
is handed once to each worker that holds viewers of its room (one datagram per worker, not per viewer);
the worker rewrites, protects and sends the copies of its own viewers with the per-packet path of
``live/media/forwarding.py``. Workers send back the viewers' keyframe requests (the source here
throttles them as for local viewers), offers for the viewers' clients and their figures.

A worker that dies is started again; its viewers are dropped from their rooms and their clients told
``media:restart``, so they watch again on a live worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import weakref
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from live.media.errors import MediaError
from live.media.forwarding import TrackSource
from live.media.ipc import KIND_PACKET, KIND_RESTART, PACKET, RESTART, Channel, socket_pairs
from live.media.viewer import LostHandler, OfferSender, ViewerPeer
from rooms.errors import RoomError

if TYPE_CHECKING:
    from live.media.room import MediaRoom

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
RESTART_DELAY_S = 0.5
PLACE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class WorkerFigures:
    """One worker process, as ``GET /api/media/stats`` shows it."""

    index: int
    pid: int | None
    alive: bool
    viewers: int
    restarts: int
    packets_out: int
    handover_drops: int  # packets not handed to the worker: its queue was full
    late_drops: int  # packets the worker received too late to forward
    send_drops: int  # copies to its current viewers lost: refused by their sockets, too large, or refused by libsrtp


def describe(sources: dict[str, TrackSource]) -> list[tuple[int, Any, Any]]:
    """What a worker needs to mirror the sources: (key, info, codec) of each."""
    return [(source.key, source.info, source.codec) for source in sources.values()]


class RemoteViewer:
    """A viewer whose peer connection lives in a media worker; the room uses it like a ``Viewer``."""

    _refs = itertools.count(1)

    def __init__(
        self,
        worker: WorkerProcess,
        room: MediaRoom,
        viewer_id: str,
        user_id: str,
        send_offer: OfferSender | None,
        on_lost: LostHandler | None,
    ) -> None:
        self.ref = next(self._refs)  # the viewer's name in the worker: unique even if viewer_id is reused
        self.worker = worker
        self.room = room
        self.viewer_id = viewer_id
        self.user_id = user_id
        self.send_offer = send_offer
        self.on_lost = on_lost
        self.on_failed: Callable[[Any], None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _body(self, sources: dict[str, TrackSource]) -> dict[str, Any]:
        self.worker.pool.remember(sources)
        return {
            "ref": self.ref,
            "room": self.room.room_id,
            "viewer": self.viewer_id,
            "user": self.user_id,
            "sources": describe(sources),
        }

    async def update(self, sources: dict[str, TrackSource]) -> None:
        """Create the viewer in its worker on first use; rebind it to ``sources`` (offering if needed)."""
        if self._closed:
            return
        await self.worker.channel.request("update", offers=self.send_offer is not None, **self._body(sources))

    async def answer_offer(self, offer_sdp: str, sources: dict[str, TrackSource]) -> str:
        """WHEP: the worker creates the viewer and answers its offer with ``sources``."""
        reply = await self.worker.channel.request("whep", sdp=offer_sdp, **self._body(sources))
        return str(reply["sdp"])

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the client's answer to the worker's last offer."""
        await self.worker.channel.request("answer", ref=self.ref, sdp=answer_sdp)

    def send_sender_reports(self) -> None:
        """The worker sends its viewers' sender reports itself."""

    async def close(self) -> None:
        """Close the viewer in its worker (nothing to do if the worker is gone)."""
        if self._closed:
            return
        self._closed = True
        self.worker.detach(self)
        if not self.worker.channel.closed.is_set():
            with contextlib.suppress(RoomError):
                await self.worker.channel.request("leave", ref=self.ref)


class WorkerProcess:
    """One running worker process: its control channel, its data socket, and the viewers placed on it.

    It is the ``Outlet`` that sources hand their packets to."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        (control, worker_control), (data, worker_data) = socket_pairs()
        self._worker_ends = (worker_control, worker_data)
        self.channel = Channel(control, self._handle, f"worker-{index}")
        self._data = data
        self._sendmsg = data.sendmsg
        self._send = data.send
        self.proc: asyncio.subprocess.Process | None = None
        self.viewers: dict[int, RemoteViewer] = {}
        self._rooms: dict[str, int] = {}  # room -> viewers of that room placed here
        self.ready = False
        self.dead = False
        self.packets_out = 0
        self.handover_drops = 0
        self.late_drops = 0
        self.send_drops = 0
        self._watch: asyncio.Task[None] | None = None

    # the process
    async def start(self) -> None:
        """Start the process with its ends of the socket pairs; returns once it answers."""
        worker_control, worker_data = self._worker_ends
        argv = [
            sys.executable,
            "-m",
            "live.media.worker_main",
            "--control-fd",
            str(worker_control.fileno()),
            "--data-fd",
            str(worker_data.fileno()),
            "--name",
            f"{self.pool.name}/media-{self.index}",
            "--log-level",
            self.pool.log_level,
            "--fanout-threads",
            str(self.pool.fanout_threads),
        ]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(worker_control.fileno(), worker_data.fileno()), stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            worker_control.close()
            worker_data.close()
        await self.channel.open()
        self._watch = asyncio.create_task(self._watch_process(), name=f"media-worker-{self.index}-watch")
        await self.channel.request("hello")
        self.ready = True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def _watch_process(self) -> None:
        assert self.proc is not None
        exited = asyncio.ensure_future(self.proc.wait())
        gone = asyncio.ensure_future(self.channel.closed.wait())
        try:
            await asyncio.wait([exited, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await exited
        self.pool.worker_died(self)

    async def stop(self) -> None:
        """Close the channel (the worker exits on it) and wait for the process; kill it if it lingers."""
        self.dead = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.channel.close()
        self._data.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()

    # placing viewers
    def attach(self, viewer: RemoteViewer) -> None:
        """Place ``viewer`` here; its room's packets start coming here if they did not yet."""
        self.viewers[viewer.ref] = viewer
        room = viewer.room
        count = self._rooms.get(room.room_id, 0)
        self._rooms[room.room_id] = count + 1
        if self not in room.outlets:
            room.outlets.append(self)

    def detach(self, viewer: RemoteViewer) -> None:
        """Forget ``viewer``; the last viewer of a room here stops that room's packets coming here."""
        if self.viewers.pop(viewer.ref, None) is None:
            return
        room = viewer.room
        count = self._rooms.get(room.room_id, 0) - 1
        if count > 0:
            self._rooms[room.room_id] = count
            return
        self._rooms.pop(room.room_id, None)
        if self in room.outlets:
            room.outlets.remove(self)

    # the Outlet interface: packets of sources whose room has viewers here
    def forward(self, key: int, arrival: float, ssrc: int, seq: int, ts: int, marker: int, payload: bytes) -> None:
        """Hand one packet to the worker: one datagram, however many viewers it has."""
        try:
            self._sendmsg([PACKET.pack(KIND_PACKET, key, arrival, ssrc, ts, seq, marker), payload])
        except OSError:  # the worker's queue is full (it is behind) or it is gone: the packet is lost
            self.handover_drops += 1

    def restart(self, key: int) -> None:
        """In order with the packets: the source changed publisher."""
        try:
            self._send(RESTART.pack(KIND_RESTART, key))
        except OSError:
            self.channel.notify("restart", key=key)

    def drop(self, key: int) -> None:
        """The source is gone: the worker forgets its mirror."""
        self.channel.notify("drop", key=key)

    # what the worker sends
    async def _handle(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "offer":
            viewer = self.viewers.get(body["ref"])
            if viewer is not None and not viewer.closed and viewer.send_offer is not None:
                await viewer.send_offer(viewer, body["payload"])
            return {}
        if op == "failed":
            viewer = self.viewers.get(body["ref"])
            if viewer is not None and viewer.on_failed is not None:
                viewer.on_failed(viewer)
            return None
        if op == "keyframe":
            source = self.pool.sources.get(body["key"])
            if source is not None:
                source.request_keyframe()
            return None
        if op == "stats":
            self.packets_out = int(body["packets_out"])
            self.late_drops = int(body["late_drops"])
            self.send_drops = int(body["send_drops"])
            delays = array("d")
            delays.frombytes(body["delays"])
            for i in range(0, len(delays) - 2, 3):
                self.pool.observe_delay(delays[i], delays[i + 1], delays[i + 2])
            return None
        raise MediaError("invalid", f"unknown worker message {op!r}")

    def figures(self) -> WorkerFigures:
        """This worker's figures, as last reported."""
        return WorkerFigures(
            index=self.index,
            pid=self.pid,
            alive=self.ready and not self.dead,
            viewers=len(self.viewers),
            restarts=self.pool.restarts[self.index],
            packets_out=self.packets_out,
            handover_drops=self.handover_drops,
            late_drops=self.late_drops,
            send_drops=self.send_drops,
        )


class WorkerPool:
    """``count`` worker processes, restarted when they die; places viewers on the least loaded one."""

    def __init__(
        self,
        count: int,
        observe_delay: Callable[[float, float, float], None],
        *,
        name: str,
        log_level: str,
        fanout_threads: int = 1,
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.count = count
        self.name = name
        self.log_level = log_level
        self.fanout_threads = fanout_threads
        self.observe_delay = observe_delay
        self.workers: list[WorkerProcess | None] = [None] * count
        self.restarts = [0] * count
        self.sources: weakref.WeakValueDictionary[int, TrackSource] = weakref.WeakValueDictionary()
        self._retired_out = 0
        self._retired_drops = 0
        self._closing = False
        self._placed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Start every worker; returns when all of them answer."""
        await asyncio.gather(*(self._start(i) for i in range(self.count)))

    async def _start(self, index: int) -> None:
        worker = WorkerProcess(self, index)
        self.workers[index] = worker
        try:
            await asyncio.wait_for(worker.start(), START_TIMEOUT_S)
        except BaseException:
            await worker.stop()
            raise
        async with self._placed:
            self._placed.notify_all()
        log.info("media worker %d started (pid %s)", index, worker.pid)

    def remember(self, sources: dict[str, TrackSource]) -> None:
        """Sources whose keyframe requests may come back from workers."""
        for source in sources.values():
            self.sources[source.key] = source

    def _live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None and w.ready and not w.dead]

    async def viewer(
        self,
        room: MediaRoom,
        viewer_id: str,
        user_id: str,
        send_offer: OfferSender | None,
        on_lost: LostHandler | None,
    ) -> ViewerPeer:
        """Place a new viewer on the worker with the fewest viewers (waiting for one if all are restarting)."""
        async with self._placed:
            try:
                await asyncio.wait_for(
                    self._placed.wait_for(lambda: bool(self._live()) or self._closing), PLACE_TIMEOUT_S
                )
            except TimeoutError:
                raise MediaError("unavailable", "no media worker is running; try again") from None
        live = self._live()
        if not live:
            raise MediaError("unavailable", "no media worker is running; try again")
        worker = min(live, key=lambda w: (len(w.viewers), w.index))
        viewer = RemoteViewer(worker, room, viewer_id, user_id, send_offer, on_lost)
        worker.attach(viewer)
        return viewer

    def worker_died(self, worker: WorkerProcess) -> None:
        """A worker exited: its viewers leave their rooms, their clients watch again; start a new one."""
        if worker.dead:
            return
        worker.dead = True
        self._retired_out += worker.packets_out
        self._retired_drops += worker.handover_drops
        code = worker.proc.returncode if worker.proc is not None else None
        viewers = list(worker.viewers.values())
        log.warning(
            "media worker %d (pid %s) exited with %s; %d viewers restart", worker.index, worker.pid, code, len(viewers)
        )
        for viewer in viewers:
            worker.detach(viewer)
            viewer._closed = True  # nothing left to close in the worker
            if viewer.on_failed is not None:
                viewer.on_failed(viewer)
            if viewer.on_lost is not None:
                self._spawn(viewer.on_lost())
        self._spawn(worker.stop())
        if not self._closing:
            self._spawn(self._restart(worker.index))

    async def _restart(self, index: int) -> None:
        delay = RESTART_DELAY_S
        while not self._closing:
            await asyncio.sleep(delay)
            self.restarts[index] += 1
            try:
                await self._start(index)
                return
            except Exception:
                log.exception("media worker %d did not start; trying again", index)
                delay = min(delay * 2, 10.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # figures
    @property
    def packets_out(self) -> int:
        """Copies sent to viewers by every worker since start."""
        return self._retired_out + sum(w.packets_out for w in self.workers if w is not None and not w.dead)

    def figures(self) -> tuple[WorkerFigures, ...]:
        """Each worker's figures, in index order."""
        return tuple(w.figures() for w in self.workers if w is not None)

    async def inspect(self) -> list[dict[str, Any]]:
        """What each live worker holds (viewers, rooms, mirrored sources, sinks, peer connections, tasks)."""
        return list(await asyncio.gather(*(w.channel.request("inspect") for w in self._live())))

    async def close(self) -> None:
        """Stop every worker (they close their viewers' connections) and restart none."""
        self._closing = True
        async with self._placed:
            self._placed.notify_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers if w is not None), return_exceptions=True)
