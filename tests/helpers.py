"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

import pytest
from werkzeug.test import TestResponse

from flask_zis_connections.storage import Storage
from flask_zis_connections.token_cache import ChangeListener

PREFIX = "/api/services/zis"
#: How long a test waits for a thread or a process it started.
JOIN_TIMEOUT = 30.0


def run_threads(count: int, target: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Start ``count`` threads at once (a barrier); return their results and errors."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        barrier.wait(timeout=JOIN_TIMEOUT)
        try:
            results[index] = target(index)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


def gather_processes(procs: Sequence[BaseProcess], results: Any, timeout: float = 120) -> list[Any]:
    """Start ``procs``, take one report from each off the ``results`` queue, then join
    them (killing any that hangs) and close the queue."""
    for proc in procs:
        proc.start()
    reports: list[Any] = []
    try:
        for _ in procs:
            reports.append(results.get(timeout=timeout))
    except queue.Empty:
        import pytest

        pytest.fail(f"only {len(reports)} of {len(procs)} processes reported back")
    finally:
        for proc in procs:
            proc.join(JOIN_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
        results.close()
        results.join_thread()
    return reports


def assert_envelope(resp: TestResponse, status: int, code: str, detail_has: str = "") -> dict[str, Any]:
    """The service's error envelope, exactly, with the expected status and code."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert isinstance(body, dict) and set(body) == {"errors"}, body
    assert len(body["errors"]) == 1
    err = body["errors"][0]
    assert set(err) == {"code", "detail", "status"}
    assert err["status"] == str(status)
    assert err["code"] == code
    assert "Traceback" not in err["detail"]
    if detail_has:
        assert detail_has in err["detail"], err["detail"]
    return err  # type: ignore[no-any-return]


def client_body(provider_url: str = "https://acme.test", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "acme",
        "client_id": "cid-123",
        "client_secret": "s3cr3t-client-secret-value",
        "auth_url": f"{provider_url}/oauth/authorize",
        "token_url": f"{provider_url}/oauth/token",
        "default_scopes": "read write",
    }
    body.update(overrides)
    return body


def in_forked_child(check: Callable[[], bool]) -> bool:
    """``check()`` in a forked child, which leaves without any cleanup (its parent's
    threads are not there to be joined): whether it returned true."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = check()
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 1)
    os.close(read)
    return answer == b"1" and status == 0


def require_redis() -> str:
    """The test Redis URL (``ZIS_TEST_REDIS_URL``), or skip - fail under ``CI=true``:
    CI must run the tests that need it."""
    url = os.environ.get("ZIS_TEST_REDIS_URL")
    if url:
        return url
    msg = 'Redis tests skipped: set ZIS_TEST_REDIS_URL (eval "$(bash .ci/services.sh)" starts one)'
    if os.environ.get("CI") == "true":
        pytest.fail(msg.replace("skipped", "required in CI"))
    pytest.skip(msg)


def change_listener(storage: Storage) -> ChangeListener:
    """The storage's one token cache listener (its lease release listener, started by
    the first read, is there too)."""
    (listener,) = [t for t in storage._listeners if isinstance(t, ChangeListener)]  # type: ignore[attr-defined]
    return listener
