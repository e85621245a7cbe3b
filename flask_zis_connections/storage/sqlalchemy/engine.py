"""What every part of the SQL backend shares: its engines, reads and error message.

The backend holds two views of one engine.  Writes go through ``_writer`` in short
explicit transactions (``BEGIN IMMEDIATE`` on SQLite, see :mod:`.sqlite`), except a
write that is one statement, which runs as a transaction of its own
(:meth:`SQLBackend._one_statement`).  Reads
(``get_connection`` above all, the hot path of ``get_token``) go through ``_reader``
outside an explicit transaction: on SQLite with no ``BEGIN`` at all, on other
databases in driver-level autocommit, so a lookup costs one round trip.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, ProgrammingError

from ... import token_cache
from ...errors import StorageUnavailable
from ...forks import reset_in_child
from ...timers import start_soon
from ..base import Storage
from .driver_sql import DriverSQL, RefreshSQL
from .hot import HotReader
from .schema import metadata
from .sqlite import sqlite_reader_and_writer


class _Stoppable(Protocol):
    """A listener thread: set ``stopped`` and it ends."""

    stopped: threading.Event


class SQLBackend(Storage):
    """Engine set-up, life cycle and reads; the hooks live in the mixins that
    :class:`~.backend.SQLAlchemyStorage` joins.

    "The database is not there" (:attr:`unavailable_errors`) becomes
    :class:`~flask_zis_connections.errors.StorageUnavailable` in every hook these
    classes define, wrapped once by :class:`~flask_zis_connections.storage.base.Storage`
    as each class is created.
    """

    unavailable_errors = (OperationalError, InterfaceError)

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (url is None) == (engine is None):
            raise TypeError("SQLAlchemyStorage() takes exactly one of url= or engine=.")
        if engine is None:
            assert url is not None
            engine = sa.create_engine(url, **{"hide_parameters": True, **(engine_options or {})})
        self.engine: Engine = engine
        #: This process's listener threads (token cache changes, lease releases): a
        #: forked child has none of them and starts its own.
        self._listeners: list[_Stoppable] = []
        #: The lease release listener was started, or there is none to start.
        self._lease_listening = False
        self._start_lock = threading.Lock()
        reset_in_child(self, SQLBackend._after_fork)
        self._reader: Engine
        self._writer: Engine
        if engine.dialect.name == "sqlite":
            self._reader, self._writer = sqlite_reader_and_writer(engine)
        else:
            self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
            self._writer = engine
        #: ``get_token``'s read on connections of its own (None: through the engine).
        #: Its first connection in a process starts the lease release listener: up
        #: before the process's first refresh rather than in the middle of it.  Started
        #: by the lease, the listener connected while a burst of requests for an expired
        #: token was arriving, and once up woke every waiter to look again (a release
        #: could have been missed), each one a read and a lease attempt more.  On
        #: PostgreSQL, 4 workers: 0-2 new sessions per storm instead of 4-9.
        self._hot = HotReader.for_engine(engine, opened=_weakly(self._reads_began))
        #: The refresh's statements, compiled before any request (:mod:`.driver_sql`).
        self._refresh_sql = RefreshSQL.for_dialect(engine.dialect)
        #: Whether statements can be sent in a pipeline: psycopg 3 on a libpq with it.
        self._pipelines = _pipelines(engine)
        #: Whether the refresh's lease and read run on :mod:`sqlite3` directly.
        self._sqlite_driver = (engine.dialect.name, engine.dialect.driver) == ("sqlite", "pysqlite")

    def _one_statement(self) -> Engine:
        """Where a write that is a single statement runs: outside an explicit
        transaction, so the statement is a transaction of its own.

        On PostgreSQL (autocommit) that is one round trip instead of ``BEGIN``, the
        statement and ``COMMIT``.  On SQLite a writing statement takes the write lock
        as it starts (waiting for it as ``BEGIN IMMEDIATE`` would) and commits when it
        is done: a statement that returns no rows within the one driver call that runs
        it, one with ``RETURNING`` once its row is fetched.  The lock is no longer held
        across the GIL hand-offs between ``BEGIN IMMEDIATE``, the statement(s) and
        ``COMMIT``: under load each lasted milliseconds to tens of them, while the
        other processes waiting for the lock slept in SQLite's busy handler for longer
        still (its naps grow to 25 ms and beyond).
        """
        return self._reader

    def __repr__(self) -> str:
        return f"<SQLAlchemyStorage {self.engine.url.render_as_string(hide_password=True)}>"

    def _unavailable(self, error: Exception) -> StorageUnavailable:
        """A message that says what to check and carries no URL, host or password.

        The driver's own text (which may name the host, and SQLAlchemy's rendering of
        which includes the SQL) stays on ``__cause__`` for the logs.
        """
        orig = getattr(error, "orig", None)
        kind = type(orig).__name__ if orig is not None else type(error).__name__
        return StorageUnavailable(
            f"The connections database is unavailable ({kind}). Check ZIS_DATABASE_URI, "
            "that the database server is running and reachable, and that its tables exist "
            "(ZIS_CREATE_TABLES or the shipped migrations)."
        )

    # -- life cycle ------------------------------------------------------------
    def create_tables(self) -> None:
        """``metadata.create_all``; a second process racing us is tolerated.

        On SQLite the DDL runs in a ``BEGIN IMMEDIATE`` transaction, so concurrent
        start-ups serialize.  PostgreSQL may report a duplicate table or type when
        two processes create at once; the retry then finds everything in place.
        """
        try:
            metadata.create_all(self._writer)
        except (ProgrammingError, IntegrityError):
            metadata.create_all(self._writer)

    def close(self) -> None:
        for listener in self._listeners:
            listener.stopped.set()
        if self._hot is not None:
            self._hot.close()
        self.engine.dispose()

    def healthcheck(self) -> None:
        with self._reader.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- token cache invalidation across processes (PostgreSQL only) -----------------
    def notify_changed(self, integration: str, name: str | None) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        with self._reader.connect() as conn:  # autocommit: the NOTIFY is sent at once
            conn.execute(
                sa.text("SELECT pg_notify(:channel, :payload)"),
                {"channel": token_cache.CHANNEL, "payload": token_cache.payload(integration, name)},
            )

    def start_change_listener(self, cache: token_cache.TokenCache) -> None:
        connect = self._listen_connector()
        if connect is None:
            return
        listener = token_cache.ChangeListener(connect, cache)
        self._listeners.append(listener)
        start_soon(listener)  # the get_token that made the cache's first entry goes on

    def _listen_connector(self) -> Callable[[], Any] | None:
        """How a ``LISTEN`` thread opens its own autocommit connection, opened as the
        engine opens its own; None where there is no ``LISTEN`` (only PostgreSQL through
        psycopg 3 has one here)."""
        dialect = self.engine.dialect
        if dialect.name != "postgresql" or dialect.driver != "psycopg":
            return None
        import psycopg

        cargs, cparams = dialect.create_connect_args(self.engine.url)

        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(*cargs, **{**cparams, "autocommit": True})

        return connect

    def _reads_began(self) -> None:
        self._listen_for_lease_releases(self.lease_releases())

    def _after_fork(self) -> None:
        """A forked child: the parent's listener threads did not come along (nothing to
        stop), and the lock that starts them may have been held."""
        self._listeners = []
        self._lease_listening = False
        self._start_lock = threading.Lock()

    def _read(self, stmt: sa.Select[Any], params: Mapping[str, Any]) -> Sequence[Row[Any]]:
        """Run a read, retrying once on a connection the server dropped.

        A pooled PostgreSQL connection can die while idle (server restart, proxy
        timeout); SQLAlchemy invalidates the pool and a retry gets a fresh one.  Reads
        are safe to repeat, writes are not, so only reads retry.
        """
        return self._reading(lambda conn: conn.execute(stmt, params).all())

    def _read_sql(self, sql: DriverSQL, params: Mapping[str, Any]) -> Sequence[Row[Any]]:
        """:meth:`_read` of a statement compiled ahead (:mod:`.driver_sql`): its rows
        hold what the driver returned."""
        return self._reading(lambda conn: sql.run(conn, params).all())

    def _reading(self, read: Callable[[Connection], Sequence[Row[Any]]]) -> Sequence[Row[Any]]:
        try:
            with self._reader.connect() as conn:
                return read(conn)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self._reader.connect() as conn:
            return read(conn)


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` called through a weak reference to its object, so that what holds the
    callable (the hot reader) does not keep its storage alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _pipelines(engine: Engine) -> bool:
    dialect = engine.dialect
    if (dialect.name, dialect.driver) != ("postgresql", "psycopg"):
        return False
    import psycopg

    return bool(psycopg.Pipeline.is_supported())
