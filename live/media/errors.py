"""Media refusals share the room error type, so sockets and HTTP map them the same way."""

from __future__ import annotations

from typing import Any

from rooms.errors import RoomError


class MediaError(RoomError):
    """A media request was refused (``bad_sdp``, ``forbidden``, ``not_live``...); nothing was created."""


def error_reply(exc: RoomError) -> dict[str, Any]:
    """A refusal as a reply to another process or instance (see :func:`reply_data`)."""
    return {"error": {"code": exc.code, "message": exc.message, "extra": exc.extra}}


def reply_data(reply: dict[str, Any]) -> dict[str, Any]:
    """The data of a reply from another process or instance; a refusal there raises its ``RoomError`` here."""
    if "error" in reply:
        error = reply["error"]
        raise RoomError(error["code"], error["message"], **error.get("extra", {}))
    return dict(reply["data"])
