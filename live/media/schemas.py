"""Wire schemas of the media socket events and WHIP/WHEP (docs/protocol.md, "Media")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import StringConstraints

from rooms.schemas import Inbound, UserId

MAX_SDP_CHARS = 32_768

Sdp = Annotated[str, StringConstraints(min_length=10, max_length=MAX_SDP_CHARS)]


class MediaPublishIn(Inbound):
    """``media:publish``: a publisher's SDP offer for its main (camera, microphone) or screen stream."""

    sdp: Sdp
    stream: Literal["main", "screen"] = "main"


class MediaUnpublishIn(Inbound):
    """``media:unpublish``: stop one stream, or all of them when ``stream`` is left out."""

    stream: Literal["main", "screen"] | None = None


class StageIn(Inbound):
    """``stage:invite`` and ``stage:remove``: the student concerned."""

    user_id: UserId


class MediaAnswerIn(Inbound):
    """``media:answer``: a viewer's SDP answer to the last ``media:offer``."""

    sdp: Sdp
