"""``get_token``'s read on the driver's own connections, outside SQLAlchemy's pool.

A fresh token costs one indexed ``SELECT`` of seven columns.  Through the engine that
select pays more than the database does: a pool checkout and return (with its reset),
the autocommit switch of the reader view, SQLAlchemy's execution and row machinery -
on SQLite about ten times the driver's own time.  This reader keeps a few DBAPI
connections of its own, idle in a LIFO stack (taking and returning one is a list
``pop``/``append``, atomic under the GIL, so threads share them without a lock), and
runs the one statement compiled once for the engine's dialect:

* **SQLite** (``sqlite3``): ``isolation_level=None`` (no transaction around a read),
  the backend's pragmas (``busy_timeout``, WAL); each result is read to the end so no
  statement keeps a WAL read snapshot open.
* **PostgreSQL** (``psycopg`` 3 or ``psycopg2``): autocommit connections, so a read
  is one round trip; ``psycopg`` prepares the statement after a few executions.

At most :attr:`HotReader.limit` connections are open at once.  A caller finding none
idle and the limit reached waits for one to come back (at most :data:`WAIT` seconds):
a read holds its connection for one statement, while the engine's path costs several
times the CPU and takes a connection from the pool that the refresh's own writes
need - in a burst of a few hundred requests, the fallback reads were what the lease
holder queued behind.  After that wait - or on any driver error, or for another
database - a caller reads through the engine instead, which retries a dropped
connection and reports an unreachable database the usual way.  A connection that
raised is closed, never reused.  After a ``fork`` the child opens its own: the
parent's are left untouched (closing them would end the parent's sessions), as
SQLAlchemy's pool does.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ...forks import reset_in_child
from .schema import connections

#: The columns of :class:`~flask_zis_connections.domain.TokenRead`, in its order.
_COLUMNS: Final = (
    "type",
    "access_token_enc",
    "token_expiry",
    "updated_at",
    "needs_reauth",
    "uuid",
    "version",
)
#: Drivers whose connections this module knows how to open and use.
_DRIVERS: Final = {("sqlite", "pysqlite"), ("postgresql", "psycopg"), ("postgresql", "psycopg2")}
#: Idle connections kept for SQLite (a file handle each) and, by default, PostgreSQL.
SQLITE_LIMIT: Final = 16
POSTGRES_LIMIT: Final = 5
#: The longest a read waits for one of the reader's busy connections, in seconds.
WAIT: Final = 0.05


class HotReader:
    """Runs the token read on pooled-by-us DBAPI connections; ``None`` from
    :meth:`fetch` means "not here, read through the engine"."""

    def __init__(self, engine: Engine, limit: int) -> None:
        self.limit = limit
        dialect = engine.dialect
        stmt = sa.select(*(connections.c[name] for name in _COLUMNS)).where(
            connections.c.integration == sa.bindparam("integration"),
            connections.c.name == sa.bindparam("name"),
        )
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        # qmark/numeric/format styles take a sequence in the compiled order; the
        # named and pyformat styles take the mapping as it is.
        order = compiled.positiontup
        self._positional = dialect.paramstyle in ("qmark", "numeric", "format")
        self._order: tuple[str, ...] = tuple(order) if order else ()
        self._connect = _opener(engine)
        self._idle: list[Any] = []
        self._open = 0
        self._lock = threading.Lock()
        #: Notified when a connection goes back while :attr:`_waiting` callers wait.
        self._returned = threading.Condition(self._lock)
        self._waiting = 0
        #: Connections inherited over a fork: kept referenced, never used or closed.
        self._inherited: list[Any] = []
        # A storage dropped without close() still closes its connections cleanly.
        self._finalizer = weakref.finalize(self, _close_all, self._idle)
        reset_in_child(self, HotReader._after_fork)

    @classmethod
    def for_engine(cls, engine: Engine) -> HotReader | None:
        """A reader for ``engine``, or None for a driver this module does not know."""
        dialect = engine.dialect
        if (dialect.name, dialect.driver) not in _DRIVERS:
            return None
        if dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:" or "mode=memory" in str(engine.url):
                return None  # every connection would be a database of its own
            return cls(engine, SQLITE_LIMIT)
        size = getattr(engine.pool, "size", None)
        return cls(engine, size() if callable(size) else POSTGRES_LIMIT)

    def fetch(self, integration: str, name: str) -> Sequence[Any] | None:
        """The matching rows (one, or none), or ``None``: no connection to spare, or
        the driver failed - read through the engine."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._new()
            if conn is None:
                conn = self._wait_idle()
                if conn is None:
                    return None
        params: Any = {"integration": integration, "name": name}
        if self._positional:
            params = tuple(params[key] for key in self._order)
        try:
            rows: list[Any] = conn.execute(self.sql, params).fetchall()
        except Exception:  # whatever the driver raised: the engine path reports it
            self._discard(conn)
            return None
        self._give_back(conn)
        return rows

    def close(self) -> None:
        """Close every idle connection (the storage is closing)."""
        with self._lock:
            self._open -= _close_all(self._idle)

    def _new(self) -> Any | None:
        with self._lock:
            if self._open >= self.limit:
                return None
            self._open += 1
        try:
            return self._connect()
        except Exception:
            with self._lock:
                self._open -= 1
            return None

    def _give_back(self, conn: Any) -> None:
        """Make ``conn`` idle again, and hand it to a caller waiting for one."""
        self._idle.append(conn)
        if self._waiting:  # read after the append: a waiter counted later finds it idle
            with self._returned:
                self._returned.notify()

    def _wait_idle(self) -> Any | None:
        """A connection another caller gives back within :data:`WAIT` seconds, or None
        (every one stayed busy, or one was discarded and none is left to wait for)."""
        deadline = time.monotonic() + WAIT
        with self._returned:
            self._waiting += 1
            try:
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    left = deadline - time.monotonic()
                    if left <= 0 or self._open < self.limit:
                        return None  # a broken one was closed: open anew through the engine
                    self._returned.wait(left)
            finally:
                self._waiting -= 1

    def _discard(self, conn: Any) -> None:
        with self._returned:
            self._open -= 1
            self._returned.notify()  # a waiter goes to the engine rather than wait on
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            conn.close()

    def _after_fork(self) -> None:
        """In a forked child (one thread, before anything else runs): start with no
        connection; the parent's are the parent's to close, so keep them unused."""
        self._lock = threading.Lock()  # the parent's may have been held
        self._returned = threading.Condition(self._lock)
        self._waiting = 0
        self._finalizer.detach()
        self._inherited.extend(self._idle)
        self._idle = []
        self._finalizer = weakref.finalize(self, _close_all, self._idle)
        self._open = 0


def _close_all(idle: list[Any]) -> int:
    """Close the connections in ``idle`` (emptying it); how many there were."""
    closed = 0
    while True:
        try:
            conn = idle.pop()
        except IndexError:
            return closed
        closed += 1
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            conn.close()


def _opener(engine: Engine) -> Callable[[], Any]:
    """A function opening one DBAPI connection set up for single-statement reads.

    The connection is made by the engine's pool and detached from it, so it was
    opened exactly as the pool opens its own (``connect_args``, a ``creator``, the
    backend's SQLite pragmas) and no longer counts against the pool's size.
    """
    dialect = engine.dialect

    def opened() -> Any:
        fairy = engine.raw_connection()
        conn: Any = fairy.driver_connection  # read first: detached, the fairy has none
        fairy.detach()
        if dialect.name == "sqlite":
            conn.isolation_level = None  # no BEGIN: each read is its own statement
            return conn
        conn.autocommit = True
        if dialect.driver == "psycopg2":
            return _Psycopg2(conn)
        return conn

    return opened


class _Psycopg2:
    """``psycopg2`` has no ``connection.execute``: a cursor per read, as psycopg does."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any) -> Any:
        cur = self._conn.cursor()
        cur.execute(sql, params)
        return cur

    def close(self) -> None:
        self._conn.close()
