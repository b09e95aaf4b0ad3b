"""200 viewers join and leave in a loop (WHEP, each decoding before it leaves). Afterwards the server
holds no viewer, peer connection, task or file descriptor beyond what it held before."""

from __future__ import annotations

import asyncio
import gc
import os

import aiohttp
from aiortc import RTCPeerConnection

from live.media.viewer import Viewer
from rooms.identity import Role
from tests.conftest import AppFactory
from tests.media_support import SyntheticPublisher, WhepViewer, create_room, wait_for
from tests.support import Member, token

ROUNDS, AT_ONCE = 10, 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def test_two_hundred_viewers_come_and_go_without_leaks(start_app: AppFactory) -> None:
    url, services = await start_app()
    async with aiohttp.ClientSession() as http:
        await create_room(url, "leaks")
        teacher = Member(url, token("leaks", "t1", Role.TEACHER))
        publisher = SyntheticPublisher(video=True, audio=True)
        await teacher.connect()
        await teacher.join()
        ack = await teacher.call("media:publish", {"sdp": await publisher.offer()})
        assert ack["ok"], ack
        await publisher.accept(ack["sdp"])

        async def one_round(prefix: str) -> None:
            jwts = [token("leaks", f"{prefix}{i}") for i in range(AT_ONCE)]
            viewers = [WhepViewer() for _ in jwts]
            pairs = list(zip(viewers, jwts, strict=True))
            statuses = await asyncio.gather(*(v.start(http, url, "leaks", j) for v, j in pairs))
            assert statuses == [201] * AT_ONCE
            await wait_for(lambda: all(v.peer.frames["video"] > 0 for v in viewers), 15, "every viewer decoding")
            deleted = await asyncio.gather(*(v.delete(http, url, j) for v, j in pairs))
            assert deleted == [200] * AT_ONCE
            # The server hangs up: each viewer's own connection sees it close before the viewer closes it.
            await wait_for(
                lambda: all(v.peer.pc.connectionState in ("closed", "failed") for v in viewers), 10, "server hang-up"
            )
            for v in viewers:
                await v.peer.close()

        await one_round("warm")  # first use loads codecs and creates lazy state: not a leak
        await wait_for(lambda: services.media.figures().viewers == 0, 10, "warm-up viewers gone")
        await asyncio.sleep(0.5)
        baseline = (open_fds(), len(asyncio.all_tasks()), alive(RTCPeerConnection))

        for r in range(ROUNDS):
            await one_round(f"r{r}-")
        await wait_for(lambda: services.media.figures().viewers == 0, 10, "every viewer gone")

        def settled() -> bool:
            now = (open_fds(), len(asyncio.all_tasks()), alive(RTCPeerConnection))
            return all(n <= b for n, b in zip(now, baseline, strict=True))

        try:
            await wait_for(settled, 15, "fds, tasks and peer connections back to the baseline")
        except AssertionError:
            now = (open_fds(), len(asyncio.all_tasks()), alive(RTCPeerConnection))
            raise AssertionError(f"(fds, tasks, peer connections): baseline {baseline}, now {now}") from None
        assert open_fds() <= baseline[0]
        assert len(asyncio.all_tasks()) <= baseline[1]
        assert alive(Viewer) == 0
        assert services.media.figures().publishers == 1, "the teacher is still live"
        room = services.media.rooms["leaks"]
        assert all(not source.sinks for source in room.sources.values()), "no sink left on any track"

        await publisher.close()
        await teacher.close()
