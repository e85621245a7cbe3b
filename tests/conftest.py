"""Shared fixtures: a fresh host app per test from an app factory, on every backend.

Config goes into the factory (never patched afterwards).  ``backend`` is parametrized
over the in-memory store, a real SQLite file and - when ``ZIS_TEST_POSTGRES_URL`` is set
(``.ci/services.sh`` starts a server; CI always sets it) - a real PostgreSQL database.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient

from flask_zis_connections import ZISConnections
from flask_zis_connections.storage import SQLAlchemyStorage

from .provider_fixtures import provider, provider_factory  # noqa: F401 - fixtures

POSTGRES_URL = os.environ.get("ZIS_TEST_POSTGRES_URL")
ORIGIN = "https://client.int"
TEST_LOGGER = "flask_zis_connections"


def require_postgres() -> str:
    """The PostgreSQL URL, or skip (fail under CI=true: CI must run these)."""
    if POSTGRES_URL:
        return POSTGRES_URL
    msg = (
        "PostgreSQL tests skipped: set ZIS_TEST_POSTGRES_URL "
        '(eval "$(bash .ci/services.sh)" starts a throwaway server)'
    )
    if os.environ.get("CI") == "true":
        pytest.fail(msg.replace("skipped", "required in CI"))
    pytest.skip(msg)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL into a private schema (one per test process) of the test database, so
    concurrent test runs on one server never drop each other's tables."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = require_postgres()
    schema = f"zis_test_{os.getpid()}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        yield (
            make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        admin.dispose()


def reset_postgres(url: str) -> None:
    storage = SQLAlchemyStorage(url)
    try:
        from flask_zis_connections.storage.sqlalchemy.schema import metadata

        metadata.drop_all(storage.engine)
    finally:
        storage.close()


BACKENDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_uri(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> str | None:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'zis.sqlite3'}"
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        reset_postgres(url)
        return url
    return None


@pytest.fixture
def make_app(tmp_path: Any, backend: str, database_uri: str | None) -> Iterator[Callable[..., Flask]]:
    """``make_app(**config)`` builds a host app with the extension on the test backend."""
    apps: list[Flask] = []

    def factory(**config: Any) -> Flask:
        app = Flask("host_app", instance_path=str(tmp_path / "instance"))
        app.config.update(
            TESTING=True,
            SECRET_KEY="test-secret-key",
            ZIS_STORAGE="memory" if backend == "memory" else "sqlalchemy",
            ZIS_DATABASE_URI=database_uri,
            ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
            ZIS_ALLOW_INSECURE_HTTP=True,
            ZIS_ALLOWED_REDIRECT_ORIGINS=[ORIGIN],
            ZIS_HTTP_TIMEOUT=2,
        )
        app.config.update(config)
        zis = ZISConnections(app)
        app.register_blueprint(zis.blueprint)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["zis_connections"].storage.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def zis(app: Flask) -> ZISConnections:
    return app.extensions["zis_connections"].ext  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def bearer(app: Flask, zis: ZISConnections) -> dict[str, str]:
    """Authorization header for integration ``acme`` (the default test integration)."""
    with app.app_context():
        return {"Authorization": f"Bearer {zis.issue_access_token('acme')}"}


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every log record (DEBUG and up, every logger) for leak checks."""
    caplog.set_level(logging.DEBUG)
    return caplog


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo(tmp_path: Any) -> Iterator[tuple[str, Flask]]:
    """The example app (host + mounted demo provider) served on a free loopback port,
    so the extension reaches the provider over real HTTP as in the README's demo."""
    import threading

    from werkzeug.serving import make_server

    from example_app import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(
        {
            "DEMO_PUBLIC_URL": base,
            "ZIS_DATABASE_URI": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
            "ZIS_ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
        }
    )
    server = make_server("127.0.0.1", port, app.wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, app
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        app.extensions["zis_connections"].storage.close()
