"""The browser pages and their assets. The Socket.IO client comes from npm (static/node_modules)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

SOCKET_IO_CLIENT = Path("node_modules/socket.io-client/dist/socket.io.min.js")


class Pages:
    """The student and studio pages, static assets, and the npm socket.io client."""

    def __init__(self, static_dir: Path) -> None:
        self.static_dir = static_dir

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._file("index.html"))
        app.router.add_get("/room", self._file("room.html"))
        app.router.add_get("/studio", self._file("studio.html"))
        app.router.add_get("/static/vendor/socket.io.min.js", self.socket_io_client)
        app.router.add_static("/static/", self.static_dir, follow_symlinks=False, append_version=False)

    def _file(self, name: str) -> Handler:
        path = self.static_dir / name

        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": "text/html"})

        return page

    async def socket_io_client(self, request: web.Request) -> web.StreamResponse:
        path = self.static_dir / SOCKET_IO_CLIENT
        if not path.is_file():
            return web.Response(
                status=503,
                text="socket.io-client is not installed: run `npm ci --prefix static`\n",
                content_type="text/plain",
            )
        return web.FileResponse(path, headers={"Content-Type": "text/javascript"})
