"""Statements compiled ahead and run as the driver's own SQL (the refresh's).

Their behaviour (taking, renewing and releasing the lease, the row with its back-off
and client) is the storage contract's, run on every backend; here: what compiling
ahead promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from flask_zis_connections.storage import SQLAlchemyStorage
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
    assert lite.params(values) == tuple(values[key] for key in lite.order)
    assert lite.order.count("b_now") == 2
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
