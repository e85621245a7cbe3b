"""The app ``bench/bench_show.py`` serves under gunicorn: the extension's blueprint and,
beside it, a bare Flask endpoint answering the same connection JSON.

``prepare()`` (run once, in the benchmark's own process) fills a database with ``N``
fresh OAuth connections and issues one API token; ``create_app()`` (gunicorn's app
factory, run in every worker) reads what ``prepare`` wrote from environment variables::

    gunicorn -w 2 'bench.show_app:create_app()'

* ``GET /api/services/zis/connections/acme?name=conn-0000042`` - ours: bearer token,
  rate limit (on, at a limit the load does not reach), the connection read, due check,
  decrypt, JSON;
* ``GET /bare?name=conn-0000042`` - a plain Flask view returning ``jsonify`` of a dict
  with the same fields and values as one of ours, computed once at start-up: what
  Flask costs for the same answer with none of the work;
* ``GET /bare-read?name=conn-0000042`` - the bare view after the storage read of that
  connection (``storage.get_connection``): the floor for an endpoint that must read it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _fill
from bench._fill import INTEGRATION, name_of
from flask_zis_connections import ZISConnections
from flask_zis_connections.api.serializers import connection_json
from flask_zis_connections.storage import SQLAlchemyStorage

#: High enough that no run reaches it (a 429 would void the numbers), low enough to be real:
#: every request still takes the limiter's full path.
BENCH_RATELIMIT = "50000000 per minute"
ENV_DB = "ZIS_BENCH_SHOW_DB"
ENV_KEY = "ZIS_BENCH_SHOW_KEY"
ENV_EXTRA = "ZIS_BENCH_SHOW_CONFIG"  # "KEY=VALUE;KEY=VALUE" overrides (the profile's "before" run)


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
        # A reused PostgreSQL database starts over (the client takes its connections along).
        for client in zis.list_oauth_clients(INTEGRATION):
            zis.delete_oauth_client(INTEGRATION, client.uuid)
    _fill.Table(app).grow_to(size)
    with app.app_context():
        token = zis.issue_access_token(INTEGRATION)
    storage.close()
    return token
