"""The shipped migrations build exactly the schema the storage declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import Engine, create_engine, inspect, text

from flask_zis_connections import ZISConnections
from flask_zis_connections.migrate import current, downgrade, upgrade
from flask_zis_connections.storage.sqlalchemy.schema import metadata

from .conftest import reset_postgres
from .helpers import client_body


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
        reset_postgres(url)
        cleaner = create_engine(url)
        with cleaner.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS zis_alembic_version"))
            conn.execute(text("DROP TABLE IF EXISTS host_users"))
        cleaner.dispose()
    eng = create_engine(url)
    yield eng
    eng.dispose()


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": "zis_alembic_version"}
        )
        diff = compare_metadata(ctx, metadata)
    # Only our tables matter (a host may share the database).
    return [d for d in diff if "zis_" in repr(d)]


def test_upgrade_from_empty_matches_the_declared_schema(engine: Engine) -> None:
    upgrade(engine)
    assert current(engine) == "0005"
    assert _diff(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in metadata.sorted_tables} <= tables


def test_downgrade_to_base_then_upgrade_again(engine: Engine) -> None:
    upgrade(engine)
    downgrade(engine, "base")
    assert not [
        t for t in inspect(engine).get_table_names() if t.startswith("zis_") and t != "zis_alembic_version"
    ]
    upgrade(engine)
    assert _diff(engine) == []


def test_host_tables_in_the_same_database_are_left_alone(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE host_users (id INTEGER PRIMARY KEY, email VARCHAR(100))"))
        conn.execute(text("INSERT INTO host_users (id, email) VALUES (1, 'a@example.test')"))
    upgrade(engine)
    downgrade(engine, "base")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM host_users")).scalar_one() == "a@example.test"


def test_flask_zis_db_upgrade_with_create_tables_off(engine: Engine, tmp_path: Path) -> None:
    app = Flask("migrating_host", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="x",
        ZIS_CREATE_TABLES=False,
        ZIS_DATABASE_URI=engine.url.render_as_string(hide_password=False),
        ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
    )
    zis = ZISConnections(app)
    assert "zis_oauth_clients" not in inspect(engine).get_table_names()
    result = app.test_cli_runner().invoke(args=["zis", "db", "upgrade"])
    assert result.exit_code == 0 and "0005" in result.output, result.output
    with app.app_context():
        created = zis.create_oauth_client("acme", **client_body())
        assert zis.list_oauth_clients("acme")[0].uuid == created.uuid
    app.extensions["zis_connections"].storage.close()


def test_0004_keeps_oauth_rows_and_never_reuses_an_id(engine: Engine) -> None:
    """The connection types migration rebuilds the table on SQLite: every OAuth row stays
    (as ``oauth``), and an id handed out before - even one deleted since - is never handed
    out again, so no new row can slip behind a listing cursor."""
    upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO zis_oauth_clients (uuid, integration, name, client_id, token_url, "
                "default_scopes, grant_type, token_endpoint_auth_method, pkce, authorize_params, "
                "offline_access_params, created_at, updated_at) VALUES ('k1', 'acme', 'acme', 'cid', "
                "'https://x.test', '', 'authorization_code', 'client_secret_basic', true, '{}', '{}', 0, 0)"
            )
        )
        for i in range(3):
            conn.execute(
                text(
                    "INSERT INTO zis_connections (uuid, integration, name, oauth_client_uuid, "
                    "access_token_enc, token_type, grant_type, needs_reauth, version, created_at, "
                    f"updated_at) VALUES ('u{i}', 'acme', 'c{i}', 'k1', 'enc', 'bearer', "
                    "'authorization_code', false, 1, 0, 0)"
                )
            )
        conn.execute(text("DELETE FROM zis_connections WHERE uuid = 'u2'"))
    upgrade(engine)
    assert _diff(engine) == []
    with engine.begin() as conn:
        kept = conn.execute(text("SELECT id, type, oauth_client_uuid FROM zis_connections ORDER BY id")).all()
        assert [tuple(r) for r in kept] == [(1, "oauth", "k1"), (2, "oauth", "k1")]
        conn.execute(
            text(
                "INSERT INTO zis_connections (uuid, integration, name, access_token_enc, token_type, "
                "grant_type, needs_reauth, version, created_at, updated_at, type, allowed_domain) "
                "VALUES ('t1', 'acme', 'tok', 'enc', 'bearer_token', 'authorization_code', false, 1, 0, 0, "
                "'bearer_token', 'api.example.test')"
            )
        )
        assert conn.execute(text("SELECT id FROM zis_connections WHERE uuid = 't1'")).scalar_one() == 4
    downgrade(engine, "0003")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT uuid FROM zis_connections ORDER BY id")).scalars().all() == [
            "u0",
            "u1",
        ]
