"""Media fan-out: one publisher of 720p VP8 (about 1.2 Mbps) plus Opus, forwarded to ever more viewers.

The publisher sends through WHIP; viewers watch through WHEP, in separate processes, and count RTP
without decrypting or decoding it. Viewers are added in steps until more than 1% of the packets that
should reach them fall short, or the server's forwarding delay p99 passes 20 ms. At the last step that
held, the server's CPU time per packet per viewer gives viewers per core.

Then a viewer joining late, in this process, decodes: the time to its first decoded frame shows that
keyframe requests reach the publisher. Last, the baseline: aiortc's ``MediaRelay`` (decode once, encode
per viewer) in its own process, with the same clip and the same counting viewers, ramped one viewer at
a time until the viewers get less than 99% of the frames.

With ``--workers N`` the server runs N media worker processes (``LIVE_MEDIA_WORKERS``): viewers are spread
over them, the server's CPU time counts the workers too, and each step reports the viewers per worker and
the cores used by each process (the server first, then its workers).

Usage: python bench/media_fanout.py [--quick] [--workers N] [--profile DIR]. The last line printed is one JSON
object. ``--profile`` runs py-spy on the server (and its workers) during each step's measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import STUDENT, TEACHER, mint
from bench._media_peers import CountingViewer, clip_publisher, encode_clip, http_offer
from bench._servers import free_port, log, machine_busy, py_spy, start_live_instances, tree_cpu_seconds, wait_ready

ROOM = "media-bench"
FPS = 30
MAX_SHORTFALL = 0.01
MAX_FORWARD_P99_MS = 20.0


# --------------------------------------------------------------------------- the clip on disk


def save_clip(frames: list[bytes], path: Path) -> None:
    with open(path, "wb") as out:
        for frame in frames:
            out.write(struct.pack("!I", len(frame)) + frame)


def load_clip(path: Path) -> list[bytes]:
    data, frames, i = path.read_bytes(), [], 0
    while i < len(data):
        (size,) = struct.unpack_from("!I", data, i)
        frames.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return frames


# --------------------------------------------------------------------------- child roles


async def role_publisher(args: argparse.Namespace) -> None:
    """Publish the clip through WHIP and keep sending until killed."""
    pc, video = clip_publisher(load_clip(Path(args.clip)))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        answer = await http_offer(http, args.url, args.token, pc.localDescription.sdp)
    from aiortc import RTCSessionDescription

    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    while True:
        await asyncio.sleep(1)
        print(json.dumps({"frames": video.count, "restarts": video.restarts, "state": pc.connectionState}), flush=True)


async def role_viewers(args: argparse.Namespace) -> None:
    """Start ``count`` counting viewers; print their totals every half second."""
    viewers: list[CountingViewer] = []
    failed = 0
    async with aiohttp.ClientSession() as http:
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            nonlocal failed
            token = mint(args.secret, ROOM, f"{args.prefix}{i}", "student", STUDENT) if args.secret else None
            viewer = CountingViewer()
            async with gate:
                try:
                    await viewer.start(http, args.url, token)
                    viewers.append(viewer)
                except Exception as exc:  # reported, and counted as a viewer that gets nothing
                    failed += 1
                    print(json.dumps({"error": repr(exc)[:300]}), file=sys.stderr, flush=True)

        starting = asyncio.gather(*(one(i) for i in range(args.count)))
        while True:
            await asyncio.sleep(0.5)
            receiving = sum(1 for v in viewers if v.received)
            print(
                json.dumps(
                    {
                        "viewers": len(viewers),
                        "receiving": receiving,
                        "failed": failed,
                        "received": sum(v.received for v in viewers),
                        "frames": [v.video_frames for v in viewers],
                    }
                ),
                flush=True,
            )
            if starting.done() and starting.exception():
                raise starting.exception()  # type: ignore[misc]


async def role_relay(args: argparse.Namespace) -> None:
    """The baseline: aiortc's MediaRelay. The clip is published over loopback to an upstream peer that
    decodes it; each WHEP viewer gets ``relay.subscribe(track)``, so every viewer is encoded separately."""
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaRelay

    publisher, _ = clip_publisher(load_clip(Path(args.clip)))
    upstream = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: dict[str, Any] = {}
    upstream.on("track", lambda track: tracks.__setitem__(track.kind, track))
    await publisher.setLocalDescription(await publisher.createOffer())
    await upstream.setRemoteDescription(publisher.localDescription)
    await upstream.setLocalDescription(await upstream.createAnswer())
    await publisher.setRemoteDescription(upstream.localDescription)
    relay = MediaRelay()
    viewers: list[RTCPeerConnection] = []

    async def whep(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        viewers.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        for kind in ("video", "audio"):
            if kind in tracks:
                pc.addTrack(relay.subscribe(tracks[kind]))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp")

    app = web.Application()
    app.router.add_post("/whep", whep)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()  # serve until killed


# --------------------------------------------------------------------------- orchestration


class Worker:
    """A child process printing JSON lines; keeps the last one."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc, self.name, self.last = proc, name, {}
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, name: str, *argv: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
        )
        return cls(proc, name)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.last = json.loads(line)

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self.reader.cancel()


def process_cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def user_system_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children (the media workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for member in [pid, *children_of(pid)]:
        try:
            raw = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = Path(f"/proc/{entry}/stat").read_text()
                if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                    out.append(int(entry))
    return out


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def media_stats(http: aiohttp.ClientSession, url: str, auth: str, window_s: float | None = None) -> Any:
    query = f"?window_s={window_s}" if window_s else ""
    async with http.get(f"{url}/api/media/stats{query}", headers={"Authorization": auth}) as response:
        return await response.json()


async def late_join_first_frame_ms(http: aiohttp.ClientSession, whep_url: str, token: str) -> float:
    """A decoding viewer joins: ms from its WHEP request until its first decoded video frame."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def read(track: Any) -> None:
        with contextlib.suppress(Exception):
            await track.recv()
            if not first.done():
                first.set_result(time.monotonic())

    pc.on("track", lambda track: asyncio.ensure_future(read(track)) if track.kind == "video" else None)
    await pc.setLocalDescription(await pc.createOffer())
    started = time.monotonic()
    answer = await http_offer(http, whep_url, token, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    try:
        return (await asyncio.wait_for(first, 10) - started) * 1000
    finally:
        await pc.close()


async def ramp_sfu(args: argparse.Namespace, work: Path, clip: Path) -> dict[str, Any]:
    secret, api_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    auth = "Basic " + base64.b64encode(f"bench:{api_secret}".encode()).decode()
    env = {
        "LIVE_SECRET": secret,
        "LIVE_API_KEY": "bench",
        "LIVE_API_SECRET": api_secret,
        "LIVE_DATA_DIR": str(work / "data"),
        "LIVE_LOG_LEVEL": "WARNING",
        "LIVE_MEDIA_WORKERS": str(args.workers),
    }
    [(server, port)] = start_live_instances(1, env, work)
    url = f"http://127.0.0.1:{port}"
    workers: list[Worker] = []
    try:
        await wait_ready(f"{url}/readyz", [server], 60)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/api/rooms", json={"id": ROOM, "title": "Media bench"}, headers={"Authorization": auth}
            ) as response:
                assert response.status == 201, await response.text()
            teacher = mint(secret, ROOM, "teacher", "teacher", TEACHER)
            publisher = await Worker.start(
                "publisher",
                "--role",
                "publisher",
                "--url",
                f"{url}/whip/{ROOM}",
                "--token",
                teacher,
                "--clip",
                str(clip),
            )
            workers.append(publisher)
            await wait_until(lambda: publisher.last.get("state") == "connected", 20, "the publisher")
            whep = f"{url}/whep/{ROOM}"
            result: dict[str, Any] = {}
            steps: list[list[Any]] = []
            viewers = 0
            for step in range(args.max_viewers // args.step):
                worker = await Worker.start(
                    f"viewers-{step}",
                    "--role",
                    "viewers",
                    "--url",
                    whep,
                    "--secret",
                    secret,
                    "--count",
                    str(args.step),
                    "--prefix",
                    f"s{step}-",
                )
                workers.append(worker)
                viewers += args.step
                vs = [w for w in workers if w.name.startswith("viewers")]
                await wait_until(
                    lambda vs=vs: all(w.last.get("receiving", 0) + w.last.get("failed", 0) >= args.step for w in vs),
                    60,
                    f"{viewers} viewers receiving",
                )
                await asyncio.sleep(1.0)  # let the step settle
                before = await media_stats(http, url, auth)
                cpu0 = tree_cpu_seconds([server.pid])[server.pid]
                _user0, system0 = user_system_seconds(server.pid)
                members = [server.pid, *sorted(children_of(server.pid))]
                split0 = process_cpu_seconds(members)
                busy0, total0 = machine_busy()
                got0 = sum(w.last.get("received", 0) for w in vs)
                t0 = time.monotonic()
                spies = []
                if args.profile is not None:  # every step, each into its own file (the last one kept is the peak)
                    spies = [await py_spy(pid, args.profile / f"{viewers}-{pid}.txt", args.hold) for pid in members]
                await asyncio.sleep(args.hold)
                for spy in spies:
                    await spy.wait()
                after = await media_stats(http, url, auth, window_s=args.hold)
                cpu1 = tree_cpu_seconds([server.pid])[server.pid]
                _user1, system1 = user_system_seconds(server.pid)
                split1 = process_cpu_seconds(members)
                busy1, total1 = machine_busy()
                got1 = sum(w.last.get("received", 0) for w in vs)
                elapsed = time.monotonic() - t0
                packets_in = after["packets_in"] - before["packets_in"]
                packets_out = after["packets_out"] - before["packets_out"]
                expected = packets_in * viewers
                received = got1 - got0
                shortfall = max(0.0, 1 - received / expected) if expected else 1.0
                cpu = cpu1 - cpu0
                row = {
                    "viewers": viewers,
                    "server_cores": round(cpu / elapsed, 3),
                    "pps_in": round(packets_in / elapsed, 1),
                    "shortfall": round(shortfall, 4),
                    "sent_ratio": round(packets_out / expected, 4) if expected else None,
                    "forward_p50_ms": after["forward_p50_ms"],
                    "forward_p99_ms": after["forward_p99_ms"],
                    "wait_p99_ms": after.get("forward_wait_p99_ms"),
                    "pass_p99_ms": after.get("forward_pass_p99_ms"),
                    "cpu_us_per_packet_per_viewer": round(cpu / packets_out * 1e6, 2) if packets_out else None,
                    "machine_busy": round((busy1 - busy0) / (total1 - total0), 2),
                    "system_share": round((system1 - system0) / cpu, 2) if cpu else None,
                    "failed": sum(w.last.get("failed", 0) for w in vs),
                    "worker_viewers": [w["viewers"] for w in after.get("workers", [])],
                    "cores_by_process": [
                        round((split1[pid] - split0[pid]) / elapsed, 3)
                        for pid in members
                        if pid in split0 and pid in split1
                    ],
                    "handover_drops": sum(w["handover_drops"] for w in after.get("workers", [])),
                    "late_drops": sum(w["late_drops"] for w in after.get("workers", [])),
                    "send_drops": sum(w["send_drops"] for w in after.get("workers", [])),
                }
                log(f"sfu step: {row}")
                steps.append([viewers, row["forward_p99_ms"], row["shortfall"], row["cores_by_process"]])
                held = shortfall <= MAX_SHORTFALL and (row["forward_p99_ms"] or 0) <= MAX_FORWARD_P99_MS
                if not held:
                    break
                result = row
            log("late join: a decoding viewer")
            late_ms = await late_join_first_frame_ms(http, whep, mint(secret, ROOM, "late", "student", STUDENT))
            result["late_join_first_frame_ms"] = round(late_ms, 1)
            result["steps"] = steps
            return result
    finally:
        for w in workers:
            await w.stop()
        server.stop()


async def ramp_relay(args: argparse.Namespace, work: Path, clip: Path) -> dict[str, Any]:
    port = free_port()
    relay = await Worker.start("relay", "--role", "relay", "--port", str(port), "--clip", str(clip))
    workers: list[Worker] = []
    best: dict[str, Any] = {"viewers": 0, "server_cores": None}
    try:
        await wait_until(lambda: relay.last.get("ready"), 30, "the relay")
        await asyncio.sleep(2)
        for viewers in range(1, args.relay_max + 1):
            worker = await Worker.start(
                f"relay-viewer-{viewers}",
                "--role",
                "viewers",
                "--url",
                f"http://127.0.0.1:{port}/whep",
                "--count",
                "1",
                "--prefix",
                "r",
            )
            workers.append(worker)
            await wait_until(lambda: all(w.last.get("receiving") for w in workers), 30, "relay viewers")
            await asyncio.sleep(1.5)
            frames0 = [f for w in workers for f in w.last.get("frames", [])]
            cpu0 = tree_cpu_seconds([relay.proc.pid])[relay.proc.pid]
            t0 = time.monotonic()
            await asyncio.sleep(args.hold)
            frames1 = [f for w in workers for f in w.last.get("frames", [])]
            cpu1 = tree_cpu_seconds([relay.proc.pid])[relay.proc.pid]
            elapsed = time.monotonic() - t0
            rates = [(b - a) / elapsed for a, b in zip(frames0, frames1, strict=True)]
            worst = min(rates) if rates else 0.0
            cores = (cpu1 - cpu0) / elapsed
            log(f"relay step: viewers={viewers} worst_fps={worst:.1f} cores={cores:.2f}")
            if worst < FPS * (1 - MAX_SHORTFALL) - 0.5:
                break
            best = {"viewers": viewers, "server_cores": round(cores, 3)}
        return best
    finally:
        for w in workers:
            await w.stop()
        await relay.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="media-bench-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before anything runs)
        log(f"encoding the clip: {args.clip_frames} frames of 1280x720 VP8 at 1.2 Mbps")
        clip = work / "clip.vp8s"
        save_clip(encode_clip(1280, 720, FPS, args.clip_frames, 1_200_000), clip)
        sfu = await ramp_sfu(args, work, clip)
        relay = await ramp_relay(args, work, clip)
    viewers_per_core = round(sfu["viewers"] / sfu["server_cores"]) if sfu.get("server_cores") else 0
    relay_per_core = round(relay["viewers"] / relay["server_cores"], 2) if relay.get("server_cores") else 0.0
    return {
        "workers": args.workers,
        "viewers_per_core": viewers_per_core,
        "cpu_us_per_packet_per_viewer": sfu.get("cpu_us_per_packet_per_viewer"),
        "forward_p99_ms": sfu.get("forward_p99_ms"),
        "late_join_first_frame_ms": sfu.get("late_join_first_frame_ms"),
        "relay_baseline_viewers_per_core": relay_per_core,
        "ratio_vs_relay": round(viewers_per_core / relay_per_core, 1) if relay_per_core else None,
        "viewers_sustained": sfu.get("viewers"),
        "server_cores_at_max": sfu.get("server_cores"),
        "shortfall_at_max": sfu.get("shortfall"),
        "pps_per_viewer": sfu.get("pps_in"),
        "relay_viewers_sustained": relay.get("viewers"),
        "worker_viewers_at_max": sfu.get("worker_viewers"),
        "steps_viewers_p99_shortfall_cores_by_process": sfu.get("steps"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a run under a minute")
    p.add_argument("--role", choices=["main", "publisher", "viewers", "relay"], default="main")
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("--secret")
    p.add_argument("--clip")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--prefix", default="s")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--step", type=int, default=50, help="viewers added per step")
    p.add_argument("--max-viewers", type=int, default=1000)
    p.add_argument("--hold", type=float, default=5.0, help="seconds measured per step")
    p.add_argument("--relay-max", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="media worker processes in the server (0: none)")
    p.add_argument("--work", help="keep the server's log and data here instead of a temporary directory")
    p.add_argument("--profile", type=Path, help="py-spy the server (and workers) at each step, into this directory")
    args = p.parse_args()
    roles = {"publisher": role_publisher, "viewers": role_viewers, "relay": role_relay}
    if args.role in roles:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(roles[args.role](args))
        return
    args.clip_frames = 150
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.step, args.max_viewers, args.hold, args.relay_max, args.clip_frames = 50, 200, 2.5, 3, 60
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
