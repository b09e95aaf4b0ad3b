"""Forwarding delay: from a packet's arrival (kernel receive time) until each viewer's copy is sent."""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

RING = 16_384  # packets kept: over a minute of a camera and a microphone
COPY_POINTS = 8  # a packet's copies go out in a row: each eighth of the row stands for an eighth of its viewers


@dataclass(frozen=True)
class DelayFigures:
    """Percentiles in ms. ``p50``/``p99`` are over viewer copies, ``last_copy_p99`` over packets' last copy;
    ``wait_p99`` over packets' waits from arrival until their fan-out began, ``pass_p99`` over the fan-outs'
    durations (of all copies of a packet's burst)."""

    packets: int
    p50_ms: float | None
    p99_ms: float | None
    last_copy_p99_ms: float | None
    wait_p99_ms: float | None = None
    pass_p99_ms: float | None = None


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
        waits: list[float] = []
        spans: list[float] = []
        for i in range(count):
            if self._times[i] < since:
                continue
            wait, span = self._waits[i], self._spans[i]
            waits.append(wait)
            spans.append(span)
            lasts.append(wait + span)
            copies.extend(wait + span * (k + 0.5) / COPY_POINTS for k in range(COPY_POINTS))
        if not lasts:
            return DelayFigures(0, None, None, None)
        return DelayFigures(
            packets=len(lasts),
            p50_ms=_quantile_ms(copies, 0.5),
            p99_ms=_quantile_ms(copies, 0.99),
            last_copy_p99_ms=_quantile_ms(lasts, 0.99),
            wait_p99_ms=_quantile_ms(waits, 0.99),
            pass_p99_ms=_quantile_ms(spans, 0.99),
        )


def _quantile_ms(values: list[float], q: float) -> float:
    values.sort()
    return _ms(values[min(len(values) - 1, int(len(values) * q))])


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
