"""Rate limits: only on the extension's routes, keyed by what a caller cannot make up
(the authenticated token or admin, the client address), shared through Redis, and what a
Redis outage does."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_zis_connections.crypto import hash_secret
from flask_zis_connections.domain import ApiToken
from flask_zis_connections.errors import ConfigurationError

from .flow_driver import auth_header
from .helpers import PREFIX, assert_envelope, require_redis

URL = f"{PREFIX}/connections/oauth/clients/acme"
ADDRESS_A = {"REMOTE_ADDR": "198.51.100.7"}
ADDRESS_B = {"REMOTE_ADDR": "198.51.100.8"}


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _garbage() -> dict[str, str]:
    """A new, well-formed but unknown bearer token: a fresh header every time."""
    return {"Authorization": f"Bearer zis_{uuid.uuid4().hex}{uuid.uuid4().hex}"}


def _count_token_lookups(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the storage's token lookups; the returned list grows by one per lookup."""
    storage = app.extensions["zis_connections"].storage
    calls: list[str] = []
    original = storage.get_api_token

    def counting(token_hash: str) -> Any:
        calls.append(token_hash)
        return original(token_hash)

    monkeypatch.setattr(storage, "get_api_token", counting)
    return calls


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
    assert_envelope(resp, 429, "1300", "Retry after")
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    # Another caller of the same integration has its own budget ...
    assert c.get(URL, headers=auth_header(app)).status_code == 200
    # ... and so does another integration; the host's own routes are not limited.
    other = auth_header(app, "other")
    assert c.get(f"{PREFIX}/connections/oauth/clients/other", headers=other).status_code == 200
    assert all(c.get("/host").status_code == 200 for _ in range(10))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_429_body_is_the_error_envelope(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_RATELIMIT="1 per minute")
    headers = auth_header(app)
    c = app.test_client()
    assert c.get(URL, headers=headers).status_code == 200
    resp = c.get(URL, headers=headers)
    err = assert_envelope(resp, 429, "1300")
    assert resp.get_json() == {"errors": [{"code": "1300", "detail": err["detail"], "status": "429"}]}
    assert resp.headers["Cache-Control"] == "no-store"
    assert 0 < int(resp.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_rate_limit_can_be_disabled(make_app: Callable[..., Flask]) -> None:
    # A falsy ZIS_RATELIMIT turns off every budget, the per-address one included.
    app = make_app(ZIS_RATELIMIT=None, ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    assert app.extensions["zis_connections"].limits is None
    headers = auth_header(app)
    c = app.test_client()
    assert all(c.get(URL, headers=headers).status_code == 200 for _ in range(20))
    assert all(c.get(URL, headers=_garbage()).status_code == 401 for _ in range(10))
    assert all(c.get(f"{PREFIX}/health").status_code == 200 for _ in range(10))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_bad_limit_string_fails_at_start(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigurationError, match="ZIS_RATELIMIT_UNAUTHENTICATED must be a rate limit"):
        make_app(ZIS_RATELIMIT_UNAUTHENTICATED="lots")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_host_ratelimit_config_and_routes_are_left_alone(make_app: Callable[..., Flask]) -> None:
    # The host's Flask-Limiter keys are the host's: the extension neither reads them
    # nor hooks the host app.
    app = make_app(RATELIMIT_DEFAULT="2 per minute", RATELIMIT_ENABLED=True, ZIS_RATELIMIT="3 per minute")

    @app.get("/host")
    def host() -> str:
        return "ok"

    # The one app-wide hook the blueprint has always had answers routing errors under
    # its own prefix; nothing that counts or limits requests is added to the app.
    assert [f.__name__ for f in app.before_request_funcs.get(None, [])] == ["_routing_errors_under_prefix"]
    assert app.after_request_funcs.get(None, []) == []
    assert not [key for key in app.extensions if "limit" in key.lower()]
    c = app.test_client()
    assert [c.get("/host").status_code for _ in range(20)] == [200] * 20
    headers = auth_header(app)
    assert [c.get(URL, headers=headers).status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_guessed_tokens_are_limited_per_address_without_lookups(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="3 per minute")
    c = app.test_client()
    regular = auth_header(app)
    idle = auth_header(app)
    # A real integration on the same address as the guesser, calling regularly.
    assert c.get(URL, headers=regular, environ_base=ADDRESS_A).status_code == 200
    lookups = _count_token_lookups(app, monkeypatch)

    # A fresh random token every time: each failure still counts against the address.
    failures = [c.get(URL, headers=_garbage(), environ_base=ADDRESS_A) for _ in range(3)]
    assert [r.status_code for r in failures] == [401, 401, 401]
    assert len(lookups) == 3
    for _ in range(5):
        resp = c.get(URL, headers=_garbage(), environ_base=ADDRESS_A)
        assert_envelope(resp, 429, "1300", "from this address")
        assert 0 < int(resp.headers["Retry-After"]) <= 60
    assert len(lookups) == 3, "a spent address must not reach the token lookup"

    # Another address is not affected.
    assert c.get(URL, headers=_garbage(), environ_base=ADDRESS_B).status_code == 401
    assert len(lookups) == 4
    # A token that authenticated within its window keeps working from the spent address
    # (it is counted in its own bucket, not the address's) ...
    assert [c.get(URL, headers=regular, environ_base=ADDRESS_A).status_code for _ in range(3)] == [200] * 3
    # ... while a token with no recent success waits like any request from that address,
    # because telling it from a guess takes the lookup the limit is there to spare.
    assert_envelope(c.get(URL, headers=idle, environ_base=ADDRESS_A), 429, "1300")
    assert c.get(URL, headers=idle, environ_base=ADDRESS_B).status_code == 200
    assert c.get(URL, headers=idle, environ_base=ADDRESS_A).status_code == 200


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_varying_the_integration_does_not_escape_the_address_bucket(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="4 per minute")
    c = app.test_client()
    wrong_integration = auth_header(app, "other")  # a real token, of another integration
    attempts = [
        c.get(f"{PREFIX}/connections/oauth/clients/acme", headers=_garbage(), environ_base=ADDRESS_A),
        c.get(f"{PREFIX}/connections/oauth/clients/beta", environ_base=ADDRESS_A),  # no credentials
        c.get(f"{PREFIX}/connections/gamma?name=x", headers=wrong_integration, environ_base=ADDRESS_A),
        c.get(f"{PREFIX}/integrations/delta/connections/all", headers=_garbage(), environ_base=ADDRESS_A),
    ]
    assert [r.status_code for r in attempts] == [401, 401, 403, 401]
    for integration in ("epsilon", "zeta", "acme"):
        resp = c.get(f"{PREFIX}/connections/oauth/clients/{integration}", environ_base=ADDRESS_A)
        assert_envelope(resp, 429, "1300")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/connections/oauth/start_redirect"),
        ("GET", "/connections/oauth/callback"),
        ("POST", "/connections/oauth/tokens/acme"),
        ("GET", "/health"),
    ],
)
def test_endpoints_without_credentials_are_limited_per_address(
    make_app: Callable[..., Flask], method: str, path: str
) -> None:
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    c = app.test_client()
    first = [c.open(PREFIX + path, method=method, json={}, environ_base=ADDRESS_A) for _ in range(2)]
    assert all(r.status_code != 429 for r in first)
    resp = c.open(PREFIX + path, method=method, json={}, environ_base=ADDRESS_A)
    assert_envelope(resp, 429, "1300")
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    assert c.open(PREFIX + path, method=method, json={}, environ_base=ADDRESS_B).status_code != 429


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_token_proxy_has_one_global_bucket(make_app: Callable[..., Flask]) -> None:
    # No ZIS_HOST_TOKEN_URL: an admitted request answers 503, a limited one 429.
    app = make_app(ZIS_RATELIMIT_TOKEN_PROXY="3 per minute")
    c = app.test_client()
    url = f"{PREFIX}/connections/oauth/tokens/acme"
    codes = [
        c.post(url, json={}, environ_base={"REMOTE_ADDR": f"192.0.2.{n}"}).status_code for n in range(1, 6)
    ]
    assert codes == [503, 503, 503, 429, 429]
    assert_envelope(c.post(url, json={}, environ_base={"REMOTE_ADDR": "192.0.2.99"}), 429, "1300")
    # Only the proxy shares that bucket: other endpoints still answer those addresses.
    assert c.get(f"{PREFIX}/health", environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 200


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_proxy_fix_forwarded_address_picks_the_bucket(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    c = app.test_client()
    health = f"{PREFIX}/health"

    def get(client_address: str) -> int:
        return c.get(health, headers={"X-Forwarded-For": client_address}).status_code

    # Every request reaches the app from the proxy's one address (the test client's).
    assert [get("203.0.113.1") for _ in range(3)] == [200, 200, 429]
    assert [get("203.0.113.2") for _ in range(2)] == [200, 200]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_proxy_fix_forwarded_address_is_refused_before_the_token_lookup(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that authenticates refuses a spent address before the lookup: the
    address is the forwarded one, as the request object has it, not the proxy's."""
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    c = app.test_client()
    lookups = _count_token_lookups(app, monkeypatch)

    def get(client_address: str) -> int:
        return c.get(URL, headers={**_garbage(), "X-Forwarded-For": client_address}).status_code

    assert [get("203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert len(lookups) == 2, "the spent forwarded address must not reach the token lookup"
    # The proxy's own address (every request's REMOTE_ADDR) is not what was charged.
    assert [get("203.0.113.2") for _ in range(2)] == [401, 401]
    assert len(lookups) == 4


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_limits_are_shared_between_workers(make_app: Callable[..., Flask]) -> None:
    url = require_redis()
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
    # Another token of the same integration has a budget of its own.
    assert a.get(URL, headers=auth_header(worker_a)).status_code == 200
    # Neither the token nor the hash the database looks it up by is a Redis key.
    import redis

    keys = [k.decode() for k in redis.Redis.from_url(url).keys("*")]
    assert any("/zis/caller/acme/" in k for k in keys)
    assert not [k for k in keys if token in k or hash_secret(token) in k]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_down_fails_open_to_per_process_limits(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_zis_connections")
    dead = f"redis://:hunter2@127.0.0.1:{_dead_port()}/0"
    app = make_app(
        ZIS_RATELIMIT="3 per minute",
        ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute",
        ZIS_RATELIMIT_STORAGE_URI=dead,
    )
    headers = auth_header(app)
    c = app.test_client()
    # Requests keep being served while the limit store is unreachable ...
    assert [c.get(URL, headers=headers).status_code for _ in range(3)] == [200, 200, 200]
    # ... and the in-memory fallback still enforces the limits in this process.
    assert_envelope(c.get(URL, headers=headers), 429, "1300")
    assert [c.get(f"{PREFIX}/health").status_code for _ in range(3)] == [200, 200, 429]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per request"
    assert "Rate-limit storage unavailable" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redis_down_fail_closed_when_configured(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        ZIS_RATELIMIT="3 per minute",
        ZIS_RATELIMIT_FAIL_OPEN=False,
        ZIS_RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{_dead_port()}/0",
    )
    headers = auth_header(app)
    c = app.test_client()
    assert_envelope(c.get(URL, headers=headers), 503, "1306", "ZIS_RATELIMIT_STORAGE_URI")
    assert_envelope(c.get(f"{PREFIX}/health"), 503, "1306")
