"""Helpers for course-sales tests: the admin API calls a host makes, and wallets funded through it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support import ADMIN_AUTH


async def admin(url: str, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
    """One admin API call; returns the JSON answer (``expect``: the status it must have)."""
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http, http.request(method, url + path, json=body) as r:
        answer = await r.json() if r.content_type == "application/json" else await r.text()
        if expect is not None:
            assert r.status == expect, (r.status, answer)
        return answer


async def course_in_room(url: str, room: str, course_id: str, price_minor: int = 1000, **fields: Any) -> dict[str, Any]:
    """A course the room may sell (the room must exist: a teacher's join creates it)."""
    body = {"id": course_id, "title": f"Course {course_id}", "price_minor": price_minor, "currency": "usd", **fields}
    course = await admin(url, "POST", "/api/courses", body, expect=201)
    await admin(url, "PUT", f"/api/rooms/{room}/courses/{course_id}", expect=200)
    return dict(course)


async def fund(url: str, users: list[str], coins: int, at_once: int = 50) -> None:
    """Credit each user's wallet with ``coins`` (as a host that took the payment itself)."""
    async with aiohttp.ClientSession(headers=ADMIN_AUTH) as http:

        async def one(user: str) -> None:
            body = {"coins": coins, "idempotency_key": f"fund-{user}"}
            async with http.post(f"{url}/api/wallets/{user}/credit", json=body) as r:
                assert r.status in (200, 201), await r.text()

        for i in range(0, len(users), at_once):
            await asyncio.gather(*(one(u) for u in users[i : i + at_once]))


def buy(course_id: str, key: str, method: str = "wallet", **extra: Any) -> dict[str, Any]:
    """A ``course:buy`` payload that accepts the refund policy."""
    return {"course_id": course_id, "method": method, "key": key, "accept_refund_policy": True, **extra}
