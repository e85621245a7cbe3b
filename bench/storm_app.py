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
``STORM_FLOOR_DELAY``     seconds the floor's flight takes (the provider's delay)
``STORM_TRACE_DIR``       each worker marks the refresh's steps and writes them here when
                          it exits (``bench/storm_trace.py``, copied beside this file)

Besides the extension's API it serves ``GET /floor?burst=<id>``: the floor any refresh
under this server can reach.  The first request of a burst in each worker sleeps the
provider's delay in the extension's own single flight, the others wait for it and get
their turn one after another as the extension's waiters do, and every one answers the
same bytes - no authentication, database, lease, provider call or encryption.

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

import time

from flask import Flask, Response, request

import flask_zis_connections
from flask_zis_connections import ZISConnections
from flask_zis_connections.singleflight import SingleFlight

#: What the floor answers: a connection-sized JSON object with a token.
FLOOR_BODY = (
    b'{"access_token":"%s","created_at":"2026-01-01T00:00:00Z","integration":"acme",'
    b'"name":"main","needs_reauth":false,"oauth_client_name":"acme","permission_scope":"",'
    b'"refresh_token":"%s","token_expiry":"2026-01-01T01:00:00Z","type":"oauth",'
    b'"updated_at":"2026-01-01T00:00:00Z","uuid":"00000000-0000-0000-0000-000000000000",'
    b'"version":2}'
) % (b"a" * 32, b"r" * 32)


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
        # A warm storm's token expires by the clock a few seconds after boot: due a
        # second before (the benchmark's LEEWAY), not the default minute before.
        ZIS_REFRESH_LEEWAY=float(env.get("STORM_REFRESH_LEEWAY", "60")),
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

    floor_delay = float(env.get("STORM_FLOOR_DELAY", "0.5"))
    floors: SingleFlight[None] = SingleFlight()

    @app.get("/floor")
    def floor() -> Response:
        burst = request.args.get("burst", "")
        floors.run(burst, lambda: time.sleep(floor_delay), 60)
        return app.response_class(FLOOR_BODY, mimetype="application/json")

    if env.get("STORM_TRACE_DIR"):
        import atexit

        from storm_trace import Tracer

        atexit.register(Tracer(env["STORM_TRACE_DIR"]).install().dump)
    Path(env["STORM_READY_DIR"], str(os.getpid())).touch()
    return app
