"""Several gunicorn workers on PostgreSQL: one refresh for 200 concurrent requests.

The app (``tests/multiworker_app.py``) runs under gunicorn with 4 worker processes of 64
threads each, so 200 requests are really in flight at once, across processes.  The
connection they all ask for is expired, and the provider's refresh is slowed down
(``slow`` fault) so that every request is inside the server before the refresh completes.
Half the requests show the connection (refresh when due), half force a refresh; a forced
refresh that *arrives* after a refresh was stored would legitimately refresh again, which
is why the test also proves the arrival order instead of assuming it.

Exactly one call may reach the provider's token endpoint, every request must succeed and
every response must carry the same new token, which is also what the database holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from flask import Flask

from flask_zis_connections.domain import utcnow

from .conftest import ORIGIN, reset_postgres
from .flow_driver import auth_header, connect, register
from .helpers import PREFIX
from .live_provider import LiveProvider
from .multiworker_app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
THREADS = 64
REQUESTS = 200
#: How long the provider takes for the one refresh: the window in which all 200 requests
#: must reach the server (they take well under a second to send on a loaded 2-CPU box).
SLOW_SLEEP = 4.0
BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """A gunicorn master + workers in their own process group, always stopped."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_dir = workdir / "ready"
        self.ready_dir.mkdir(parents=True)
        self.log_path = workdir / "gunicorn.log"
        self.env = {**os.environ, **env, "ZIS_TEST_READY_DIR": str(self.ready_dir)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(WORKERS),
            "--worker-class",
            "gthread",
            "--threads",
            str(THREADS),
            # A worker takes no more connections than it has threads, so no request waits
            # in a worker's queue while the others sit idle: 200 > 3 * 64 needs all four.
            "--worker-connections",
            str(THREADS),
            "--keep-alive",
            "0",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--backlog",
            "512",
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "tests.multiworker_app:create_app()",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self) -> float:
        """Wait until every worker has loaded the app and the server answers."""
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + BOOT_TIMEOUT
        with requests.Session() as probe:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
                if len(list(self.ready_dir.iterdir())) >= WORKERS:
                    with contextlib.suppress(requests.ConnectionError):
                        resp = probe.get(f"{self.url}{PREFIX}/health", timeout=5)
                        assert resp.status_code == 200, resp.text
                        return time.monotonic() - started
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"gunicorn did not boot {WORKERS} workers in {BOOT_TIMEOUT}s:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def worker_pids(self) -> set[int]:
        return {int(p.name) for p in self.ready_dir.iterdir()}

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole process group on timeout."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
                return  # a clean gunicorn shutdown waits for its workers
            except subprocess.TimeoutExpired:
                pass
        # Hung, or the master died on its own: its workers are in its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Gunicorn]]:
    servers: list[Gunicorn] = []

    def start(env: dict[str, str]) -> Gunicorn:
        server = Gunicorn(env, tmp_path / f"gunicorn{len(servers)}")
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@dataclass
class Outcome:
    kind: str
    sent: float  # client clock (time.time()) just before sending
    done: float  # client clock when the response was read
    status: int = 0
    body: Any = None
    pid: int = 0
    arrived: float = 0.0  # server clock when the request reached Flask
    error: str = ""


def _fire(url: str, headers: dict[str, str], kinds: list[str]) -> list[Outcome]:
    """Send one request per entry of ``kinds`` at once (one thread and session each)."""
    paths = {
        "show": f"{url}{PREFIX}/connections/acme",
        "refresh": f"{url}{PREFIX}/connections/refresh/acme",
    }
    barrier = threading.Barrier(len(kinds))
    outcomes: list[Outcome | None] = [None] * len(kinds)

    def one(index: int, kind: str) -> None:
        with requests.Session() as session:
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                outcomes[index] = Outcome(kind, 0.0, 0.0, error="barrier broken")
                return
            sent = time.time()
            try:
                resp = session.get(paths[kind], params={"name": "main"}, headers=headers, timeout=60)
            except requests.RequestException as exc:
                outcomes[index] = Outcome(kind, sent, time.time(), error=repr(exc))
                return
            done = time.time()
            try:
                body = resp.json()
            except ValueError:
                body = resp.text[:500]
            outcomes[index] = Outcome(
                kind,
                sent,
                done,
                status=resp.status_code,
                body=body,
                pid=int(resp.headers.get("X-Worker-Pid", 0)),
                arrived=float(resp.headers.get("X-Request-Arrived", 0.0)),
            )

    threads = [threading.Thread(target=one, args=(i, k), name=f"burst-{i}") for i, k in enumerate(kinds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a request thread hung"
    return [o if o is not None else Outcome("?", 0, 0, error="no outcome") for o in outcomes]


def _first_issued_after(provider: LiveProvider, moment: float) -> float:
    """When the provider issued its first token after ``moment`` (its own clock)."""
    with provider.state.lock:
        issued = [t.issued_at for t in provider.state._by_access.values() if t.issued_at >= moment]
    assert issued, "the provider issued no token"
    return min(issued)


def _host_env(postgres_url: str) -> dict[str, str]:
    return {
        "ZIS_DATABASE_URI": postgres_url,
        "ZIS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SECRET_KEY": "multiworker-secret-key",
        "ZIS_ALLOW_INSECURE_HTTP": "1",
        "ZIS_ALLOWED_REDIRECT_ORIGINS": ORIGIN,
        "ZIS_RATELIMIT": "off",
        # Default pool (5 + 10 overflow) per worker; made explicit so the connection budget
        # (4 workers x 15 + this process) is visible next to PostgreSQL's max_connections.
        "ZIS_ENGINE_OPTIONS": json.dumps({"pool_size": 5, "max_overflow": 10, "pool_timeout": 30}),
    }


@pytest.fixture
def host_app(postgres_url: str) -> Iterator[tuple[Flask, dict[str, str]]]:
    reset_postgres(postgres_url)
    env = _host_env(postgres_url)
    app = create_app(env)
    try:
        yield app, env
    finally:
        app.extensions["zis_connections"].storage.close()


def test_200_concurrent_requests_on_4_workers_make_one_refresh(
    host_app: tuple[Flask, dict[str, str]],
    provider_factory: Callable[..., LiveProvider],
    gunicorn: Callable[[dict[str, str]], Gunicorn],
) -> None:
    app, env = host_app
    provider = provider_factory(SLOW_SLEEP=SLOW_SLEEP)
    register(app, provider)
    headers = auth_header(app)
    first = connect(app, provider, headers)
    assert provider.state.code_exchange_count == 1
    old_token, old_refresh = first["access_token"], first["refresh_token"]

    storage = app.extensions["zis_connections"].storage
    rec = storage.get_connection("acme", name="main")
    assert rec is not None
    expired = storage.update_connection(
        rec.replace(token_expiry=utcnow() - timedelta(hours=1)), expected_version=rec.version
    )
    assert expired is not None and expired.token_expiry is not None

    server = gunicorn(env)
    boot = server.wait_ready()

    provider.state.reset_counters()
    provider.state.inject_token_fault("slow")
    kinds = ["show", "refresh"] * (REQUESTS // 2)
    random.Random(5).shuffle(kinds)
    t0 = time.time()
    outcomes = _fire(server.url, headers, kinds)
    elapsed = time.time() - t0

    failed = [o for o in outcomes if o.error or o.status != 200]
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[:3]}\n{server.log_tail()}"

    tokens = Counter(o.body["access_token"] for o in outcomes)
    refreshes = Counter(o.body["refresh_token"] for o in outcomes)
    by_worker = Counter(o.pid for o in outcomes)
    last_sent = max(o.sent for o in outcomes)
    first_done = min(o.done for o in outcomes)
    last_arrived = max(o.arrived for o in outcomes)

    first_issued = _first_issued_after(provider, t0)
    stored = app.extensions["zis_connections"].lifecycle.decrypt(storage.get_connection("acme", name="main"))
    summary = (
        f"{REQUESTS} requests ({Counter(kinds)}) in {elapsed:.2f}s on workers {dict(by_worker)}; "
        f"boot {boot:.2f}s; all sent within {last_sent - t0:.3f}s, last arrival in Flask "
        f"{last_arrived - t0:.3f}s, first new token issued {first_issued - t0:.3f}s, first "
        f"answer {first_done - t0:.3f}s after the barrier; provider token calls: "
        f"{provider.state.token_calls}"
    )
    print(summary)

    # The set-up really was concurrent, or the test proves nothing (raise SLOW_SLEEP if
    # this fails on a slow machine): every request reached Flask (server clock) before the
    # provider issued the new token, no answer came back before the last request was
    # sent, and all four workers served requests.
    assert last_arrived < first_issued, "set-up not concurrent enough: " + summary
    assert last_sent < first_done, "set-up not concurrent enough: " + summary
    assert set(by_worker) == server.worker_pids() and len(by_worker) == WORKERS, summary

    # Exactly one refresh reached the provider, and it succeeded.
    assert provider.state.refresh_call_count == 1, summary
    assert provider.state.token_call_count == 1, summary
    (call,) = provider.state.token_calls
    assert call["status"] == 200 and call["refresh_token"] == old_refresh, summary

    # Everyone got the same new token, and that is what the database holds.
    assert len(tokens) == 1 and len(refreshes) == 1, (tokens, refreshes)
    (new_token,) = tokens
    (new_refresh,) = refreshes
    assert new_token != old_token and new_refresh != old_refresh
    assert stored.access_token == new_token and stored.refresh_token == new_refresh
    assert stored.version == expired.version + 1
    assert stored.token_expiry is not None and stored.token_expiry > utcnow()
    assert provider.state.is_access_token_active(new_token)
    assert provider.state.is_refresh_token_active(new_refresh)
    assert not provider.state.is_refresh_token_active(old_refresh)
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()
