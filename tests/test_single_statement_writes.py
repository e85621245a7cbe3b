"""Writes that are one statement run as a transaction of their own.

Wrapped in ``BEGIN`` ... ``COMMIT``, each would cost PostgreSQL three round trips
instead of one, and hold SQLite's write lock across the GIL hand-offs between the
three calls while every other writer of the file waits (:mod:`.storage.sqlalchemy.engine`).
Each write below is checked on both databases by what reached the driver: one
statement, in autocommit on PostgreSQL, with no ``BEGIN`` before it on SQLite - and by
its effect, read back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from flask_zis_connections.domain import ApiToken
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.contract.builders import (
    make_client,
    make_code,
    make_event,
    make_flow,
    make_record,
)
from flask_zis_connections.testing import T0


@dataclass
class Heard:
    """What reached the driver while a write ran."""

    statements: list[str]
    #: PostgreSQL: whether the connection was in autocommit for each statement.
    autocommit: list[bool]


@pytest.fixture
def storage(database_uri: str | None) -> Iterator[SQLAlchemyStorage]:
    assert database_uri is not None
    backend = SQLAlchemyStorage(database_uri)
    try:
        backend.create_tables()
        yield backend
    finally:
        backend.close()


def heard(storage: SQLAlchemyStorage, write: Callable[[], object]) -> Heard:
    """Run ``write`` and return the statements the engine's connections sent for it."""
    got = Heard([], [])
    engine = storage.engine
    sqlite = engine.dialect.name == "sqlite"

    def traced(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(got.statements.append)

    def seen(conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        got.statements.append(statement)
        got.autocommit.append(conn.connection.dbapi_connection.autocommit)

    if sqlite:
        # SQLite's own trace shows the BEGIN that pysqlite or a hook may send.
        engine.dispose()
        sa_event.listen(engine, "connect", traced)
    else:
        sa_event.listen(engine, "before_cursor_execute", seen)
    try:
        write()
    finally:
        if sqlite:
            sa_event.remove(engine, "connect", traced)
            engine.dispose()
        else:
            sa_event.remove(engine, "before_cursor_execute", seen)
    got.statements = [s for s in got.statements if not s.upper().startswith("PRAGMA")]
    return got


def _flow(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    flow = make_flow()
    return (lambda: storage.add_flow(flow)), (lambda: storage.get_flow(flow.id) == flow)


def _connection_uuid(storage: SQLAlchemyStorage) -> str:
    """A stored connection (with its client) for the rows that refer to one."""
    return storage.add_connection(make_record(storage.add_client(make_client()))).uuid


def _code(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    code = make_code(connection_uuid=_connection_uuid(storage))
    return (
        lambda: storage.add_verification_code(code),
        lambda: storage.consume_verification_code(code.code_hash, code.integration, T0) is not None,
    )


def _event(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    event = make_event()
    return (
        lambda: storage.add_event(event),
        lambda: (
            [e.connection_uuid for e in storage.list_events(event.integration, limit=5).items]
            == [event.connection_uuid]
        ),
    )


def _api_token(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    token = ApiToken(id="tok-1", token_hash="hash-1", integration="acme_crm", created_at=T0)
    return (lambda: storage.add_api_token(token)), (lambda: storage.get_api_token("hash-1") == token)


def _revoke(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    storage.add_api_token(ApiToken(id="tok-1", token_hash="hash-1", integration="acme_crm", created_at=T0))

    def revoked() -> bool:
        return storage.get_api_token("hash-1") is None  # a revoked token is found by nobody

    return (lambda: storage.revoke_api_token("tok-1")), revoked


def _backoff_cleared(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    uuid = _connection_uuid(storage)
    storage.record_refresh_failure(uuid, "provider_error", T0, base=1.0, cap=60.0)
    assert storage.get_refresh_backoff(uuid) is not None
    return (
        lambda: storage.clear_refresh_backoff(uuid),
        lambda: storage.get_refresh_backoff(uuid) is None,
    )


def _events_purged(storage: SQLAlchemyStorage) -> tuple[Callable[[], object], Callable[[], bool]]:
    """Fewer old events than a batch: one ``DELETE``, one transaction of its own."""
    old, kept = make_event(created_at=T0), make_event(created_at=T0 + timedelta(days=1))
    for event in (old, kept):
        storage.add_event(event)

    def only_kept() -> bool:
        return [e.connection_uuid for e in storage.list_events("acme_crm", limit=5).items] == [
            kept.connection_uuid
        ]

    return (lambda: storage.purge_events(T0 + timedelta(hours=1))), only_kept


WRITES = {
    "add_flow": _flow,
    "add_verification_code": _code,
    "add_event": _event,
    "add_api_token": _api_token,
    "revoke_api_token": _revoke,
    "clear_refresh_backoff": _backoff_cleared,
    "purge_events": _events_purged,
}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("write", list(WRITES))
def test_a_one_statement_write_is_its_own_transaction(storage: SQLAlchemyStorage, write: str) -> None:
    run, done = WRITES[write](storage)
    got = heard(storage, run)
    assert done(), write
    assert len(got.statements) == 1, got.statements
    if storage.engine.dialect.name == "postgresql":
        assert got.autocommit == [True], got
    else:
        assert not got.statements[0].upper().startswith(("BEGIN", "COMMIT")), got.statements
