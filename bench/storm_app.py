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
``STORM_CODE``            a checkout whose package to run instead of the installed one

Every response carries ``X-Worker-Pid`` and ``X-Package`` (the checkout the package was
imported from), so the benchmark can tell the workers apart and check what ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if os.environ.get("STORM_CODE"):
    # Another checkout's package: its directory first on the path, and an editable
    # install's finder (which would answer before the path is searched) last.
    sys.path.insert(0, os.environ["STORM_CODE"])
    editable = [f for f in sys.meta_path if type(f).__module__.startswith("__editable__")]
    sys.meta_path[:] = [f for f in sys.meta_path if f not in editable] + editable

from flask import Flask, Response

import flask_zis_connections
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

    # Worked out once: resolving the path on every answer made file system calls, each
    # letting go of the GIL, in every request the benchmark measures.
    stamp = {
        "X-Worker-Pid": str(os.getpid()),
        "X-Package": str(Path(flask_zis_connections.__file__).resolve().parents[1]),
    }

    @app.after_request
    def _stamp(resp: Response) -> Response:
        resp.headers.update(stamp)
        return resp

    Path(env["STORM_READY_DIR"], str(os.getpid())).touch()
    return app
