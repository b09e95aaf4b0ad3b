"""Helpers the benchmarks share: join tokens and percentiles."""

from __future__ import annotations

import math
import time

import jwt

AUDIENCE = "live-classroom"
STUDENT = {"publish": False, "chat": True, "ask": True, "gift": True, "buy": True, "room_admin": False}
TEACHER = {"publish": True, "chat": True, "ask": True, "gift": False, "buy": False, "room_admin": True}


def mint(secret: str, room: str, sub: str, role: str, grants: dict[str, bool]) -> str:
    """A join token as the server's admin API would mint it, valid for six hours."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "name": sub,
        "room": room,
        "role": role,
        "grants": grants,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 6 * 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]
