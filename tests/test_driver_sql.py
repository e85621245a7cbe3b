"""Statements compiled ahead and run as the driver's own SQL (the refresh's).

Their behaviour (taking, renewing and releasing the lease, the row with its back-off
and client) is the storage contract's, run on every backend; here: what compiling
ahead promises."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from flask_zis_connections.errors import StorageUnavailable
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.contract.builders import T0, make_client, make_record
from flask_zis_connections.storage.sqlalchemy import queries as q
from flask_zis_connections.storage.sqlalchemy.driver_sql import DriverSQL, RefreshSQL
from flask_zis_connections.storage.sqlalchemy.schema import refresh_leases


def test_a_statement_with_a_value_of_its_own_is_refused() -> None:
    """Every value comes with the call: one bound inside the statement would be lost."""
    stmt = sa.select(refresh_leases.c.owner).where(refresh_leases.c.key == "fixed")
    with pytest.raises(ValueError, match="binds no value of its own"):
        DriverSQL(stmt, sqlite.dialect())


def test_parameters_follow_the_drivers_style() -> None:
    """SQLite's ``?`` takes a sequence in the statement's order, a value used twice at
    both places; psycopg's named style takes the mapping."""
    values = {"b_key": "k", "b_owner": "o", "b_expires_at": 9, "b_now": 5, "b_uuid": "u"}
    lite = DriverSQL(q.LEASE_UPSERTS[("sqlite", True)], sqlite.dialect())
    assert lite.sql.count("?") == len(lite.order) == 6
    # SELECT key, owner, expires WHERE NOT EXISTS (uuid, retry_at > now) ... WHERE expires <= now
    assert lite.params(values) == ("k", "o", 9, "u", 5, 5)
    pg = DriverSQL(q.LEASE_UPSERTS[("postgresql", True)], postgresql.psycopg.dialect())
    assert not pg.positional and pg.params(values) is values
    assert "%(b_now)s" in pg.sql and "RETURNING" in pg.sql


def test_compiled_once_per_process_and_dialect(tmp_path: Path) -> None:
    """Apps made one after another share the compiled statements; each dialect has its own."""
    one = SQLAlchemyStorage(f"sqlite:///{tmp_path}/one.sqlite3")
    two = SQLAlchemyStorage(f"sqlite:///{tmp_path}/two.sqlite3")
    try:
        assert one._refresh_sql is two._refresh_sql
        assert one._refresh_sql is RefreshSQL.for_dialect(one.engine.dialect)
        pg = RefreshSQL.for_dialect(postgresql.psycopg.dialect())
        assert pg is not one._refresh_sql and "pg_notify" in pg.release_lease.sql
        assert "pg_notify" not in one._refresh_sql.release_lease.sql
    finally:
        one.close()
        two.close()


@pytest.mark.postgres
def test_a_pipeline_on_a_dropped_connection_says_the_storage_is_unavailable(postgres_url: str) -> None:
    """The lease and its read share a pipeline on a pooled connection: one whose
    server went away is reported as the storage being unavailable (a 503 over HTTP,
    no driver text), is not used again, and the next attempt goes through."""
    storage = SQLAlchemyStorage(postgres_url)
    try:
        storage.create_tables()
        assert storage._pipelines
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        take = functools.partial(storage.take_lease_and_read, integration="acme_crm", uuid=record.uuid)
        assert take("refresh:a", "a", 30, T0)[0]
        with storage._one_statement().connect() as conn:  # the pooled connection the attempt used
            pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        admin = sa.create_engine(postgres_url)
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            admin.dispose()
        with pytest.raises(StorageUnavailable) as caught:
            take("refresh:b", "b", 30, T0)
        said = str(caught.value)
        assert said.startswith("The connections database is unavailable (OperationalError)"), said
        assert "127.0.0.1" not in said and "INSERT" not in said
        taken, state = take("refresh:b", "b", 30, T0)
        assert taken and state is not None and state.record.uuid == record.uuid
    finally:
        storage.close()


def test_a_failing_lease_on_sqlite_says_the_storage_is_unavailable(tmp_path: Path) -> None:
    """On SQLite the lease and its read are sent on a pooled connection's own
    ``sqlite3`` handle: a failure there is reported as the storage being unavailable
    (no SQL, no driver text), the connection is closed rather than pooled again, and
    the next attempt goes through."""
    path = tmp_path / "zis.sqlite3"
    storage = SQLAlchemyStorage(f"sqlite:///{path}")
    used: list[Any] = []
    sa.event.listen(storage.engine, "checkout", lambda dbapi, _rec, _proxy: used.append(dbapi))
    try:
        storage.create_tables()
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        take = functools.partial(storage.take_lease_and_read, integration="acme_crm", uuid=record.uuid)
        assert take("refresh:a", "a", 30, T0)[0]
        other = sqlite3.connect(path)  # another process changing the file under it
        try:
            other.execute("ALTER TABLE zis_refresh_leases RENAME TO zis_elsewhere")
            other.commit()
            del used[:]
            with pytest.raises(StorageUnavailable) as caught:
                take("refresh:b", "b", 30, T0)
            said = str(caught.value)
            assert said.startswith("The connections database is unavailable (OperationalError)"), said
            assert "INSERT" not in said and "zis_refresh_leases" not in said
            assert len(used) == 1
            with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                used[0].execute("SELECT 1")
            other.execute("ALTER TABLE zis_elsewhere RENAME TO zis_refresh_leases")
            other.commit()
        finally:
            other.close()
        taken, state = take("refresh:b", "b", 30, T0)
        assert taken and state is not None and state.record.uuid == record.uuid
    finally:
        storage.close()


def test_the_sqlite_lease_is_committed_on_a_connection_that_opens_transactions(tmp_path: Path) -> None:
    """A host's own connect hook may hand its connections back to :mod:`sqlite3`'s
    implicit transactions (an ``isolation_level`` other than None, set after ours).
    The lease is still committed when the attempt returns - seen by another process
    at once, and not rolled back when its connection goes back to the pool."""
    path = tmp_path / "zis.sqlite3"
    storage = SQLAlchemyStorage(f"sqlite:///{path}")

    def implicit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = "DEFERRED"

    try:
        storage.create_tables()
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        sa.event.listen(storage.engine, "connect", implicit)
        storage.engine.dispose()
        taken, state = storage.take_lease_and_read(
            "refresh:x", "me", 30, T0, integration="acme_crm", uuid=record.uuid
        )
        assert taken and state is not None
        other = sqlite3.connect(path)
        try:
            rows = other.execute("SELECT owner FROM zis_refresh_leases WHERE key = 'refresh:x'").fetchall()
        finally:
            other.close()
        assert rows == [("me",)]
        assert not storage.take_lease_and_read(
            "refresh:x", "you", 30, T0, integration="acme_crm", uuid=record.uuid
        )[0]
    finally:
        storage.close()
