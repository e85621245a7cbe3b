"""Rate limits: per integration and caller, shared through Redis, and what a Redis outage does."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable

import pytest
from flask import Flask

from flask_zis_connections.crypto import hash_secret
from flask_zis_connections.models import ApiToken

from .flow_driver import auth_header
from .helpers import PREFIX, assert_envelope

URL = f"{PREFIX}/connections/oauth/clients/acme"


def _redis_url() -> str:
    url = os.environ.get("ZIS_TEST_REDIS_URL")
    if url:
        return url
    msg = 'Redis tests skipped: set ZIS_TEST_REDIS_URL (eval "$(bash .ci/services.sh)" starts one)'
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_over_the_limit_is_429_with_retry_after(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_RATELIMIT="3 per minute")

    @app.get("/host")
    def host() -> str:
        return "ok"

    headers = auth_header(app)
    c = app.test_client()
    first = [c.get(URL, headers=headers) for _ in range(3)]
    assert [r.status_code for r in first] == [200, 200, 200]
    assert all("Retry-After" not in r.headers for r in first)
    resp = c.get(URL, headers=headers)
    assert_envelope(resp, 429, "1300")
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    # Another caller of the same integration has its own budget ...
    assert c.get(URL, headers=auth_header(app)).status_code == 200
    # ... and so does another integration; the host's own routes are not limited.
    other = auth_header(app, "other")
    assert c.get(f"{PREFIX}/connections/oauth/clients/other", headers=other).status_code == 200
    assert all(c.get("/host").status_code == 200 for _ in range(10))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_rate_limit_can_be_disabled(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_RATELIMIT=None)
    headers = auth_header(app)
    c = app.test_client()
    assert all(c.get(URL, headers=headers).status_code == 200 for _ in range(20))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_limits_are_shared_between_workers(make_app: Callable[..., Flask]) -> None:
    url = _redis_url()
    limit = "4 per minute"
    # Two apps with one Redis behave like two gunicorn workers behind one load balancer.
    worker_a = make_app(ZIS_RATELIMIT=limit, ZIS_RATELIMIT_STORAGE_URI=url)
    worker_b = make_app(ZIS_RATELIMIT=limit, ZIS_RATELIMIT_STORAGE_URI=url)
    token = f"zis_{uuid.uuid4().hex}"  # same caller on both workers: register it on both
    for app in (worker_a, worker_b):
        app.extensions["zis_connections"].storage.add_api_token(
            ApiToken(id=str(uuid.uuid4()), token_hash=hash_secret(token), integration="acme")
        )
    headers = {"Authorization": f"Bearer {token}"}
    a, b = worker_a.test_client(), worker_b.test_client()
    codes = [
        a.get(URL, headers=headers).status_code,
        b.get(URL, headers=headers).status_code,
        a.get(URL, headers=headers).status_code,
        b.get(URL, headers=headers).status_code,
    ]
    assert codes == [200, 200, 200, 200]
    assert_envelope(a.get(URL, headers=headers), 429, "1300")
    assert_envelope(b.get(URL, headers=headers), 429, "1300")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_down_fails_open_to_per_process_limits(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        ZIS_RATELIMIT="3 per minute", ZIS_RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{_dead_port()}/0"
    )
    headers = auth_header(app)
    c = app.test_client()
    # Requests keep being served while the limit store is unreachable ...
    assert [c.get(URL, headers=headers).status_code for _ in range(3)] == [200, 200, 200]
    # ... and the in-memory fallback still enforces the limit in this process.
    assert_envelope(c.get(URL, headers=headers), 429, "1300")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_down_fail_closed_when_configured(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        ZIS_RATELIMIT="3 per minute",
        ZIS_RATELIMIT_FAIL_OPEN=False,
        PROPAGATE_EXCEPTIONS=False,
        ZIS_RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{_dead_port()}/0",
    )
    headers = auth_header(app)
    resp = app.test_client().get(URL, headers=headers)
    assert_envelope(resp, 503, "1306")
