"""One refresh at a time across OS processes, on one SQLite file and on PostgreSQL.

The parent runs the provider (so it counts the token-endpoint calls) and makes the
connection; 4 spawned processes build their own apps on the same database and keys
(``tests/lifecycle_worker.py``) and each runs several threads calling ``get_token`` on
the expired connection at the same moment.  Exactly one refresh may reach the provider
and every caller must get the token it issued.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_zis_connections.domain import utcnow
from flask_zis_connections.storage import Storage

from . import lifecycle_worker
from .flow_driver import auth_header, connect, register
from .helpers import gather_processes
from .live_provider import LiveProvider

PROCESSES = 4
THREADS = 6


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_on_an_expired_token_make_one_refresh(
    make_app: Callable[..., Flask],
    provider_factory: Callable[..., LiveProvider],
    database_uri: str,
) -> None:
    provider = provider_factory(SLOW_SLEEP=1.0)
    app = make_app()
    register(app, provider)
    conn = connect(app, provider, auth_header(app), allow_offline_access=True)
    storage: Storage = app.extensions["zis_connections"].storage
    # Expire it in the database: the children run on the real clock.
    rec = storage.get_connection("acme", name="main")
    assert rec is not None
    expired = storage.update_connection(
        rec.replace(token_expiry=utcnow() - timedelta(minutes=5)), expected_version=rec.version
    )
    assert expired is not None
    provider.state.inject_token_fault("slow")  # every process is waiting before it answers

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results: Any = ctx.Queue()
    args = (
        database_uri,
        list(app.config["ZIS_ENCRYPTION_KEYS"]),
        provider.url,
        "acme",
        "main",
        THREADS,
        start,
        results,
    )
    procs = [ctx.Process(target=lifecycle_worker.run, args=args) for _ in range(PROCESSES)]
    reports = gather_processes(procs, results)

    errors = [e for _, _, errs in reports for e in errs]
    assert errors == [], errors[0]
    assert len({pid for pid, _, _ in reports}) == PROCESSES
    tokens = [t for _, toks, _ in reports for t in toks]
    assert len(tokens) == PROCESSES * THREADS
    assert provider.state.refresh_call_count == 1, provider.state.token_calls
    assert len(set(tokens)) == 1 and tokens[0] != conn["access_token"]
    after = storage.get_connection("acme", name="main")
    assert after is not None and after.version == expired.version + 1
    with app.app_context():
        assert app.extensions["zis_connections"].lifecycle.get_token("acme", "main") == tokens[0]
    assert provider.state.is_access_token_active(tokens[0])
    assert all(proc.exitcode == 0 for proc in procs)
