"""The ledger's writer thread: a thread with its own event loop and database connections, in which the
ledger's batch transactions run. Each round trip of a batch then costs the database's time, not a turn
of the app's event loop, which a gift storm or a flash sale fills with thousands of socket events a second.

On PostgreSQL the thread uses its own asyncpg engine. On SQLite it runs each statement itself, through the
standard library's driver (:class:`InlineConnection`): aiosqlite would hand every statement to yet another
thread and back, several times per statement, and in a gift storm those hand-overs, each waiting for the
GIL that the app's event loop holds, were most of a batch's time (50 ms for 140 gifts).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import CursorResult, Executable
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from rooms.tables import engine_like, sqlite_sync_engine

#: Seconds without a batch after which the writer thread stops and closes its connections.
WRITER_IDLE_S = 2.0

T = TypeVar("T")


class InlineConnection:
    """The part of :class:`AsyncConnection` that the ledger's batches use, on a synchronous connection:
    each statement runs at once, in the calling thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[*tuple[Any, ...]]:
        return self._conn.execute(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> CursorResult[*tuple[Any, ...]]:
        return self._conn.exec_driver_sql(statement, parameters)

    def execute_many(self, statement: UpdateBase | TextClause, rows: list[dict[str, Any]]) -> int:
        """``statement`` once per row, straight through the driver's ``executemany`` where the statement
        needs nothing of SQLAlchemy per row (no Python-side defaults, no type conversions)."""
        form = _direct_form(statement, tuple(rows[0]), self.dialect)
        if form is None:
            return int(self._conn.execute(statement, rows).rowcount)
        sql, values_of = form
        try:
            params = [values_of(row) for row in rows]
        except KeyError:  # rows with other keys than the first: SQLAlchemy says what is wrong
            return int(self._conn.execute(statement, rows).rowcount)
        dbapi_error = self.dialect.loaded_dbapi.Error
        cursor = self._conn.connection.cursor()
        try:
            cursor.executemany(sql, params)
            return int(cursor.rowcount)
        except dbapi_error as exc:  # as SQLAlchemy raises it: IntegrityError, OperationalError...
            raise DBAPIError.instance(sql, params, exc, dbapi_error, dialect=self.dialect) from exc
        finally:
            cursor.close()


#: A connection a batch's statements run on: the app's (or PostgreSQL's writer's) async one, or SQLite's inline.
WriteConnection = AsyncConnection | InlineConnection

_DirectForm = tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]
_direct_forms: dict[tuple[int, tuple[str, ...], str], tuple[UpdateBase | TextClause, _DirectForm | None]] = {}


async def execute_many(conn: WriteConnection, statement: UpdateBase | TextClause, rows: list[dict[str, Any]]) -> int:
    """``statement`` once per row of ``rows`` (dicts with the same keys); nothing when there are none.
    Give a statement built once (a module constant): on SQLite's inline connection its SQL is then compiled
    once, and the rows go to the driver as tuples. SQLAlchemy's processing of each row's parameters was an
    eighth of a gift batch's time. Returns the rows the statement changed in all."""
    if not rows:
        return 0
    if isinstance(conn, InlineConnection):
        return conn.execute_many(statement, rows)
    return int((await conn.execute(statement, rows)).rowcount)


def _direct_form(statement: UpdateBase | TextClause, keys: tuple[str, ...], dialect: Dialect) -> _DirectForm | None:
    """The driver's SQL for ``statement`` with parameters ``keys``, and how to take a row's values in its
    order; None where SQLAlchemy must prepare each row itself."""
    cache_key = (id(statement), keys, dialect.name)
    cached = _direct_forms.get(cache_key)
    if cached is not None and cached[0] is statement:
        return cached[1]
    if len(_direct_forms) > 256:  # statements built per call: nothing to gain from them, and no leak
        _direct_forms.clear()
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    names = compiled.positiontup
    form: _DirectForm | None = None
    if (
        compiled.positional
        and names
        and set(names) <= set(keys)
        and not getattr(compiled, "insert_prefetch", None)
        and not compiled.post_compile_params  # expanding IN lists and the like are rendered per call
        and not compiled.literal_execute_params
        # The dialect's own type: SQLite converts DateTime, Date, Time... where the generic types do not.
        and all(dialect.type_descriptor(compiled.binds[name].type).bind_processor(dialect) is None for name in names)
    ):
        getter = operator.itemgetter(*names)
        values_of = getter if len(names) > 1 else (lambda row: (getter(row),))
        form = (compiled.string, values_of)
    _direct_forms[cache_key] = (statement, form)
    return form


@contextlib.asynccontextmanager
async def sqlite_write_transaction(engine: Engine) -> AsyncIterator[InlineConnection]:
    """A SQLite write transaction that takes the write lock at BEGIN (so reads inside it see what it will
    change); committed if the body returns, rolled back if it raises."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # we say BEGIN ourselves
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield InlineConnection(conn)
        except BaseException:
            with contextlib.suppress(SQLAlchemyError):  # keep the original error
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


class WriterThread:
    """Runs transactions on ``db``'s database in a thread of its own (same connection setup as ``db``).
    Started by the first transaction; stops, closing its connections, after ``WRITER_IDLE_S`` without one
    (or at :meth:`stop`)."""

    def __init__(self, db: AsyncEngine) -> None:
        self._db = db
        self._is_sqlite = db.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: AsyncEngine | Engine | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._last_used = 0.0

    async def run(self, apply: Callable[[WriteConnection], Coroutine[Any, Any, T]]) -> T:
        """``apply(conn)`` in a transaction in the thread (committed if it returns, rolled back if it raises)."""
        with self._lock:
            if self._loop is None:
                self._start()
            assert self._loop is not None and self._engine is not None
            self._in_flight += 1
            loop, engine = self._loop, self._engine

        async def in_thread() -> T:
            try:
                if isinstance(engine, Engine):
                    async with sqlite_write_transaction(engine) as inline:
                        return await apply(inline)
                async with engine.begin() as conn:
                    return await apply(conn)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._last_used = time.monotonic()
                loop.call_later(WRITER_IDLE_S, self._stop_if_idle, loop)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(in_thread(), loop))

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        if self._is_sqlite:
            self._engine = sqlite_sync_engine(self._db, pool_size=1, max_overflow=1)
        else:
            # Every statement of a batch finds its rows by key, so a scan of a whole table is never right for
            # it; but the planner chose one for `key = ANY(array of 150 keys)` while the statistics of a table
            # growing by thousands of rows a second lagged behind: 1 ms per batch at first, 70 ms at 30,000
            # operations. Scans stay possible where no index serves (the setting only makes them costly).
            settings = {"enable_seqscan": "off"}
            self._engine = engine_like(
                self._db, pool_size=1, max_overflow=1, connect_args={"server_settings": settings}
            )
        self._thread = threading.Thread(target=self._serve, args=(loop, self._engine), name="ledger-writer")
        self._thread.daemon = True
        self._loop = loop
        self._thread.start()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, engine: AsyncEngine | Engine) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            if isinstance(engine, Engine):
                engine.dispose()  # in this thread, where its connections were made
            else:
                loop.run_until_complete(engine.dispose())
        finally:
            loop.close()

    def _stop_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        # In the thread, WRITER_IDLE_S after a batch ended. A batch that ended since then has its own timer
        # (hence only half the time: timers may fire a hair early). Under the lock, so no batch can be handed
        # to a loop that is stopping.
        with self._lock:
            if self._loop is not loop or self._in_flight or time.monotonic() - self._last_used < WRITER_IDLE_S / 2:
                return
            self._loop = self._engine = self._thread = None
        loop.stop()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread once its transactions are done, and close its connections."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 - set by the thread
            await asyncio.sleep(0.01)
        thread = self.detach()
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout_s)

    def detach(self) -> threading.Thread | None:
        """Tell the thread to stop (it closes its connections) and forget it; safe from any thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._engine = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        return thread
