"""The host app the refresh-storm benchmark runs under gunicorn, configured from the
environment (what a host would put in its deployment).

``bench/bench_storm.py`` copies this file next to gunicorn as ``zis_storm_app.py``, so
the same app can run on this checkout's package or, with ``--code``, on another one put
first on ``PYTHONPATH`` (the code before a change).  Nothing here touches the database
at start-up: the benchmark creates the tables and the connection beforehand, so every
database transaction and session counted during a run is one a request caused.

``ZIS_DATABASE_URI``      SQLAlchemy URL (PostgreSQL or a SQLite file)
``ZIS_ENCRYPTION_KEYS``   Fernet keys, comma-separated, newest first
``STORM_READY_DIR``       each worker that has built the app touches ``<dir>/<pid>``

Every response carries ``X-Worker-Pid``, so the benchmark can tell the workers apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response

from flask_zis_connections import ZISConnections


def create_app() -> Flask:
    env = os.environ
    app = Flask("storm_host")
    app.config.update(
        SECRET_KEY="storm-secret-key",
        ZIS_DATABASE_URI=env["ZIS_DATABASE_URI"],
        ZIS_ENCRYPTION_KEYS=[k for k in env["ZIS_ENCRYPTION_KEYS"].split(",") if k],
        ZIS_ALLOW_INSECURE_HTTP=True,  # the provider is a loopback http:// server
        ZIS_RATELIMIT=None,
        ZIS_CREATE_TABLES=False,
    )
    zis = ZISConnections(app)
    app.register_blueprint(zis.blueprint)

    @app.after_request
    def _stamp(resp: Response) -> Response:
        resp.headers["X-Worker-Pid"] = str(os.getpid())
        return resp

    Path(env["STORM_READY_DIR"], str(os.getpid())).touch()
    return app
