"""An external WHIP encoder (Debian's simple-whip-client, on GStreamer's webrtcbin) publishes into a room;
a WHEP viewer and a room-socket viewer, both aiortc, decode it. WHIP with a missing, bad, foreign-room
or non-publisher token gets 401/403 and creates nothing; ``DELETE`` ends the session."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from rooms.identity import Role
from tests.conftest import AppFactory
from tests.media_support import SocketViewer, WhepViewer, create_room, wait_for
from tests.support import ADMIN_AUTH, Member, token

WHIP_DIR = Path(__file__).resolve().parent / "whip"
VIDEO = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! "
    "queue ! vp8enc deadline=1 ! rtpvp8pay pt=96 ssrc=2 ! queue ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96"
)
AUDIO = (
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! queue ! opusenc ! "
    "rtpopuspay pt=100 ssrc=1 ! queue ! application/x-rtp,media=audio,encoding-name=OPUS,payload=100"
)


@pytest.fixture(scope="session")
def whip_client_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment simple-whip-client runs in: our libgupnp-igd stub first (tests/whip/README.md)."""
    assert shutil.which("whip-client"), "install simple-whip-client (scripts/test does)"
    out = tmp_path_factory.mktemp("whip-stub")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libgupnp-igd-1.0.so.4",
            "-o",
            str(out / "libgupnp-igd-1.0.so.4"),
            str(WHIP_DIR / "gupnp_igd_stub.c"),
        ],
        check=True,
    )
    return {**os.environ, "LD_LIBRARY_PATH": str(out), "GST_DEBUG": "0"}


@pytest.fixture
async def encoder_log(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path / "whip-client.log"


def start_encoder(whip_url: str, jwt: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """simple-whip-client with its candidates in the offer (-n), publishing a test pattern and a tone."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            ["whip-client", "-u", whip_url, "-t", jwt, "-n", "-V", VIDEO, "-A", AUDIO],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


async def test_external_encoder_publishes_and_viewers_decode(
    start_app: AppFactory, whip_client_env: dict[str, str], encoder_log: Path
) -> None:
    url, services = await start_app()
    await create_room(url, "studio")
    teacher = token("studio", "t1", Role.TEACHER)
    encoder = start_encoder(f"{url}/whip/studio", teacher, whip_client_env, encoder_log)
    student = Member(url, token("studio", "s-socket"))
    whep = WhepViewer()
    socket_viewer: SocketViewer | None = None
    try:
        try:
            await wait_for(lambda: services.media.figures().packets_in > 30, 20, "the encoder's packets")
        except AssertionError:
            raise AssertionError(tail(encoder_log)) from None
        figures = services.media.figures()
        assert figures.publishers == 1 and figures.tracks == 2

        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            assert await whep.start(http, url, "studio", token("studio", "s-whep")) == 201
            await wait_for(lambda: whep.peer.frames["video"] > 0, 5, "the WHEP viewer's first frame")
            first_frame_ms = (whep.peer.first_frame_at["video"] - started) * 1000
            await student.connect()
            await student.join()
            socket_viewer = SocketViewer(student)
            await socket_viewer.watch()
            viewers = [whep.peer, socket_viewer.peer]
            await wait_for(
                lambda: all(p.frames["video"] >= 20 and p.frames["audio"] >= 20 for p in viewers), 15, "decoding"
            )
        assert whep.peer.sizes == {(320, 240)} and socket_viewer.peer.sizes == {(320, 240)}
        assert first_frame_ms < 1000, f"first frame after {first_frame_ms:.0f} ms: keyframe request not honoured?"

        # The encoder stops: it DELETEs its session, and the tracks go at once (no republish grace).
        encoder.send_signal(signal.SIGINT)
        await asyncio.to_thread(encoder.wait, 10)
        await wait_for(lambda: services.media.figures().tracks == 0, 10, "the stream to end")
        assert "Disconnecting from server" in tail(encoder_log)
    finally:
        if encoder.poll() is None:
            encoder.kill()
        await whep.peer.close()
        if socket_viewer is not None:
            await socket_viewer.close()
        await student.close()


async def offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def test_whip_and_whep_refusals_create_nothing(start_app: AppFactory) -> None:
    url, services = await start_app()
    await create_room(url, "maths")
    await create_room(url, "over")
    sdp = (await offer_sdp()).encode()
    teacher = token("maths", "t1", Role.TEACHER)

    async with aiohttp.ClientSession() as http:

        async def post(path: str, jwt: str | None, body: bytes = sdp, kind: str = "application/sdp") -> int:
            headers = {"Content-Type": kind}
            if jwt is not None:
                headers["Authorization"] = f"Bearer {jwt}"
            async with http.post(f"{url}{path}", data=body, headers=headers) as response:
                return int(response.status)

        assert await post("/whip/maths", None) == 401
        assert await post("/whip/maths", "not-a-token") == 401
        assert await post("/whip/maths", token("maths", "t1", Role.TEACHER, secret="x" * 40)) == 401
        assert await post("/whip/maths", token("physics", "t1", Role.TEACHER)) == 403, "token for another room"
        assert await post("/whip/maths", token("maths", "s1")) == 403, "students have no publish grant"
        assert await post("/whip/maths", teacher, kind="text/plain") == 415
        assert await post("/whip/maths", teacher, body=b"v=0\r\n" + b"a=x\r\n" * 10_000) == 413
        assert await post("/whip/maths", teacher, body=b"this is not sdp") == 400
        assert await post("/whip/nowhere", token("nowhere", "t1", Role.TEACHER)) == 404
        async with http.post(f"{url}/api/rooms/over/end", headers=ADMIN_AUTH) as response:
            assert response.status == 200
        assert await post("/whip/over", token("over", "t1", Role.TEACHER)) == 409, "the lesson has ended"
        assert await post("/whep/maths", token("maths", "s1")) == 409, "nobody is publishing"
        assert await post("/whep/maths", None) == 401

        async with http.patch(f"{url}/whip/maths/whip-x", headers={"Authorization": f"Bearer {teacher}"}) as r:
            assert r.status == 405
        async with http.delete(f"{url}/whip/maths/whip-x", headers={"Authorization": f"Bearer {teacher}"}) as r:
            assert r.status == 404
        async with http.options(f"{url}/whip/maths") as r:
            assert r.status == 204 and r.headers["Accept-Post"] == "application/sdp"

        figures = services.media.figures()
        assert (figures.rooms, figures.publishers, figures.viewers, figures.tracks) == (0, 0, 0, 0)

        # A session belongs to whoever created it.
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {teacher}"}
        async with http.post(f"{url}/whip/maths", data=sdp, headers=headers) as response:
            assert response.status == 201 and response.content_type == "application/sdp"
            location = response.headers["Location"]
        assert location.startswith("/whip/maths/whip-")
        other = token("maths", "t2", Role.TEACHER)
        async with http.delete(f"{url}{location}", headers={"Authorization": f"Bearer {other}"}) as r:
            assert r.status == 403
        async with http.delete(f"{url}{location}", headers={"Authorization": f"Bearer {teacher}"}) as r:
            assert r.status == 200
        assert services.media.figures().publishers == 0
