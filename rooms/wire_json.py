"""JSON for what crosses a socket or a process (room events, engine payloads, Socket.IO packets), on
orjson: compact UTF-8, several times faster than the standard library's module. Non-string keys become
strings, as the standard library's do; integers must fit in 64 bits (every payload schema bounds them)."""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """``value`` as compact JSON text."""
    return orjson.dumps(value, option=_OPTIONS).decode()


def loads(text: str | bytes) -> Any:
    """The value of a JSON text."""
    return orjson.loads(text)


def plain(value: Any) -> Any:
    """A deep copy of ``value`` as plain JSON data: what a listener would get had it crossed a process."""
    return orjson.loads(orjson.dumps(value, option=_OPTIONS))
