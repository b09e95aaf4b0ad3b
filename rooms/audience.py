"""Who sees what. Every room event whose data differs by audience passes through here.

Questions: staff see every question in full. A student sees the published and answered questions, with no
author on anonymous ones and no text on answers sent privately to someone else, and their own questions
in full (marked ``mine``). A ``qa.question`` event is therefore delivered in up to three versions: to
staff, to the author's own connections, and to everyone else. Everyone else gets, for a question they
cannot see, either a removal notice (it was visible before) or a ``skip`` event: offsets stay contiguous
for every client, so a gap still means a lost event, and the skip carries nothing.

Money: a ``money`` event carries every gift and tip for staff (the teacher's live feed) and a summary for
everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooms.engine import Publication
from rooms.identity import Identity
from rooms.qa_store import QuestionState

SKIP = "skip"


def question_for(question: dict[str, Any], viewer: Identity) -> dict[str, Any] | None:
    """The question as ``viewer`` may see it, or ``None`` when they may not see it at all."""
    if viewer.is_staff:
        return question
    if question["author"]["user_id"] == viewer.user_id:
        return {**question, "mine": True}
    return public_question(question)


def public_question(question: dict[str, Any]) -> dict[str, Any] | None:
    """The question as a student who did not ask it sees it."""
    if not QuestionState(question["state"]).visible:
        return None
    shown = dict(question)
    if shown["anonymous"]:
        shown["author"] = None
    answer = shown.get("answer")
    if answer and answer.get("private"):
        shown["answer"] = {**answer, "text": None}
    return shown


@dataclass(frozen=True)
class Versions:
    """The versions of one event's data: for staff, for the author's own connections that are not staff
    (``author`` ``None``: no such version), and for everyone else (``None``: a skip)."""

    staff: dict[str, Any]
    author: str | None
    author_data: dict[str, Any] | None
    public: dict[str, Any] | None


def versions(pub: Publication) -> Versions | None:
    """``None`` when the event is the same for everyone."""
    if pub.type == "money":
        # Staff get every gift and tip (the live feed); everyone else the summary (gifting/ledger.py).
        return Versions(pub.data, None, None, pub.data["public"])
    if pub.type != "qa.question":
        return None
    question, pin = pub.data["q"], pub.data["pin"]
    public = public_question(question)
    public_data: dict[str, Any] | None = {"q": public, "pin": pin} if public is not None else None
    if public is None and question.get("published_ts") is not None:
        public_data = {"q": {"id": question["id"], "removed": True}, "pin": pin}
    author_data = {"q": {**question, "mine": True}, "pin": pin}
    return Versions(pub.data, question["author"]["user_id"], author_data, public_data)


def wire_for(pub: Publication, viewer: Identity) -> dict[str, Any]:
    """The wire form of ``pub`` for one viewer (catch-up on join sends history this way)."""
    wire = pub.wire()
    split = versions(pub)
    if split is None or viewer.is_staff:
        return wire
    if split.author is not None and split.author == viewer.user_id:
        return {**wire, "data": split.author_data}
    if split.public is None:
        return {**wire, "type": SKIP, "data": {}}
    return {**wire, "data": split.public}
