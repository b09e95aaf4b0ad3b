"""The ``live-classroom`` command: ``serve``, ``token`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from live.auth import DEFAULT_TTL_S, MAX_TTL_S, mint_token
from live.config import ConfigError, Settings
from live.logs import configure_logging
from rooms.identity import Role

DEMO_ROOM = "demo"
DEMO_COURSE_ID = "demo-python"
DEMO_COURSE: dict[str, str | int] = {
    "title": "Python for beginners",
    "description": "Twelve recorded lessons and weekly live Q&A.",
    "price_minor": 4900,
    "currency": "usd",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``live-classroom`` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="live-classroom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (configured by LIVE_* environment variables)")
    serve.add_argument("--host", help="address to bind (LIVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (LIVE_PORT, default 8080)")

    token = sub.add_parser("token", help="print a join token (or, with --link, the page link)")
    token.add_argument("--room", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--name", required=True)
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help=f"seconds, at most {MAX_TTL_S}")
    token.add_argument("--link", action="store_true", help="print the studio/room page link instead")

    demo = sub.add_parser("demo", help="run on the embedded default with a demo room, and print links")
    demo.add_argument("--host", default=None)
    demo.add_argument("--port", type=int, default=None)

    args = parser.parse_args(argv)
    try:
        overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
        settings = Settings.from_env(**overrides)
    except ConfigError as exc:
        print(f"live-classroom: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _token(settings, args)
    from live.app import create_app  # the server's imports are heavy; `token` does not need them

    configure_logging(settings.log_level, settings.instance_id)
    app = create_app(settings)
    if args.command == "demo":
        app.cleanup_ctx.append(_demo_room(settings))
    _tune_gc()
    web.run_app(app, host=settings.host, port=settings.port, print=None, shutdown_timeout=3, access_log=None)
    return 0


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections. Every event allocates, so with the default threshold (700)
    young collections run thousands of times a second, and each full collection walks every object of
    every connection. Objects alive at startup (modules, the app) are frozen out of collections."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    role = Role(args.role)
    try:
        value = mint_token(
            settings.secret, room_id=args.room, user_id=args.user, name=args.name, role=role, ttl_s=args.ttl
        )
    except ValueError as exc:
        print(f"live-classroom token: {exc}", file=sys.stderr)
        return 2
    print(settings.page_link(role, value) if args.link else value)
    return 0


def _demo_room(settings: Settings):  # type: ignore[no-untyped-def]
    from live.app import SERVICES
    from rooms.service import RoomStatus

    async def demo_room(app: web.Application) -> AsyncIterator[None]:
        rooms = app[SERVICES].rooms
        room_id = DEMO_ROOM
        for n in range(2, 1000):
            room = await rooms.get(room_id)
            if room is None:
                await rooms.create("Demo lesson", room_id=room_id)
                break
            if room.status is not RoomStatus.ENDED:
                break
            room_id = f"{DEMO_ROOM}-{n}"  # an ended lesson stays ended; start a fresh one
        await rooms.go_live(room_id)
        catalogue = app[SERVICES].sales.catalogue
        if await catalogue.get(DEMO_COURSE_ID) is None:
            await catalogue.create({"id": DEMO_COURSE_ID, **DEMO_COURSE})
        await catalogue.allow(room_id, DEMO_COURSE_ID)  # the studio can pin it and run a flash sale
        teacher = mint_token(settings.secret, room_id=room_id, user_id="teacher", name="Teacher", role=Role.TEACHER)
        student = mint_token(settings.secret, room_id=room_id, user_id="student-1", name="Student", role=Role.STUDENT)
        engine, data = settings.engine_name, settings.data_dir
        print(f"\nlive-classroom demo is running ({engine} engine, data in {data})\n", flush=True)
        print(f"  teacher studio: {settings.page_link(Role.TEACHER, teacher)}", flush=True)
        print(f"  student room:   {settings.page_link(Role.STUDENT, student)}\n", flush=True)
        print(
            f"  More students: live-classroom token --room {room_id} --user s2 --name Ana --role student --link\n",
            flush=True,
        )
        yield

    return demo_room


if __name__ == "__main__":
    sys.exit(main())
