"""Wire schemas of the admin API bodies (docs/protocol.md, "Admin API"; live/openapi.yaml)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from live.auth import DEFAULT_TTL_S, MAX_TTL_S
from rooms.identity import Grants, Role


class AdminIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RoomCreateIn(AdminIn):
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{2,63}$")] | None = None
    scheduled_at: Annotated[int, Field(ge=0, lt=2**53)] | None = None


class TokenIn(AdminIn):
    user_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")]
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    role: Annotated[Role, Field(strict=False)]
    ttl_s: Annotated[int, Field(ge=60, le=MAX_TTL_S)] = DEFAULT_TTL_S
    grants: Grants | None = None
    minor: bool = False
