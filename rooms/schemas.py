"""Wire schemas of the room events that clients send (docs/protocol.md, "Client to server")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rooms.engine import StreamPosition
from rooms.identity import USER_ID_PATTERN

UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]


class Inbound(BaseModel):
    """Strict: unknown fields and wrong types are errors, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SinceIn(Inbound):
    """``join``'s ``since``: the position of the last room event the client applied."""

    epoch: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    offset: Annotated[int, Field(ge=0)]

    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)


class JoinIn(Inbound):
    """Payload of ``join``."""

    since: SinceIn | None = None


class ChatSendIn(Inbound):
    """Payload of ``chat:send``."""

    # The length rule (after trimming) is the chat service's, so the limit stays configurable.
    text: Annotated[str, StringConstraints(max_length=20_000)]


class ChatDeleteIn(Inbound):
    """Payload of ``chat:delete``."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class MemberRemoveIn(Inbound):
    """Payload of ``member:remove``."""

    user_id: UserId
    reason: Annotated[str, StringConstraints(max_length=200)] = ""


class EmptyIn(Inbound):
    """Payload of events that carry no fields (``room:go_live``, ``room:end``)."""

    pass


QuestionId = Annotated[str, StringConstraints(pattern=r"^q[0-9a-f]{16}$")]


class QaAskIn(Inbound):
    """Payload of ``qa:ask``."""

    # The length rule (after trimming) is the Q&A service's, so the limit stays configurable.
    text: Annotated[str, StringConstraints(max_length=20_000)]
    anonymous: bool = False
    #: Coins to attach (a paid question); the amount rules are the ledger's.
    coins: int = 0


class QaVoteIn(Inbound):
    """Payload of ``qa:vote``: ``up`` false takes the vote back."""

    id: QuestionId
    up: bool = True


class QaModerateIn(Inbound):
    """Payload of ``qa:moderate``."""

    id: QuestionId
    action: Literal["approve", "dismiss", "hide", "reopen", "answered_live"]


class QaAnswerIn(Inbound):
    """Payload of ``qa:answer``."""

    id: QuestionId
    text: Annotated[str, StringConstraints(max_length=20_000)]
    private: bool = False


class QaPinIn(Inbound):
    """Payload of ``qa:pin``: ``id`` null unpins."""

    id: QuestionId | None


class QaSettingsIn(Inbound):
    """Payload of ``qa:settings``; fields left out are unchanged."""

    auto_approve: bool | None = None
    ask_interval_s: Annotated[int, Field(ge=0, le=3600)] | None = None
