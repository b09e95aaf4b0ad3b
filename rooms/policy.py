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
