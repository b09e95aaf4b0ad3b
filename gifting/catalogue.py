"""The course catalogue: courses hosts create through the admin API, and which rooms may sell them."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gifting import tables as t
from gifting.policy import SalesPolicy
from rooms.engine import now_ms
from rooms.errors import RoomError
from rooms.tables import autocommit

COURSE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CURRENCY_RE = re.compile(r"^[a-z]{3}$")
MAX_PRICE = 10**12


@dataclass(frozen=True)
class Course:
    """A course as the catalogue keeps it (prices in minor units of ``currency``)."""

    id: str
    title: str
    description: str
    cover_url: str | None
    price_minor: int
    member_price_minor: int | None
    currency: str
    seats: int | None
    seats_taken: int
    teacher_id: str | None
    refund_days: int
    refund_max_consumed_pct: int
    active: bool
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Any) -> Course:
        return cls(**{name: row._mapping[name] for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def card(self) -> dict[str, Any]:
        """What students see on the course card."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "cover_url": self.cover_url,
            "price_minor": self.price_minor,
            "member_price_minor": self.member_price_minor,
            "currency": self.currency,
            "seats_left": None if self.seats is None else max(0, self.seats - self.seats_taken),
            "refund_policy": {"days": self.refund_days, "max_consumed_pct": self.refund_max_consumed_pct},
        }


#: Fields a host may set, and the checks on them (None allowed where the column is nullable).
EDITABLE = (
    "title",
    "description",
    "cover_url",
    "price_minor",
    "member_price_minor",
    "currency",
    "seats",
    "teacher_id",
    "refund_days",
    "refund_max_consumed_pct",
    "active",
)


class Catalogue:
    """Courses and room catalogues (SQL)."""

    def __init__(self, db: AsyncEngine, policy: SalesPolicy) -> None:
        self.db = db
        self.reads = autocommit(db)
        self.policy = policy

    async def create(self, fields: dict[str, Any]) -> Course:
        course_id = fields.get("id")
        if not isinstance(course_id, str) or not COURSE_ID_RE.match(course_id):
            raise RoomError("invalid", "id must be 1-64 characters of a-z, 0-9, '_' and '-'")
        now = now_ms()
        row = {
            "id": course_id,
            "description": "",
            "cover_url": None,
            "member_price_minor": None,
            "seats": None,
            "teacher_id": None,
            "refund_days": self.policy.refund_days,
            "refund_max_consumed_pct": self.policy.refund_max_consumed_pct,
            "active": True,
            **{k: v for k, v in fields.items() if k in EDITABLE and v is not None},
            "seats_taken": 0,
            "created_at": now,
            "updated_at": now,
        }
        self._check(row)
        if self.policy.coin_rate(row["currency"]) is None:
            known = ", ".join(code for code, _ in self.policy.coins_per_minor)
            raise RoomError("unsupported_currency", f"currency must be one of {known} (LIVE_COIN_RATES)")
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(t.courses).values(**row))
        except IntegrityError:
            raise RoomError("conflict", f"course {course_id!r} already exists") from None
        return await self.require(course_id)

    async def update(self, course_id: str, changes: dict[str, Any]) -> Course:
        """Change a course; orders already placed keep the price and policy they were placed with."""
        course = await self.require(course_id)
        changes = {k: v for k, v in changes.items() if k in EDITABLE}
        self._check({**course.to_dict(), **changes})
        if changes:
            c = t.courses
            async with self.db.begin() as conn:
                result = await conn.execute(
                    update(c)
                    .where(
                        c.c.id == course_id,
                        (c.c.seats_taken <= changes["seats"]) if changes.get("seats") else c.c.id == course_id,
                    )
                    .values(**changes, updated_at=now_ms())
                )
            if result.rowcount != 1:
                raise RoomError("invalid", "seats cannot be fewer than the seats already taken")
        return await self.require(course_id)

    @staticmethod
    def _check(row: dict[str, Any]) -> None:
        if not isinstance(row.get("title"), str) or not 1 <= len(row["title"].strip()) <= 200:
            raise RoomError("invalid", "title must be 1-200 characters")
        if not isinstance(row["description"], str) or len(row["description"]) > 5000:
            raise RoomError("invalid", "description must be at most 5000 characters")
        cover = row["cover_url"]
        if cover is not None and (not isinstance(cover, str) or not cover.startswith("https://") or len(cover) > 500):
            raise RoomError("invalid", "cover_url must be an https:// URL of at most 500 characters")
        for name in ("price_minor", "member_price_minor"):
            value = row.get(name)
            if value is None and name == "member_price_minor":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PRICE:
                raise RoomError("bad_amount", f"{name} must be a whole number of minor units, 0-{MAX_PRICE}")
        if not isinstance(row.get("currency"), str) or not CURRENCY_RE.match(row["currency"]):
            raise RoomError("invalid", "currency must be a lowercase ISO 4217 code such as 'usd'")
        if row["seats"] is not None and (not _whole(row["seats"]) or not 1 <= row["seats"] <= 10**7):
            raise RoomError("invalid", "seats must be 1-10000000, or null for unlimited")
        if not _whole(row["refund_days"]) or not 0 <= row["refund_days"] <= 365:
            raise RoomError("invalid", "refund_days must be 0-365")
        if not _whole(row["refund_max_consumed_pct"]) or not 0 <= row["refund_max_consumed_pct"] <= 100:
            raise RoomError("invalid", "refund_max_consumed_pct must be 0-100")
        if not isinstance(row["active"], bool):
            raise RoomError("invalid", "active must be true or false")

    async def get(self, course_id: str) -> Course | None:
        async with self.reads.connect() as conn:
            row = (await conn.execute(select(t.courses).where(t.courses.c.id == course_id))).first()
        return Course.from_row(row) if row is not None else None

    async def require(self, course_id: str) -> Course:
        course = await self.get(course_id)
        if course is None:
            raise RoomError("not_found", f"no course {course_id[:64]!r}")
        return course

    async def list(self, room_id: str | None = None, limit: int = 500) -> list[Course]:
        c, rc = t.courses, t.room_courses
        query = select(c).order_by(c.c.created_at.desc()).limit(limit)
        if room_id is not None:
            query = query.join(rc, rc.c.course_id == c.c.id).where(rc.c.room_id == room_id)
        async with self.reads.connect() as conn:
            return [Course.from_row(r) for r in await conn.execute(query)]

    async def allow(self, room_id: str, course_id: str) -> None:
        """Let the room sell the course (repeating it changes nothing)."""
        await self.require(course_id)
        dialect = postgresql if self.db.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(t.room_courses).on_conflict_do_nothing(index_elements=["room_id", "course_id"])
        async with self.db.begin() as conn:
            await conn.execute(stmt, {"room_id": room_id, "course_id": course_id, "added_at": now_ms()})

    async def disallow(self, room_id: str, course_id: str) -> bool:
        rc = t.room_courses
        async with self.db.begin() as conn:
            done = await conn.execute(delete(rc).where(rc.c.room_id == room_id, rc.c.course_id == course_id))
        return done.rowcount == 1

    async def sellable(self, room_id: str, course_id: str) -> Course:
        """The course, if the room may sell it and it is on sale."""
        c, rc = t.courses, t.room_courses
        query = select(c).join(rc, rc.c.course_id == c.c.id).where(rc.c.room_id == room_id, c.c.id == course_id)
        async with self.reads.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise RoomError("not_found", "this room does not sell that course")
        course = Course.from_row(row)
        if not course.active:
            raise RoomError("not_on_sale", "this course is not on sale")
        return course


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
