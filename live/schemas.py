"""Wire schemas of the admin API bodies (docs/protocol.md, "Admin API"; live/openapi.yaml)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from live.auth import DEFAULT_TTL_S, MAX_TTL_S
from rooms.identity import ROOM_ID_PATTERN, USER_ID_PATTERN, Grants, Role


class AdminIn(BaseModel):
    """Strict: unknown fields and wrong types are errors, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RoomCreateIn(AdminIn):
    """Body of ``POST /api/rooms``."""

    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    id: Annotated[str, StringConstraints(pattern=ROOM_ID_PATTERN)] | None = None
    scheduled_at: Annotated[int, Field(ge=0, lt=2**53)] | None = None
    qa_auto_approve: bool = False
    qa_ask_interval_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    teacher_id: Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)] | None = None


class RoomUpdateIn(AdminIn):
    """Body of ``PATCH /api/rooms/{id}``: the room's settings; fields left out are unchanged."""

    qa_auto_approve: bool | None = None
    qa_ask_interval_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    teacher_id: Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)] | None = None


class TokenIn(AdminIn):
    """Body of ``POST /api/rooms/{id}/tokens``."""

    user_id: Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    role: Annotated[Role, Field(strict=False)]
    ttl_s: Annotated[int, Field(ge=60, le=MAX_TTL_S)] = DEFAULT_TTL_S
    grants: Grants | None = None
    minor: bool = False
    member: bool = False
