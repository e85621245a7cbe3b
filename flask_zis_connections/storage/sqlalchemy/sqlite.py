"""SQLite as a shared, multi-process store: connection settings and ``BEGIN`` control.

:mod:`sqlite3` on its own starts a transaction lazily, on the first write, as a
deferred ``BEGIN``; two processes that both read and then write then fail with
"database is locked" halfway through.  The hooks here make the backend's write
transactions start with ``BEGIN IMMEDIATE``, so writers in any thread or process
queue on the file lock for up to ``busy_timeout`` instead, and let single-statement
reads run with no transaction at all.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

#: Execution option read by the ``begin`` hook: the statement that opens a
#: transaction, or ``None`` for none at all (single-statement reads).
SQLITE_BEGIN: Final = "zis_sqlite_begin"


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Configure each new SQLite connection.

    ``isolation_level = None`` stops :mod:`sqlite3` from emitting its own
    (deferred, DML-only) ``BEGIN``, so :func:`_on_begin` decides how a transaction
    starts.  ``busy_timeout`` comes first so that switching the file to WAL waits
    for a lock instead of failing; WAL lets readers proceed while one writer
    commits, and foreign keys make ``ON DELETE CASCADE`` work.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _on_begin(conn: Connection) -> None:
    """Emit ``BEGIN IMMEDIATE`` for our writes, nothing for our reads.

    Any other user of the same engine (a host that passed its own) gets a plain
    ``BEGIN``: SQLAlchemy's documented recipe for real SQLite transactions.
    """
    begin = conn.get_execution_options().get(SQLITE_BEGIN, "BEGIN")
    if begin:
        conn.exec_driver_sql(begin)


def sqlite_reader_and_writer(engine: Engine) -> tuple[Engine, Engine]:
    """Install the hooks on ``engine`` (once) and return its reader and writer views.

    Idle pooled connections were opened before the hooks: they are replaced, or one
    of them would run our transactions without WAL and ``BEGIN IMMEDIATE``.
    """
    if not event.contains(engine, "connect", _on_connect):
        event.listen(engine, "connect", _on_connect)
    if not event.contains(engine, "begin", _on_begin):
        event.listen(engine, "begin", _on_begin)
    engine.dispose()
    return (
        engine.execution_options(**{SQLITE_BEGIN: None}),
        engine.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"}),
    )
