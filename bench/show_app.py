"""The app ``bench/bench_show.py`` serves under gunicorn: the extension's blueprint and,
beside it, a bare Flask endpoint answering the same connection JSON.

``prepare()`` (run once, in the benchmark's own process) fills a database with ``N``
fresh OAuth connections and issues one API token; ``create_app()`` (gunicorn's app
factory, run in every worker) reads what ``prepare`` wrote from environment variables::

    gunicorn -w 2 'bench.show_app:create_app()'

* ``GET /api/services/zis/connections/acme?name=conn-000042`` - ours: bearer token,
  rate limit (on, at a limit the load does not reach), the connection read, due check,
  decrypt, JSON;
* ``GET /bare?name=conn-000042`` - a plain Flask view returning ``jsonify`` of a dict
  with the same fields and values as one of ours, computed once at start-up: what
  Flask costs for the same answer with none of the work;
* ``GET /bare-read?name=conn-000042`` - the bare view after the storage read of that
  connection (``storage.get_connection``): the floor for an endpoint that must read it.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, jsonify, request

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask_zis_connections import ZISConnections
from flask_zis_connections.api.serializers import connection_json
from flask_zis_connections.crypto import Encryptor
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.sqlalchemy.schema import connections
from flask_zis_connections.storage.times import to_ms

INTEGRATION = "acme"
#: High enough that no run reaches it (a 429 would void the numbers), low enough to be real:
#: every request still takes the limiter's full path.
BENCH_RATELIMIT = "50000000 per minute"
ENV_DB = "ZIS_BENCH_SHOW_DB"
ENV_KEY = "ZIS_BENCH_SHOW_KEY"
ENV_EXTRA = "ZIS_BENCH_SHOW_CONFIG"  # "KEY=VALUE;KEY=VALUE" overrides (the profile's "before" run)
_BATCH = 5_000


def name_of(i: int) -> str:
    return f"conn-{i:06d}"


def config(db_url: str, key: str) -> dict[str, Any]:
    return {
        "SECRET_KEY": "bench",
        "ZIS_STORAGE": "sqlalchemy",
        "ZIS_DATABASE_URI": db_url,
        "ZIS_ENCRYPTION_KEYS": [key],
        "ZIS_RATELIMIT": BENCH_RATELIMIT,
        "ZIS_ACCOUNT_ID": 1234567,
    }


def _extra_config() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in os.environ.get(ENV_EXTRA, "").split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            out[k.strip()] = int(v) if v.strip().isdigit() else v.strip()
    return out


def create_app(db_url: str | None = None, key: str | None = None) -> Flask:
    """gunicorn's factory: the blueprint and ``/bare`` on one app."""
    db_url = db_url or os.environ[ENV_DB]
    key = key or os.environ[ENV_KEY]
    app = Flask("bench_show")
    app.config.update(config(db_url, key), ZIS_CREATE_TABLES=False, **_extra_config())
    zis = ZISConnections(app)
    app.register_blueprint(zis.blueprint)
    with app.app_context():
        body = dict(connection_json(zis.get_connection(INTEGRATION, name_of(0)), 1234567))

    storage = app.extensions["zis_connections"].storage

    @app.get("/bare")
    def bare() -> Response:
        return jsonify(body)

    @app.get("/bare-read")
    def bare_read() -> Response:
        """The bare view plus the one storage read ours cannot do without."""
        if storage.get_connection(INTEGRATION, name=request.args.get("name", "")) is None:
            return Response(status=404)
        return jsonify(body)

    return app


def prepare(db_url: str, key: str, size: int) -> str:
    """Create the schema, one OAuth client and ``size`` connections; return an API token."""
    app = Flask("bench_show_prepare")
    app.config.update(config(db_url, key))
    zis = ZISConnections(app)
    storage: SQLAlchemyStorage = app.extensions["zis_connections"].storage
    with app.app_context():
        with storage.engine.begin() as conn:  # a reused PostgreSQL database starts over
            conn.execute(sa.delete(connections).where(connections.c.integration == INTEGRATION))
        existing = [c for c in zis.list_oauth_clients(INTEGRATION) if c.name == "acme"]
        client = (
            existing[0]
            if existing
            else zis.create_oauth_client(
                INTEGRATION,
                name="acme",
                client_id="bench",
                client_secret="bench-secret",
                auth_url="https://provider.test/authorize",
                token_url="https://provider.test/token",
            )
        )
        _fill(storage.engine, Encryptor([key]), client.uuid, size)
        token = zis.issue_access_token(INTEGRATION)
    storage.close()
    return token


def _fill(engine: sa.Engine, enc: Encryptor, client_uuid: str, size: int) -> None:
    """``size`` fresh connections (30 days to expiry), one executemany per batch."""
    now = datetime.now(UTC)
    now_ms, expiry_ms = to_ms(now), to_ms(now + timedelta(days=30))
    for start in range(0, size, _BATCH):
        rows = [
            {
                "uuid": str(uuid.uuid4()),
                "integration": INTEGRATION,
                "name": name_of(i),
                "oauth_client_uuid": client_uuid,
                "access_token_enc": enc.encrypt(f"access-token-{i:06d}-{uuid.uuid4().hex}"),
                "token_type": "bearer",
                "refresh_token_enc": enc.encrypt(f"refresh-token-{uuid.uuid4().hex}"),
                "token_response_enc": enc.encrypt(
                    '{"access_token":"...","token_type":"bearer","expires_in":2592000}'
                ),
                "token_expiry": expiry_ms,
                "permission_scope": "read write",
                "oauth_url_subdomain": None,
                "created_by": "bench",
                "grant_type": "authorization_code",
                "needs_reauth": False,
                "version": 1,
                "created_at": now_ms,
                "updated_at": now_ms,
            }
            for i in range(start, min(size, start + _BATCH))
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(connections), rows)
