"""With LIVE_MEDIA_WORKERS=2 one room's viewers are spread over two worker processes: the teacher's
packets are handed to each worker once and every worker forwards to its own viewers. Real aiortc peers
decode everything (socket viewers and WHEP viewers), a late joiner gets a keyframe within a second, a
republishing teacher continues for every viewer, a killed worker is started again and its viewers watch
again through ``media:restart``, and viewers that leave leave nothing in the workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from live.config import ConfigError
from live.media.workers import RemoteViewer
from tests.conftest import AppFactory
from tests.conftest import test_settings as settings_from
from tests.media_support import (
    SocketViewer,
    SyntheticPublisher,
    WhepViewer,
    close_all,
    late_viewer,
    lesson,
    wait_for,
)
from tests.support import ADMIN_AUTH, token

ROOM = "many-cores"


def placement(services: object) -> dict[str, int]:
    """Which worker each viewer (by user) is on."""
    room = services.media.rooms[ROOM]  # type: ignore[attr-defined]
    out = {}
    for viewer in room.viewers.values():
        assert isinstance(viewer, RemoteViewer)
        out[viewer.user_id] = viewer.worker.index
    return out


def decoding(viewers: list[SocketViewer] | list[WhepViewer], since: dict[int, int] | None = None) -> bool:
    since = since or {}
    return all(v.peer.frames["video"] >= since.get(id(v), 0) + 30 and v.peer.frames["audio"] >= 30 for v in viewers)


async def test_two_workers_share_one_room_and_recover_from_a_killed_worker(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_MEDIA_WORKERS="2")
    pool = services.media.workers
    assert pool is not None
    assert [w.alive for w in services.media.figures().workers] == [True, True]
    teacher, students = await lesson(url, ROOM, 6)
    publisher = SyntheticPublisher()
    viewers: list[SocketViewer] = []
    whep = [WhepViewer(), WhepViewer()]
    async with aiohttp.ClientSession() as http:
        try:
            ack = await teacher.call("media:publish", {"sdp": await publisher.offer()})
            assert ack["ok"], ack
            await publisher.accept(ack["sdp"])
            for s in students[:4]:
                viewer = SocketViewer(s)
                viewers.append(viewer)
                await viewer.watch()
            jwts = [token(ROOM, f"w{i}") for i in range(len(whep))]
            for w, jwt in zip(whep, jwts, strict=True):
                assert await w.start(http, url, ROOM, jwt) == 201

            await wait_for(lambda: decoding(viewers) and decoding(whep), 20, "every viewer decoding on the workers")
            for v in [*viewers, *whep]:
                assert v.peer.sizes == {(320, 240)}

            # Both workers hold viewers of this one room; the stats endpoint shows it too.
            placed = placement(services)
            assert sorted(placed.values()) == [0, 0, 0, 1, 1, 1], placed
            async with http.get(f"{url}/api/media/stats", headers=ADMIN_AUTH) as response:
                stats = await response.json()
            assert [w["viewers"] for w in stats["workers"]] == [3, 3], stats["workers"]
            assert stats["viewers"] == 6 and stats["publishers"] == 1
            await wait_for(lambda: services.media.figures().packets_out > 0, 5, "workers' figures")
            figures = services.media.figures()
            assert all(w.packets_out > 0 for w in figures.workers), figures.workers
            assert figures.forward_p99_ms is not None  # workers' delays reach the instance
            held = await pool.inspect()
            assert [h["viewers"] for h in held] == [3, 3] and all(h["mirrors"] == 2 for h in held), held

            # A late joiner decodes its first frame within a second: its worker's keyframe request arrives.
            await asyncio.sleep(3)
            late, first_frame_ms = await late_viewer(students[4])
            viewers.append(late)
            assert first_frame_ms < 1000, f"late viewer's first frame after {first_frame_ms:.0f} ms"

            # WHEP viewers leave: nothing of them is left in their workers.
            for w, jwt in zip(whep, jwts, strict=True):
                assert await w.delete(http, url, jwt) == 200
            await wait_for(lambda: len(placement(services)) == 5, 5, "WHEP viewers gone")
            assert sum(h["viewers"] for h in await pool.inspect()) == 5

            # The teacher reconnects (a reload): every viewer continues without a new offer.
            offers_before = [sum(1 for o in v.offers if o["sdp"]) for v in viewers]
            frames_before = {id(v): v.peer.frames["video"] for v in viewers}
            await publisher.close()
            publisher = SyntheticPublisher()
            ack = await teacher.call("media:publish", {"sdp": await publisher.offer()})
            assert ack["ok"], ack
            await publisher.accept(ack["sdp"])
            await wait_for(lambda: decoding(viewers, frames_before), 15, "viewers decoding the new connection")
            assert [sum(1 for o in v.offers if o["sdp"]) for v in viewers] == offers_before
            assert all(h["mirrors"] == 2 for h in await pool.inspect())

            # A worker is killed: it is started again, and its viewers watch again and decode.
            placed = placement(services)
            victim = services.media.figures().workers[0]
            on_victim = {user for user, index in placed.items() if index == 0}
            assert victim.pid is not None and on_victim
            frames_before = {id(v): v.peer.frames["video"] for v in viewers}
            os.kill(victim.pid, signal.SIGKILL)
            await wait_for(
                lambda: services.media.figures().workers[0].alive and services.media.figures().workers[0].restarts == 1,
                20,
                "the worker started again",
            )
            assert services.media.figures().workers[0].pid != victim.pid
            await wait_for(lambda: len([v for v in viewers if v.restarts]) == len(on_victim), 10, "media:restart")
            restarted = [v for v in viewers if v.restarts]
            await wait_for(
                lambda: all(v.peer.frames["video"] >= 30 and v.peer.frames["audio"] >= 30 for v in restarted),
                20,
                "restarted viewers decoding again",
            )
            await wait_for(lambda: decoding(viewers, frames_before), 20, "every viewer decoding after the restart")
            assert len(placement(services)) == 5

            # Every viewer leaves: the workers hold nothing, the room hands no packet to any worker.
            for v in viewers:
                left = await v.member.call("media:leave", {})
                assert left["ok"] and left["left"], left
            await wait_for(lambda: not services.media.rooms[ROOM].viewers, 5, "viewers gone from the room")

            async def empty() -> bool:
                held = await pool.inspect()
                return all(
                    h["viewers"] == h["rooms"] == h["mirrors"] == h["viewer_objects"] == h["peer_connections"] == 0
                    for h in held
                )

            for _ in range(100):
                if await empty():
                    break
                await asyncio.sleep(0.1)
            held = await pool.inspect()
            assert await empty(), json.dumps(held)
            assert services.media.rooms[ROOM].outlets == []
            assert [w.viewers for w in services.media.figures().workers] == [0, 0]

            ended = await teacher.call("room:end", {})
            assert ended["ok"], ended
            await wait_for(lambda: not services.media.rooms, 10, "the room's media to close")
        finally:
            await close_all(viewers, [w.peer for w in whep], publisher, [teacher, *students])


async def test_a_room_ending_closes_its_viewers_in_every_worker(start_app: AppFactory) -> None:
    url, services = await start_app(LIVE_MEDIA_WORKERS="2")
    pool = services.media.workers
    assert pool is not None
    teacher, students = await lesson(url, "short", 4)
    publisher = SyntheticPublisher()
    viewers = [SocketViewer(s) for s in students]
    try:
        ack = await teacher.call("media:publish", {"sdp": await publisher.offer()})
        assert ack["ok"], ack
        await publisher.accept(ack["sdp"])
        for v in viewers:
            await v.watch()
        await wait_for(lambda: decoding(viewers), 20, "every viewer decoding")
        assert sorted(h["viewers"] for h in await pool.inspect()) == [2, 2]
        ended = await teacher.call("room:end", {})
        assert ended["ok"], ended
        await wait_for(lambda: not services.media.rooms, 10, "the room's media to close")
        held = await pool.inspect()
        assert all(h["viewers"] == h["rooms"] == h["mirrors"] == 0 for h in held), held
        assert [w.viewers for w in services.media.figures().workers] == [0, 0]
    finally:
        await close_all(viewers, publisher, [teacher, *students])


def test_the_worker_setting_takes_a_number_or_auto(tmp_path: Path) -> None:
    assert settings_from(tmp_path).media_workers == 0
    assert settings_from(tmp_path, LIVE_MEDIA_WORKERS="3").media_workers == 3
    assert settings_from(tmp_path, LIVE_MEDIA_WORKERS="auto").media_workers == max(1, os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="LIVE_MEDIA_WORKERS"):
        settings_from(tmp_path, LIVE_MEDIA_WORKERS="many")


def test_the_fanout_threads_setting_is_bounded(tmp_path: Path) -> None:
    assert settings_from(tmp_path).media_fanout_threads == 1
    assert settings_from(tmp_path, LIVE_MEDIA_FANOUT_THREADS="4").media_fanout_threads == 4
    for bad in ("0", "65", "all"):
        with pytest.raises(ConfigError, match="LIVE_MEDIA_FANOUT_THREADS"):
            settings_from(tmp_path, LIVE_MEDIA_FANOUT_THREADS=bad)
