"""Limits that hosts may tune per deployment (kept free of heavy imports: the CLI reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatPolicy:
    """Chat limits: message length, and token buckets of ``*_capacity`` messages per ``window_s``."""

    max_chars: int = 500
    student_capacity: int = 20
    staff_capacity: int = 100
    window_s: float = 30.0


@dataclass(frozen=True)
class QaPolicy:
    """Q&A limits for a deployment; rooms may override the ask interval and turn on auto-approve."""

    max_chars: int = 300
    answer_max_chars: int = 2000
    #: Seconds between two questions of one student (0: no limit). Staff are not limited.
    ask_interval_s: int = 60
    #: At most one vote-count publication per room per instance in this many milliseconds.
    vote_flush_ms: int = 50
    #: Questions sent in a join snapshot (the newest; the pinned one is always included).
    snapshot_max: int = 500
