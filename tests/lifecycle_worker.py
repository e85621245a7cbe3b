"""Child-process side of ``test_lifecycle_processes``: import-light, no pytest.

Each worker process builds its own host app with :func:`build_app` (the same factory a
host would use), on the database the parent created and with the parent's encryption
keys, then runs several threads that all call ``get_token`` at once.
"""

from __future__ import annotations

import os
import threading
import traceback
from typing import Any

from flask import Flask

from flask_zis_connections import ZISConnections, get_token


def build_app(database_uri: str, encryption_keys: list[str]) -> Flask:
    app = Flask("worker_host")
    app.config.update(
        SECRET_KEY="test-secret-key",
        ZIS_STORAGE="sqlalchemy",
        ZIS_DATABASE_URI=database_uri,
        ZIS_ENCRYPTION_KEYS=encryption_keys,
        ZIS_ALLOW_INSECURE_HTTP=True,
        ZIS_HTTP_TIMEOUT=10,
    )
    ZISConnections(app)
    return app


def run(
    database_uri: str,
    encryption_keys: list[str],
    provider_url: str,
    integration: str,
    name: str,
    threads: int,
    start: Any,
    results: Any,
) -> None:
    """Wait for every process (``start``, a barrier), then ``threads`` concurrent get_token calls.

    Puts ``(pid, tokens, errors)`` on ``results``; never raises, so the parent always hears back.
    """
    tokens: list[str | None] = [None] * threads
    errors: list[str] = []
    app: Flask | None = None
    try:
        app = build_app(database_uri, encryption_keys)
        with app.app_context():
            client = app.extensions["zis_connections"].ext.list_oauth_clients(integration)[0]
            if not client.token_url.startswith(provider_url):
                raise AssertionError(f"client points at {client.token_url}, not {provider_url}")
        inner = threading.Barrier(threads)

        def call(index: int) -> None:
            assert app is not None
            try:
                inner.wait(timeout=60)
                with app.app_context():
                    tokens[index] = get_token(integration, name)
            except Exception:
                errors.append(traceback.format_exc())

        workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
        start.wait(timeout=60)
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        if any(w.is_alive() for w in workers):
            errors.append("a get_token call hung")
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        if app is not None:
            app.extensions["zis_connections"].storage.close()
        results.put((os.getpid(), tokens, errors))
