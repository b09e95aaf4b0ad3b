"""Who is acting: the user, role and grants that a verified join token carries."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict

#: Ids chosen by the host: users may use e-mail-like ids, rooms are URL-safe slugs.
USER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,64}$"
ROOM_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,63}$"
USER_ID_RE = re.compile(USER_ID_PATTERN)
ROOM_ID_RE = re.compile(ROOM_ID_PATTERN)


class Role(StrEnum):
    """A participant's role in a room; teachers and assistants are staff."""

    TEACHER = "teacher"
    ASSISTANT = "assistant"
    STUDENT = "student"

    @property
    def is_staff(self) -> bool:
        return self is not Role.STUDENT


@dataclass(frozen=True)
class Grants:
    """What a token allows. Every field defaults to ``False``: deny by default."""

    # Read by pydantic when the admin API validates a grants object: unknown grants and non-booleans
    # are errors, so a typo in a host's request cannot silently deny or allow something.
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    publish: bool = False
    chat: bool = False
    ask: bool = False
    gift: bool = False
    buy: bool = False
    room_admin: bool = False

    @classmethod
    def for_role(cls, role: Role) -> Grants:
        """The grants a host usually gives a role; tokens carry them explicitly."""
        if role is Role.TEACHER:
            return cls(publish=True, chat=True, ask=True, room_admin=True)
        if role is Role.ASSISTANT:
            return cls(chat=True, ask=True, room_admin=True)
        return cls(chat=True, ask=True, gift=True, buy=True)

    @classmethod
    def from_claim(cls, claim: Any) -> Grants:
        """Read a ``grants`` claim; anything but literal ``true`` is a denial."""
        if not isinstance(claim, dict):
            return cls()
        return cls(**{name: claim.get(name) is True for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


@dataclass(frozen=True)
class Identity:
    """A verified participant of exactly one room."""

    user_id: str
    name: str
    room_id: str
    role: Role
    grants: Grants
    minor: bool = False
    #: A member of the host's membership programme: pays a course's member price.
    is_member: bool = False

    @property
    def is_staff(self) -> bool:
        """Staff actions need the ``room_admin`` grant, whatever the role says."""
        return self.grants.room_admin

    def member(self) -> dict[str, str]:
        return {"user_id": self.user_id, "name": self.name, "role": self.role.value}

    def me(self) -> dict[str, Any]:
        return {**self.member(), "grants": self.grants.to_dict()}
