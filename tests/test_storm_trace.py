"""The storm benchmark's trace (``bench/storm_trace.py``) reads a real burst right.

A burst of threads on one expired connection in the storm benchmark's own app, in this
process, against the benchmark's real token endpoint: the trace finds the one request
that held the lease, its steps in order with the provider's delay between the call and
its answer, and the waiters answered after it; and it leaves nothing wrapped behind.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from flask import Flask

from bench import storm_trace
from bench.bench_storm import SHOW_PATH, Setup, TokenEndpoint
from bench.storm_trace import HOLDER_STEPS, Tracer

DELAY = 0.2
THREADS = 8


def _storm_app(tmp_path: Path, setup: Setup, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("ZIS_DATABASE_URI", setup.url)
    monkeypatch.setenv("ZIS_ENCRYPTION_KEYS", setup.key)
    monkeypatch.setenv("STORM_READY_DIR", str(tmp_path))
    monkeypatch.delenv("STORM_TRACE_DIR", raising=False)
    monkeypatch.delenv("STORM_CODE", raising=False)
    from bench import storm_app

    return storm_app.create_app()


def test_trace_finds_the_holder_and_the_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Flask.wsgi_app
    with TokenEndpoint(DELAY) as provider:
        setup = Setup(f"sqlite:///{tmp_path / 'storm.sqlite3'}", provider.url)
        app = _storm_app(tmp_path, setup, monkeypatch)
        setup.set_expiry(expired=True)
        tracer = Tracer(tmp_path).install()
        try:
            statuses: list[int] = []
            start = threading.Barrier(THREADS + 1)

            def show() -> None:
                client = app.test_client()
                start.wait()
                resp = client.get(SHOW_PATH, headers={"Authorization": f"Bearer {setup.bearer}"})
                statuses.append(resp.status_code)

            threads = [threading.Thread(target=show) for _ in range(THREADS)]
            for t in threads:
                t.start()
            start.wait()
            released = time.monotonic()
            for t in threads:
                t.join(30)
        finally:
            tracer.uninstall()
        path = tracer.dump()
    assert Flask.wsgi_app is original
    assert statuses == [200] * THREADS
    assert len(provider.calls) == 1

    marks = storm_trace.read_marks(tmp_path)
    assert list(marks) == [int(path.stem)]
    trace = storm_trace.storm_trace(marks, released, time.monotonic(), marks)
    assert trace is not None
    steps = [trace.holder[step] for step, _ in HOLDER_STEPS]  # every step found
    assert steps == sorted(steps)
    # The provider's own delay lies between the call and its answer, and the call
    # is the one the token endpoint saw.
    assert trace.holder["answered"] - trace.holder["provider called"] >= DELAY
    assert trace.holder["provider called"] <= provider.calls[0] - released
    # One process, whose median request ended once the refresh had been answered.
    assert len(trace.answered) == 1
    assert trace.answered[0] >= trace.holder["answered"]

    header, rows = storm_trace.storm_rows([("sqlite", trace)])
    assert len(header) == len(rows[0]) and rows[0][0] == "sqlite"
    assert rows[0][1 : 1 + len(HOLDER_STEPS)] == [f"{s * 1000:.0f}" for s in steps]


def test_a_step_that_moved_fails_loudly_and_wraps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Flask.wsgi_app
    monkeypatch.setattr(
        storm_trace, "STEPS", (*storm_trace.STEPS[:1], ("flask", "Flask", "no_such_step", "gone"))
    )
    with pytest.raises(KeyError, match="no_such_step"):
        Tracer(tmp_path).install()
    assert Flask.wsgi_app is original


def test_no_storm_without_a_provider_call(tmp_path: Path) -> None:
    (tmp_path / "7.json").write_text('[[1.0, 1, "request>"], [1.5, 1, "request<"]]')
    marks = storm_trace.read_marks(tmp_path)
    assert storm_trace.storm_trace(marks, 0.5, 2.0, [7]) is None


def test_the_token_endpoint_answers_its_delay_after_the_accept() -> None:
    """A call whose request bytes reach the handler late (here: sent 0.3 s after the
    connect) is answered ``delay`` after the connection was accepted, not after the
    handler read it; its arrival is the accept."""
    late = 0.3
    with TokenEndpoint(DELAY * 3) as provider:
        host, port = provider.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            connected = time.monotonic()
            time.sleep(late)
            body = b"grant_type=refresh_token&refresh_token=r"
            sock.sendall(
                b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            answered = time.monotonic()
    assert answer.startswith(b"HTTP/1.0 200") and b'"access_token"' in answer
    assert len(provider.calls) == 1
    assert connected - 0.05 <= provider.calls[0] < connected + late
    # 0.6 s after the accept: had the delay run from the handler, 0.9 s.
    assert DELAY * 3 <= answered - connected < DELAY * 3 + late * 0.8
