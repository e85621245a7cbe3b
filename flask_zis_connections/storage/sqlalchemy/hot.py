"""``get_token``'s read on the driver's own connections, outside SQLAlchemy's pool.

A fresh token costs one indexed ``SELECT`` of seven columns.  Through the engine that
select pays more than the database does: a pool checkout and return (with its reset),
the autocommit switch of the reader view, SQLAlchemy's execution and row machinery -
on SQLite about ten times the driver's own time.  This reader keeps a few DBAPI
connections of its own, idle in a LIFO stack (taking and returning one is a list
``pop``/``append``, atomic under the GIL, so threads share them without a lock), and
runs statements compiled once for the engine's dialect: the token read, and the whole
row of a connection or an OAuth client by name or uuid (what the API's views,
``zis.session`` and a refresh's waiters read; through the engine a connection's took
230 us of CPU on SQLite, of which the driver and the row's decoding needed 35):

* **SQLite** (``sqlite3``): ``isolation_level=None`` (no transaction around a read),
  the backend's pragmas (``busy_timeout``, WAL); each result is read to the end so no
  statement keeps a WAL read snapshot open.
* **PostgreSQL** (``psycopg`` 3 or ``psycopg2``): autocommit connections, so a read
  is one round trip.  With ``psycopg`` 3 the statement is prepared once per connection
  and run through the connection's own libpq handle (:mod:`psycopg.pq`, its documented
  low-level layer): the cursor's machinery above libpq cost about 25 us of CPU per
  read, a fifth of the read itself, and the seven columns (text, integers, a boolean)
  are loaded from libpq's text format directly.  A connection whose
  ``prepare_threshold`` is None (prepared statements turned off, as for a pooler that
  cannot keep them) runs the statement unprepared.

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
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ...forks import reset_in_child
from . import queries as q
from .driver_sql import DriverSQL
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

    def __init__(self, engine: Engine, limit: int, opened: Callable[[], None] | None = None) -> None:
        self.limit = limit
        #: Told each time the reader opens a connection (not on every read).
        self._opened = opened
        dialect = engine.dialect
        stmt = sa.select(*(connections.c[name] for name in _COLUMNS)).where(
            connections.c.integration == sa.bindparam("integration"),
            connections.c.name == sa.bindparam("name"),
        )
        driver_sql = DriverSQL(stmt, dialect)
        self.sql = driver_sql.sql
        # Kept apart (not DriverSQL.params): one call less on get_token's path.
        self._positional = driver_sql.positional
        self._order = driver_sql.order
        self._connect = _opener(engine)
        #: The token read as libpq runs it, when the connections are
        #: :class:`_PqConnection`s (psycopg 3); None: the driver's own, read with a cursor.
        self._pq_read: _PqRead | None = None
        if (dialect.name, dialect.driver) == ("postgresql", "psycopg"):
            self._pq_read = _PqRead.of(stmt, dialect, _STATEMENT, "name")
            if self._pq_read is not None:
                self._connect = _pq_opener(self._connect)
        libpq = self._pq_read is not None
        #: Whole rows of a connection or an OAuth client, by its name or uuid
        #: (:data:`~.queries.WHOLE_ROWS`), each prepared as ``zis_`` and its name.
        self._whole = {
            read: _Whole(stmt, dialect, read, key, libpq) for read, (stmt, key) in q.WHOLE_ROWS.items()
        }
        self._idle: list[Any] = []
        self._open = 0
        self._lock = threading.Lock()
        #: Callers waiting for a connection, first come first served.
        self._waiters: deque[_Waiter] = deque()
        #: Connections inherited over a fork: kept referenced, never used or closed.
        self._inherited: list[Any] = []
        # A storage dropped without close() still closes its connections cleanly.
        self._finalizer = weakref.finalize(self, _close_all, self._idle)
        reset_in_child(self, HotReader._after_fork)

    @classmethod
    def for_engine(cls, engine: Engine, opened: Callable[[], None] | None = None) -> HotReader | None:
        """A reader for ``engine``, or None for a driver this module does not know;
        ``opened()`` is called each time it opens a connection."""
        dialect = engine.dialect
        if (dialect.name, dialect.driver) not in _DRIVERS:
            return None
        if dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:" or "mode=memory" in str(engine.url):
                return None  # every connection would be a database of its own
            return cls(engine, SQLITE_LIMIT, opened)
        size = getattr(engine.pool, "size", None)
        return cls(engine, size() if callable(size) else POSTGRES_LIMIT, opened)

    def fetch(self, integration: str, name: str) -> Sequence[Any] | None:
        """The matching rows (one, or none), or ``None``: no connection to spare, or
        the driver failed - read through the engine."""
        try:
            conn = self._idle.pop()  # the common case, without a call more
        except IndexError:
            conn = self._spare()
            if conn is None:
                return None
        pq = self._pq_read
        try:
            if pq is not None:
                rows: list[Any] = conn.run(pq, integration, name)
            else:
                params: Any = {"integration": integration, "name": name}
                if self._positional:
                    params = tuple(params[key] for key in self._order)
                rows = conn.execute(self.sql, params).fetchall()
        except Exception:  # whatever the driver raised: the engine path reports it
            self._discard(conn)
            return None
        self._give_back(conn)
        return rows

    def fetch_whole(self, read: str, integration: str, value: str) -> Sequence[Any] | None:
        """The rows of the whole-row ``read`` (``"connection_by_name"``,
        ``"connection_by_uuid"``, ``"client_by_name"`` or ``"client_by_uuid"``: the
        columns of :mod:`.queries`' statement of that name) for ``value``, as
        :meth:`fetch`: ``None`` means "read through the engine"."""
        whole = self._whole[read]
        conn = self._take()
        if conn is None:
            return None
        try:
            rows = whole.rows(conn, integration, value)
        except Exception:  # whatever the driver raised: the engine path reports it
            self._discard(conn)
            return None
        self._give_back(conn)
        return rows

    def _take(self) -> Any | None:
        """An idle connection, a new one, or one given back within :data:`WAIT`; None
        when there is none to spare."""
        try:
            return self._idle.pop()
        except IndexError:
            return self._spare()

    def _spare(self) -> Any | None:
        """With none idle: a new connection, or one given back within :data:`WAIT`."""
        conn = self._new()
        return conn if conn is not None else self._wait_idle()

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
            conn = self._connect()
        except Exception:
            with self._lock:
                self._open -= 1
            return None
        if self._opened is not None:
            self._opened()
        return conn

    def _give_back(self, conn: Any) -> None:
        """Make ``conn`` idle again; while callers wait, the first of them gets an idle
        connection handed over (a caller arriving meanwhile would otherwise take it
        first, every time, and the waiter would wait out :data:`WAIT` for nothing)."""
        self._idle.append(conn)
        if self._waiters:  # looked at after the append: a caller queuing later finds it idle
            with self._lock:
                if self._waiters:
                    try:
                        handed = self._idle.pop()
                    except IndexError:
                        return  # a caller took it on its way in
                    waiter = self._waiters.popleft()
                    waiter.conn = handed
                    waiter.ready.set()

    def _wait_idle(self) -> Any | None:
        """A connection another caller gives back within :data:`WAIT` seconds, or None
        (every one stayed busy, or one was discarded and the engine should read)."""
        waiter = _Waiter()
        with self._lock:
            try:
                return self._idle.pop()  # given back since this caller looked
            except IndexError:
                pass
            if self._open < self.limit:
                return None  # one was discarded meanwhile: read through the engine
            self._waiters.append(waiter)
        if not waiter.ready.wait(WAIT):
            with self._lock:
                if waiter.conn is None and waiter in self._waiters:  # nor handed one since
                    self._waiters.remove(waiter)
        return waiter.conn

    def _discard(self, conn: Any) -> None:
        with self._lock:
            self._open -= 1
            if self._waiters:  # it will not come back: the first waiter reads elsewhere
                self._waiters.popleft().ready.set()
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            conn.close()

    def _after_fork(self) -> None:
        """In a forked child (one thread, before anything else runs): start with no
        connection; the parent's are the parent's to close, so keep them unused."""
        self._lock = threading.Lock()  # the parent's may have been held
        self._waiters = deque()
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


class _Waiter:
    """A caller waiting for one of the reader's connections, and the one it is handed."""

    __slots__ = ("conn", "ready")

    def __init__(self) -> None:
        self.conn: Any = None
        self.ready = threading.Event()


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


#: The name the read is prepared under on each of the reader's libpq connections.
_STATEMENT: Final = b"zis_token_read"


class _Whole:
    """A whole-row read (by ``key``: the row's name or uuid) as the reader's
    connections run it: through libpq where they are libpq connections and the
    columns have loaders, else through the driver's cursor."""

    __slots__ = ("driver_sql", "key", "pq")

    def __init__(self, stmt: sa.Select[Any], dialect: Any, read: str, key: str, libpq: bool) -> None:
        self.key = key
        self.driver_sql = DriverSQL(stmt, dialect)
        self.pq = _PqRead.of(stmt, dialect, f"zis_{read}".encode(), key) if libpq else None

    def rows(self, conn: Any, integration: str, value: str) -> Sequence[Any]:
        if self.pq is not None:
            return conn.run(self.pq, integration, value)  # type: ignore[no-any-return]
        sql = self.driver_sql
        params = sql.params({"integration": integration, self.key: value})
        return conn.execute(sql.sql, params).fetchall()  # type: ignore[no-any-return]


class _PqRead:
    """The read as libpq runs it: ``$n`` placeholders and a loader per column."""

    __slots__ = ("loaders", "name", "prepared", "rows", "sql")

    def __init__(self, sql: bytes, loaders: tuple[Callable[[bytes, str], Any], ...], name: bytes) -> None:
        from psycopg import pq

        self.sql = sql
        self.loaders = loaders
        #: What it is prepared as on each connection.
        self.name = name
        #: The result statuses of a prepared statement and of rows.
        self.prepared = pq.ExecStatus.COMMAND_OK
        self.rows = pq.ExecStatus.TUPLES_OK

    @classmethod
    def of(cls, stmt: sa.Select[Any], dialect: Any, name: bytes, key: str) -> _PqRead | None:
        """The read of ``stmt`` (parameters ``integration`` and ``key``) for libpq,
        prepared as ``name``; or None when a column's type has no loader here (its rows
        then go through the cursor)."""
        loaders = []
        for column in stmt.selected_columns:
            load = _text_loader(column.type)
            if load is None:
                return None
            loaders.append(load)
        try:
            numbered = stmt.compile(dialect=type(dialect)(paramstyle="numeric_dollar"))
        except Exception:  # a dialect that cannot number its parameters: the cursor reads
            return None
        if list(numbered.positiontup or ()) != ["integration", key]:
            return None
        return cls(str(numbered).encode(), tuple(loaders), name)


def _text_loader(kind: Any) -> Callable[[bytes, str], Any] | None:
    """How to load a value of SQL type ``kind`` from PostgreSQL's text output."""
    if isinstance(kind, sa.Boolean):
        return _load_bool
    if isinstance(kind, sa.Integer):  # BigInteger and SmallInteger too
        return _load_int
    if isinstance(kind, sa.String) and not isinstance(kind, sa.Enum):  # Text too
        return _load_text
    return None


def _load_bool(value: bytes, encoding: str) -> bool:
    return value == b"t"


def _load_int(value: bytes, encoding: str) -> int:
    return int(value)


def _load_text(value: bytes, encoding: str) -> str:
    return value.decode(encoding)


class _PqConnection:
    """A ``psycopg`` 3 connection whose reads go through its libpq handle.

    Each statement is prepared on its first use (or, with ``prepare_threshold`` None,
    sent unprepared every time, as psycopg itself would); any result but rows raises,
    and the reader then drops the connection and reads through the engine.
    """

    __slots__ = ("_conn", "_encoding", "_pgconn", "_prepared")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._encoding: str = conn.info.encoding
        #: The statements prepared on this connection, by name.
        self._prepared: set[bytes] = set()

    def execute(self, sql: str, params: Any) -> Any:
        """A statement with no libpq read here, through the connection's cursor."""
        return self._conn.execute(sql, params)

    def run(self, read: _PqRead, integration: str, key: str) -> list[tuple[Any, ...]]:
        """The rows of ``read`` for ``integration`` and its second parameter ``key``."""
        encoding, pgconn = self._encoding, self._pgconn
        params = [integration.encode(encoding), key.encode(encoding)]
        if self._conn.prepare_threshold is None:
            result = pgconn.exec_params(read.sql, params)
        else:
            if read.name not in self._prepared:
                done = pgconn.prepare(read.name, read.sql)
                if done.status != read.prepared:
                    raise _PqFailed(done.status)
                self._prepared.add(read.name)
            result = pgconn.exec_prepared(read.name, params)
        if result.status != read.rows:
            raise _PqFailed(result.status)
        value = result.get_value
        loaders = read.loaders
        out = []
        for row in range(result.ntuples):
            loaded = []
            for col, load in enumerate(loaders):
                raw = value(row, col)
                loaded.append(None if raw is None else load(raw, encoding))
            out.append(tuple(loaded))
        return out

    def close(self) -> None:
        self._conn.close()


class _PqFailed(Exception):
    """libpq answered the read with something other than rows (the status says what;
    the server's message, which may quote the query, is left out)."""


def _pq_opener(connect: Callable[[], Any]) -> Callable[[], Any]:
    def opened() -> _PqConnection:
        return _PqConnection(connect())

    return opened
