"""Statements compiled once per dialect and run as the driver's own SQL.

SQLAlchemy compiles a statement the first time a process runs it, and builds the
expression of one made per call every time.  For most statements that is noise; for
the refresh's own (taking, renewing and releasing the lease, reading the row with its
back-off and client) it is on the way of every caller waiting for a refresh: in each
process the first refresh compiled them (about 2 ms of CPU each for the lease and the
row), and under a burst of requests each millisecond of CPU the lease holder needs is
many milliseconds of waiting for the GIL.  These statements are compiled when the
storage is made, before any request, and run with ``Connection.exec_driver_sql`` -
still on the engine's connections and transactions, without SQLAlchemy's compiler or
result typing (the row functions of :mod:`.rows` coerce what a driver returns raw,
SQLite's integer booleans included).

A compiled form is kept per dialect and parameter style for the process, so apps made
one after another (tests, a CLI) compile once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from . import queries as q

#: Parameter styles that take a sequence in the compiled order; the named and
#: pyformat styles take a mapping.
_POSITIONAL: Final = frozenset({"qmark", "numeric", "format"})


class DriverSQL:
    """One statement's SQL for one dialect, and its parameters in the driver's style."""

    __slots__ = ("order", "positional", "sql")

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # a statement, not DDL
        bound = sorted(key for key, value in compiled.params.items() if value is not None)
        if bound:  # they would be lost: every value comes with the call
            raise ValueError(f"a statement run as driver SQL binds no value of its own: {bound}")
        self.sql = str(compiled)
        #: Whether the driver takes a sequence, in the order of :attr:`order`.
        self.positional = dialect.paramstyle in _POSITIONAL
        order = compiled.positiontup
        self.order: tuple[str, ...] = tuple(order) if order else ()

    def params(self, values: Mapping[str, Any]) -> Any:
        """``values`` as the driver takes them."""
        if self.positional:
            return tuple(values[key] for key in self.order)
        return values

    def run(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self.params(values))


@dataclass(frozen=True)
class RefreshSQL:
    """The refresh's statements for one dialect."""

    #: The connection's row with its back-off and OAuth client (``integration``, ``uuid``).
    refresh_state: DriverSQL
    renew_lease: DriverSQL
    #: On PostgreSQL with its ``NOTIFY`` (``channel``).
    release_lease: DriverSQL
    #: None on a database without ``INSERT ... ON CONFLICT``.
    lease_upsert: DriverSQL | None
    lease_upsert_unless_backed_off: DriverSQL | None
    #: The refresh's compare-and-swap with the row it leaves; None where ``UPDATE``
    #: cannot return it (SQLite before 3.35).
    leased_write: DriverSQL | None

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> RefreshSQL:
        """Compiled for ``dialect`` once per process (per dialect and parameter style)."""
        key = (dialect.name, dialect.driver, dialect.paramstyle, dialect.update_returning)
        found = _compiled.get(key)
        if found is None:
            with _lock:
                found = _compiled.get(key)
                if found is None:
                    found = _compiled[key] = cls._compile(dialect)
        return found

    @classmethod
    def _compile(cls, dialect: Dialect) -> RefreshSQL:
        name = dialect.name
        upserts = [q.LEASE_UPSERTS.get((name, backed_off)) for backed_off in (False, True)]
        plain, unless = (None if stmt is None else DriverSQL(stmt, dialect) for stmt in upserts)
        release = q.RELEASE_LEASE_NOTIFY if name == "postgresql" else q.RELEASE_LEASE
        return cls(
            refresh_state=DriverSQL(q.REFRESH_STATE, dialect),
            renew_lease=DriverSQL(q.RENEW_LEASE, dialect),
            release_lease=DriverSQL(release, dialect),
            lease_upsert=plain,
            lease_upsert_unless_backed_off=unless,
            leased_write=DriverSQL(q.LEASED_WRITE, dialect) if dialect.update_returning else None,
        )


_compiled: dict[tuple[str, str, str, bool], RefreshSQL] = {}
_lock = threading.Lock()
