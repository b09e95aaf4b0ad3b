"""Forwarding delay: from a packet's arrival (kernel receive time) until each viewer's copy is sent."""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

RING = 16_384  # packets kept: over a minute of a camera and a microphone
COPY_POINTS = 8  # a packet's copies go out in a row: each eighth of the row stands for an eighth of its viewers


@dataclass(frozen=True)
class DelayFigures:
    """Percentiles in ms. ``p50``/``p99`` are over viewer copies, ``last_copy_p99`` over packets' last copy."""

    packets: int
    p50_ms: float | None
    p99_ms: float | None
    last_copy_p99_ms: float | None


class ForwardDelays:
    """A ring of the last forwarded packets: how long each waited, and how long its fan-out took."""

    def __init__(self, size: int = RING) -> None:
        self._size = size
        self._waits = array("d", bytes(8 * size))
        self._spans = array("d", bytes(8 * size))
        self._times = array("d", bytes(8 * size))
        self._count = 0

    def observe(self, arrival: float, start: float, end: float) -> None:
        """One packet arrived at ``arrival``; its copies were sent between ``start`` and ``end``."""
        i = self._count % self._size
        self._waits[i] = max(0.0, start - arrival)
        self._spans[i] = max(0.0, end - start)
        self._times[i] = end
        self._count += 1

    def figures(self, window_s: float | None = None) -> DelayFigures:
        count = min(self._count, self._size)
        since = time.time() - window_s if window_s is not None else float("-inf")
        copies: list[float] = []
        lasts: list[float] = []
        for i in range(count):
            if self._times[i] < since:
                continue
            wait, span = self._waits[i], self._spans[i]
            lasts.append(wait + span)
            copies.extend(wait + span * (k + 0.5) / COPY_POINTS for k in range(COPY_POINTS))
        if not lasts:
            return DelayFigures(0, None, None, None)
        copies.sort()
        lasts.sort()
        return DelayFigures(
            packets=len(lasts),
            p50_ms=_ms(copies[len(copies) // 2]),
            p99_ms=_ms(copies[min(len(copies) - 1, int(len(copies) * 0.99))]),
            last_copy_p99_ms=_ms(lasts[min(len(lasts) - 1, int(len(lasts) * 0.99))]),
        )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
