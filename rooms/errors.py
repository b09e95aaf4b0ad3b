"""Domain errors with the stable codes that clients see (docs/protocol.md, "Errors")."""

from __future__ import annotations

from typing import Any


class RoomError(Exception):
    """A request was refused; nothing was changed. ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


def forbidden(what: str) -> RoomError:
    """The token lacks the grant (or staff role) that ``what`` needs."""
    return RoomError("forbidden", f"your token does not allow {what}")


def rate_limited(retry_after_ms: int) -> RoomError:
    """A rate limit refused the request; the client may retry after ``retry_after_ms``."""
    return RoomError("rate_limited", "too many requests; slow down", retry_after_ms=retry_after_ms)


def unavailable() -> RoomError:
    """Redis or the database could not be reached; nothing was stored."""
    return RoomError("unavailable", "the room service is briefly unavailable; nothing was stored, try again")
