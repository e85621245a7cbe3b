"""A host app for gunicorn, configured entirely from environment variables.

``tests/test_multiworker.py`` runs it as ``gunicorn 'tests.multiworker_app:create_app()'``
with several worker processes against PostgreSQL; the test process builds the same app
in-process (``create_app(env)``) to run the OAuth flow and to inspect the database.

Environment (what a host would put in its deployment):

``ZIS_DATABASE_URI``            SQLAlchemy URL (PostgreSQL, with ``options=-csearch_path=...``)
``ZIS_ENCRYPTION_KEYS``         Fernet keys, comma-separated, newest first
``SECRET_KEY``                  Flask's signing key
``ZIS_ALLOW_INSECURE_HTTP``     ``1`` to allow the loopback ``http://`` provider
``ZIS_ALLOWED_REDIRECT_ORIGINS``  comma-separated origins (optional)
``ZIS_RATELIMIT``               a limit string; empty, ``0`` or ``off`` disables the limiter
``ZIS_HTTP_TIMEOUT``            seconds per provider call (optional)
``ZIS_ENGINE_OPTIONS``          JSON object of ``create_engine`` options, e.g.
                                ``{"pool_size": 10, "max_overflow": 10}`` (optional).  The
                                extension has no config key for engine options, so the app
                                builds the engine itself and passes a ``SQLAlchemyStorage``
                                instance as ``ZIS_STORAGE`` (which the extension allows).
``ZIS_TEST_READY_DIR``          test instrumentation: each process that finishes building
                                the app touches ``<dir>/<pid>``, so the test knows when every
                                gunicorn worker has loaded it

Every response carries ``X-Worker-Pid`` and ``X-Request-Arrived`` (``time.time()`` when the
request reached Flask), so the test can tell which worker served it and when it arrived.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, Response, g

from flask_zis_connections import ZISConnections
from flask_zis_connections.storage import SQLAlchemyStorage

_OFF = {"", "0", "off", "false", "none"}


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    env = os.environ if environ is None else environ
    app = Flask("multiworker_host")
    url = env["ZIS_DATABASE_URI"]
    limit = env.get("ZIS_RATELIMIT", "")
    app.config.update(
        SECRET_KEY=env["SECRET_KEY"],
        ZIS_DATABASE_URI=url,
        ZIS_ENCRYPTION_KEYS=_list(env["ZIS_ENCRYPTION_KEYS"]),
        ZIS_ALLOW_INSECURE_HTTP=_flag(env.get("ZIS_ALLOW_INSECURE_HTTP")),
        ZIS_ALLOWED_REDIRECT_ORIGINS=_list(env.get("ZIS_ALLOWED_REDIRECT_ORIGINS")),
        ZIS_RATELIMIT=None if limit.strip().lower() in _OFF else limit,
    )
    if env.get("ZIS_HTTP_TIMEOUT"):
        app.config["ZIS_HTTP_TIMEOUT"] = float(env["ZIS_HTTP_TIMEOUT"])
    if env.get("ZIS_ENGINE_OPTIONS"):
        options = json.loads(env["ZIS_ENGINE_OPTIONS"])
        engine = sa.create_engine(url, hide_parameters=True, **options)
        app.config["ZIS_STORAGE"] = SQLAlchemyStorage(engine=engine)

    zis = ZISConnections()
    zis.init_app(app)
    app.register_blueprint(zis.blueprint)

    @app.before_request
    def _arrived() -> None:
        g.zis_test_arrived = time.time()

    @app.after_request
    def _stamp(resp: Response) -> Response:
        resp.headers["X-Worker-Pid"] = str(os.getpid())
        resp.headers["X-Request-Arrived"] = repr(g.get("zis_test_arrived", 0.0))
        return resp

    ready_dir = env.get("ZIS_TEST_READY_DIR")
    if ready_dir:
        Path(ready_dir, str(os.getpid())).touch()
    return app
