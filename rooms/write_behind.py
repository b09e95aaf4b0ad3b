"""Writing to SQL behind the live path: writes are queued in memory and flushed in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


class WriteBehind(ABC):
    """Flushes every ``interval_s`` (sooner after :meth:`wake`) in a background task, so the live path
    never waits on the database; a failed flush keeps its rows and is retried."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    def wake(self) -> None:
        """Flush soon, without waiting for the interval (a batch is full)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop, and write what is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
        except SQLAlchemyError:
            log.exception("%s: %s could not be written at shutdown", type(self).__name__, self.pending())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except SQLAlchemyError:
                log.exception("%s: flush failed; will retry", type(self).__name__)
                await asyncio.sleep(1.0)

    @abstractmethod
    async def flush(self) -> None:
        """Write everything queued; on failure, keep it queued and raise."""

    @abstractmethod
    def pending(self) -> str:
        """What is queued, for the log."""
