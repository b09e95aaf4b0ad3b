"""Media refusals share the room error type, so sockets and HTTP map them the same way."""

from __future__ import annotations

from rooms.errors import RoomError


class MediaError(RoomError):
    """A media request was refused (``bad_sdp``, ``forbidden``, ``not_live``...); nothing was created."""
