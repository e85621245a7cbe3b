"""The OAuth flow in detail, against the real in-process Authlib provider, on every backend.

Nothing here mocks a response: the extension talks HTTP to ``example_app.provider`` on a
loopback port, and faults are the provider's own injected ones.  ``flow_driver`` plays the
admin's browser (a Flask test client keeps the binding cookie).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from werkzeug.test import TestResponse

from flask_zis_connections import ConnectionNotFound, signals
from flask_zis_connections.signing import FLOW_TOKEN_SALT, STATE_SALT, serializer

from .flow_driver import (
    ORIGIN_URL,
    auth_header,
    callback,
    connect,
    query,
    register,
    start,
    zis_of,
)
from .helpers import PREFIX, assert_envelope
from .live_provider import DEFAULT_REDIRECT_URI, LiveProvider

CALLBACK_PATH = f"{PREFIX}/connections/oauth/callback"
START_REDIRECT_PATH = f"{PREFIX}/connections/oauth/start_redirect"


# --------------------------------------------------------------------------- helpers


@dataclass
class Flow:
    """A flow walked up to the provider's consent page."""

    browser: FlaskClient
    redirect_url: str
    flow_token: str
    start_redirect: TestResponse
    location: str  # the provider authorize URL from the 307

    @property
    def state(self) -> str:
        return query(self.location)["state"][0]

    @property
    def cookie(self) -> tuple[str, str]:
        """The binding cookie (name, value) set by start_redirect."""
        header = self.start_redirect.headers["Set-Cookie"]
        name, _, rest = header.partition("=")
        return name, rest.split(";", 1)[0]


def begin(
    app: Flask,
    headers: dict[str, str],
    *,
    browser: FlaskClient | None = None,
    integration: str = "acme",
    **body: Any,
) -> Flow:
    browser = browser or app.test_client()
    resp = start(browser, headers, integration=integration, **body)
    assert resp.status_code == 200, resp.get_json()
    redirect_url = resp.get_json()["redirect_url"]
    parts = urlsplit(redirect_url)
    sr = browser.get(f"{parts.path}?{parts.query}")
    assert sr.status_code == 307, sr.get_data(as_text=True)
    return Flow(browser, redirect_url, query(redirect_url)["flow_token"][0], sr, sr.headers["Location"])


def exchange(
    browser: FlaskClient, headers: dict[str, str], code: str, integration: str = "acme"
) -> TestResponse:
    return browser.get(
        f"{PREFIX}/connections/oauth/access_codes/{integration}",
        query_string={"verification_code": code},
        headers=headers,
    )


def verification_code(resp: TestResponse) -> str:
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return query(resp.headers["Location"])["verification_code"][0]


def callback_with(browser: FlaskClient, params: dict[str, str], cookie: tuple[str, str] | None = None) -> Any:
    """The provider's redirect back, with chosen params (and binding cookie, if given)."""
    if cookie is not None:
        browser.set_cookie(cookie[0], cookie[1], path=CALLBACK_PATH)
    return browser.get(f"{CALLBACK_PATH}?{urlencode(params)}")


def connection_count(app: Flask, integration: str = "acme") -> int:
    with app.app_context():
        return len(zis_of(app).list_connections(integration)["connections"])


def nothing_pending(app: Flask) -> bool:
    """No flow or verification code was recorded: purging "everything" deletes nothing."""
    storage = app.extensions["zis_connections"].storage
    return storage.purge_expired(datetime.now(UTC) + timedelta(days=3650)) == 0  # type: ignore[no-any-return]


def tamper(token: str) -> str:
    """Change the signature's first character (always changes the decoded bytes)."""
    payload, _, sig = token.rpartition(".")
    return f"{payload}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


def later(seconds: float) -> Any:
    return time_machine.travel(datetime.now(UTC) + timedelta(seconds=seconds), tick=False)


@pytest.fixture
def headers(app: Flask) -> dict[str, str]:
    return auth_header(app)


@pytest.fixture
def acme(app: Flask, provider: LiveProvider) -> None:
    register(app, provider)


class TenantPaths:
    """WSGI middleware: serve the provider under ``/t/<tenant>/...`` as well, recording
    which tenant each request used, so a ``{{subdomain}}`` in the provider URLs is
    really exercised (``*.localhost`` host names do not resolve everywhere)."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app
        self.seen: list[tuple[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        parts = environ["PATH_INFO"].split("/", 3)
        if len(parts) == 4 and parts[1] == "t":
            self.seen.append((parts[2], "/" + parts[3]))
            environ["PATH_INFO"] = "/" + parts[3]
        return self.wsgi_app(environ, start_response)


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_happy_path_with_pkce(
    app: Flask, provider: LiveProvider, headers: dict[str, str], method: str
) -> None:
    register(app, provider, token_endpoint_auth_method=method, provider_kw={"require_pkce": True})
    flow = begin(app, headers)
    seen = query(flow.location)
    assert seen["code_challenge_method"] == ["S256"] and seen["code_challenge"]
    back = callback(flow.browser, provider.approve(flow.location))
    conn = exchange(flow.browser, headers, verification_code(back)).get_json()

    sent = provider.state.authorize_requests[-1]
    assert sent["code_challenge_method"] == "S256" and sent["code_challenge"]
    [call] = provider.state.token_calls
    assert call["grant_type"] == "authorization_code" and call["status"] == 200
    assert call["has_code_verifier"] is True
    assert call["auth_method"] == method
    assert call["redirect_uri"] == DEFAULT_REDIRECT_URI
    assert conn["access_token"] and conn["refresh_token"]
    assert conn["token_type"] == "bearer"  # the provider said "Bearer"
    assert conn["permission_scope"] == "read write"
    assert conn["token_expiry"].endswith("Z")
    assert provider.state.is_access_token_active(conn["access_token"])


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_happy_path_without_pkce(
    app: Flask, provider: LiveProvider, headers: dict[str, str], method: str
) -> None:
    register(app, provider, token_endpoint_auth_method=method, pkce=False)
    conn = connect(app, provider, headers)
    sent = provider.state.authorize_requests[-1]
    assert "code_challenge" not in sent and "code_challenge_method" not in sent
    [call] = provider.state.token_calls
    assert call["has_code_verifier"] is False and call["auth_method"] == method
    assert call["status"] == 200 and conn["access_token"]


def test_granted_scope_is_stored_not_requested(
    app: Flask, provider: LiveProvider, headers: dict[str, str]
) -> None:
    register(app, provider, provider_kw={"scope": "read"})
    conn = connect(app, provider, headers, permission_scopes="read write admin")
    assert provider.state.authorize_requests[-1]["scope"] == "read write admin"
    assert conn["permission_scope"] == "read"


def test_start_redirect_location_cookie_and_headers(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers, permission_scopes="read")
    assert flow.redirect_url.startswith(f"http://localhost{START_REDIRECT_PATH}?flow_token=")
    sr = flow.start_redirect
    assert sr.status_code == 307
    loc = urlsplit(flow.location)
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == provider.auth_url
    q = parse_qs(loc.query)
    assert q["response_type"] == ["code"]
    assert q["client_id"] == ["demo-client"]
    assert q["redirect_uri"] == [DEFAULT_REDIRECT_URI]
    assert q["scope"] == ["read"]
    assert q["state"] and q["state"][0] != flow.flow_token
    assert sr.headers["Referrer-Policy"] == "no-referrer"
    assert sr.headers["Cache-Control"] == "no-store"

    [set_cookie] = sr.headers.getlist("Set-Cookie")
    attrs = [a.strip().lower() for a in set_cookie.split(";")]
    assert "httponly" in attrs
    assert "samesite=lax" in attrs
    assert f"path={CALLBACK_PATH}".lower() in attrs
    assert "secure" not in attrs  # plain http here; see the https case below
    name, value = flow.cookie
    assert value and value not in flow.location and value not in flow.flow_token

    back = callback(flow.browser, provider.approve(flow.location))
    assert back.status_code == 302
    assert back.headers["Referrer-Policy"] == "no-referrer"
    assert back.headers["Cache-Control"] == "no-store"
    # The binding cookie is cleared once the flow is done.
    cleared = " ".join(back.headers.getlist("Set-Cookie"))
    assert f"{name}=;" in cleared


def test_binding_cookie_is_secure_over_https(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    resp = start(browser, headers)
    parts = urlsplit(resp.get_json()["redirect_url"])
    sr = browser.get(f"{parts.path}?{parts.query}", base_url="https://localhost")
    assert sr.status_code == 307
    assert "secure" in [a.strip().lower() for a in sr.headers["Set-Cookie"].split(";")]


def test_public_url_is_used_for_redirect_url_and_redirect_uri(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    app = make_app(ZIS_PUBLIC_URL="https://zis.example.test")
    register(app, provider)
    browser = app.test_client()
    resp = start(browser, auth_header(app))
    redirect_url = resp.get_json()["redirect_url"]
    assert redirect_url.startswith(f"https://zis.example.test{START_REDIRECT_PATH}?flow_token=")
    parts = urlsplit(redirect_url)
    sr = browser.get(f"{parts.path}?{parts.query}")
    assert query(sr.headers["Location"])["redirect_uri"] == [f"https://zis.example.test{CALLBACK_PATH}"]


def test_callback_keeps_origin_query_and_adds_verification_code(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    back = callback(flow.browser, provider.approve(flow.location))
    assert back.status_code == 302
    loc = urlsplit(back.headers["Location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == "https://client.int/callback"
    q = parse_qs(loc.query)
    assert set(q) == {"keep", "verification_code", "verification_token"}
    assert q["keep"] == ["1"]
    assert q["verification_code"] == q["verification_token"] and len(q["verification_code"]) == 1
    assert len(q["verification_code"][0]) >= 32


def test_reauthorization_keeps_uuid_new_tokens_and_signals_once(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    created: list[dict[str, Any]] = []

    def on_created(sender: Flask, **kw: Any) -> None:
        created.append({"sender": sender, **kw})

    with signals.connection_created.connected_to(on_created, sender=app):
        first = connect(app, provider, headers, allow_offline_access=True)
        second = connect(app, provider, headers)
    assert second["uuid"] == first["uuid"]
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert provider.state.code_exchange_count == 2
    assert connection_count(app) == 1
    assert created == [{"sender": app, "integration": "acme", "name": "main", "uuid": first["uuid"]}]
    with app.app_context():
        assert zis_of(app).get_connection("acme", "main").access_token == second["access_token"]


def test_another_name_is_another_connection(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    created: list[str] = []
    with signals.connection_created.connected_to(lambda s, **kw: created.append(kw["name"]), sender=app):
        a = connect(app, provider, headers, name="one")
        b = connect(app, provider, headers, name="two")
    assert a["uuid"] != b["uuid"] and created == ["one", "two"]


# --------------------------------------------------------------------------- subdomain


def test_subdomain_is_interpolated_in_auth_and_token_urls(
    app: Flask, provider: LiveProvider, headers: dict[str, str]
) -> None:
    tenants = TenantPaths(provider.app.wsgi_app)
    provider.app.wsgi_app = tenants  # type: ignore[method-assign]
    register(
        app,
        provider,
        auth_url=f"{provider.url}/t/{{{{subdomain}}}}/oauth/authorize",
        token_url=f"{provider.url}/t/{{{{subdomain}}}}/oauth/token",
    )
    flow = begin(app, headers, oauth_url_subdomain="Acme-EU")
    loc = urlsplit(flow.location)
    assert loc.path == "/t/acme-eu/oauth/authorize"
    back = callback(flow.browser, provider.approve(flow.location.replace("/t/acme-eu", "", 1)))
    conn = exchange(flow.browser, headers, verification_code(back)).get_json()
    assert tenants.seen == [("acme-eu", "/oauth/token")]
    assert conn["oauth_url_subdomain"] == "Acme-EU"


def test_subdomain_in_host(app: Flask, provider: LiveProvider, headers: dict[str, str]) -> None:
    port = urlsplit(provider.url).port
    register(
        app,
        provider,
        auth_url=f"http://{{{{subdomain}}}}.localhost:{port}/oauth/authorize",
        token_url=f"http://{{{{subdomain}}}}.localhost:{port}/oauth/token",
    )
    flow = begin(app, headers, oauth_url_subdomain="tenant1")
    assert urlsplit(flow.location).netloc == f"tenant1.localhost:{port}"


def test_subdomain_must_be_a_dns_label(app: Flask, provider: LiveProvider, headers: dict[str, str]) -> None:
    register(app, provider, auth_url=f"{provider.url}/t/{{{{subdomain}}}}/oauth/authorize")
    browser = app.test_client()
    for bad in ["a.b", "../x", "x y", "-x", "x-", "x" * 64, "", "ä", "a/b", "a%2eb", "a@b", "a:1", 5]:
        resp = start(browser, headers, oauth_url_subdomain=bad)
        assert resp.status_code == 422, (bad, resp.get_json())
        assert_envelope(resp, 422, "1303", "oauth_url_subdomain")
    assert nothing_pending(app)


def test_subdomain_required_when_url_needs_one(
    app: Flask, provider: LiveProvider, headers: dict[str, str]
) -> None:
    register(app, provider, token_url=f"{provider.url}/t/{{{{subdomain}}}}/oauth/token")
    assert_envelope(start(app.test_client(), headers), 422, "1303", "oauth_url_subdomain")
    assert nothing_pending(app)


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize("offline", [True, False])
def test_authorize_and_offline_params(
    app: Flask, provider: LiveProvider, headers: dict[str, str], offline: bool
) -> None:
    register(
        app,
        provider,
        authorize_params={"prompt": "consent"},
        offline_access_params={"access_type": "offline"},
    )
    flow = begin(app, headers, allow_offline_access=offline)
    q = query(flow.location)
    assert q["prompt"] == ["consent"]
    assert ("access_type" in q) is offline
    provider.approve(flow.location)
    sent = provider.state.authorize_requests[-1]
    assert sent["prompt"] == "consent"
    assert sent.get("access_type") == ("offline" if offline else None)


# --------------------------------------------------------------------------- flow tokens


def test_flow_token_tampered_cross_salt_and_missing(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    token = query(start(browser, headers).get_json()["redirect_url"])["flow_token"][0]
    for bad in [tamper(token), token[:-3], "garbage", token + "x"]:
        resp = browser.get(START_REDIRECT_PATH, query_string={"flow_token": bad})
        assert_envelope(resp, 400, "1301", "flow token")
        assert "Location" not in resp.headers and "Set-Cookie" not in resp.headers
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Cache-Control"] == "no-store"
    assert_envelope(browser.get(START_REDIRECT_PATH), 400, "1301", "flow_token")
    # The real token still works after all that: bad tokens do not burn the flow.
    sr = browser.get(START_REDIRECT_PATH, query_string={"flow_token": token})
    assert sr.status_code == 307
    # A state is not a flow token (different salt).
    state = query(sr.headers["Location"])["state"][0]
    start(browser, headers)  # another pending flow, which that state must not open either
    assert_envelope(browser.get(START_REDIRECT_PATH, query_string={"flow_token": state}), 400, "1301")
    assert provider.state.authorize_requests == []


def test_flow_token_replayed(app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]) -> None:
    flow = begin(app, headers)
    for browser in (flow.browser, app.test_client()):
        resp = browser.get(START_REDIRECT_PATH, query_string={"flow_token": flow.flow_token})
        err = assert_envelope(resp, 400, "1301", "already used")
        assert "Set-Cookie" not in resp.headers, err
    # The first browser's flow is unharmed.
    back = callback(flow.browser, provider.approve(flow.location))
    assert verification_code(back)


def test_flow_token_expired(make_app: Callable[..., Flask], provider: LiveProvider) -> None:
    app = make_app(ZIS_FLOW_TOKEN_MAX_AGE=60)
    register(app, provider)
    browser = app.test_client()
    token = query(start(browser, auth_header(app)).get_json()["redirect_url"])["flow_token"][0]
    with later(61):
        resp = browser.get(START_REDIRECT_PATH, query_string={"flow_token": token})
    assert_envelope(resp, 400, "1301", "expired")
    resp = browser.get(START_REDIRECT_PATH, query_string={"flow_token": token})
    assert resp.status_code == 307  # 59 s later it was still fine; nothing was burnt


def test_flow_record_expiry_is_enforced_too(make_app: Callable[..., Flask], provider: LiveProvider) -> None:
    """The stored flow expires with the token even if the signature were still young."""
    app = make_app(ZIS_FLOW_TOKEN_MAX_AGE=60)
    register(app, provider)
    browser = app.test_client()
    token = query(start(browser, auth_header(app)).get_json()["redirect_url"])["flow_token"][0]
    flow_id = serializer(app, FLOW_TOKEN_SALT).loads(token)
    with later(61):
        fresh = serializer(app, FLOW_TOKEN_SALT).dumps(flow_id)
        resp = browser.get(START_REDIRECT_PATH, query_string={"flow_token": fresh})
    assert_envelope(resp, 400, "1301")


def test_secret_key_fallbacks_still_verify(make_app: Callable[..., Flask], provider: LiveProvider) -> None:
    app = make_app(SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"])
    register(app, provider)
    headers = auth_header(app)
    browser = app.test_client()
    token = query(start(browser, headers).get_json()["redirect_url"])["flow_token"][0]
    flow_id = URLSafeTimedSerializer("new-key", salt=FLOW_TOKEN_SALT).loads(token)
    old_token = URLSafeTimedSerializer("old-key", salt=FLOW_TOKEN_SALT).dumps(flow_id)
    unknown_key = URLSafeTimedSerializer("other-key", salt=FLOW_TOKEN_SALT).dumps(flow_id)
    assert_envelope(browser.get(START_REDIRECT_PATH, query_string={"flow_token": unknown_key}), 400, "1301")
    sr = browser.get(START_REDIRECT_PATH, query_string={"flow_token": old_token})
    assert sr.status_code == 307
    at_provider = provider.approve(sr.headers["Location"])
    params = {k: v[0] for k, v in query(at_provider).items()}
    assert URLSafeTimedSerializer("new-key", salt=STATE_SALT).loads(params["state"]) == flow_id
    params["state"] = URLSafeTimedSerializer("old-key", salt=STATE_SALT).dumps(flow_id)
    back = browser.get(f"{CALLBACK_PATH}?{urlencode(params)}")
    assert verification_code(back)


# --------------------------------------------------------------------------- states


def test_state_tampered_cross_salt_or_missing_refused_without_token_request(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    params = {k: v[0] for k, v in query(provider.approve(flow.location)).items()}
    for bad_state in [tamper(params["state"]), flow.flow_token, "x", params["state"][:-2]]:
        resp = callback_with(flow.browser, {**params, "state": bad_state})
        assert_envelope(resp, 400, "1301", "OAuth state")
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "Location" not in resp.headers
    no_state = {k: v for k, v in params.items() if k != "state"}
    assert_envelope(callback_with(flow.browser, no_state), 400, "1301", "state")
    assert provider.state.token_calls == []
    # None of that burnt the flow.
    assert verification_code(callback_with(flow.browser, params))
    assert provider.state.code_exchange_count == 1


def test_state_expired(make_app: Callable[..., Flask], provider: LiveProvider) -> None:
    app = make_app(ZIS_FLOW_TOKEN_MAX_AGE=60)
    register(app, provider)
    flow = begin(app, auth_header(app))
    at_provider = provider.approve(flow.location)
    with later(61):
        resp = callback(flow.browser, at_provider)
    assert_envelope(resp, 400, "1301", "expired")
    assert provider.state.token_calls == []
    assert connection_count(app) == 0


def test_state_replayed_makes_no_second_exchange(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location)
    params = {k: v[0] for k, v in query(at_provider).items()}
    assert verification_code(callback_with(app.test_client(), params, flow.cookie))
    assert_envelope(callback_with(app.test_client(), params, flow.cookie), 400, "1301", "already used")
    assert_envelope(callback_with(app.test_client(), params), 400, "1301", "browser")
    assert provider.state.code_exchange_count == 1


def test_concurrent_callbacks_make_one_code_exchange(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    params = {k: v[0] for k, v in query(provider.approve(flow.location)).items()}
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def hit(i: int) -> None:
        browser = app.test_client()
        barrier.wait(timeout=10)
        try:
            results[i] = callback_with(browser, params, flow.cookie)
        except BaseException as exc:  # surfaced below
            results[i] = exc

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [302, 400], results
    winner = next(r for r in results if r.status_code == 302)
    loser = next(r for r in results if r.status_code == 400)
    assert "verification_code" in query(winner.headers["Location"])
    assert_envelope(loser, 400, "1301")
    assert provider.state.code_exchange_count == 1
    assert connection_count(app) == 1


def test_two_flows_for_one_new_name_finishing_at_once(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    """Both succeed (one re-authorizes the other), leaving one connection and one
    ``connection_created`` signal."""
    flows = [begin(app, headers) for _ in range(2)]
    returns = [provider.approve(f.location) for f in flows]
    created: list[str] = []
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def hit(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = callback(flows[i].browser, returns[i])
        except BaseException as exc:  # surfaced below
            results[i] = exc

    with signals.connection_created.connected_to(lambda s, **kw: created.append(kw["uuid"]), sender=app):
        threads = [threading.Thread(target=hit, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    codes = [verification_code(r) for r in results]
    conns = [exchange(app.test_client(), headers, c).get_json() for c in codes]
    assert conns[0]["uuid"] == conns[1]["uuid"]
    assert created == [conns[0]["uuid"]]
    assert connection_count(app) == 1 and provider.state.code_exchange_count == 2


@pytest.mark.parametrize("how", ["no_cookie", "other_browser", "wrong_value", "other_flows_cookie"])
def test_callback_from_another_browser_refused_then_owner_completes(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str], how: str
) -> None:
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location)
    params = {k: v[0] for k, v in query(at_provider).items()}
    name, value = flow.cookie
    attacker = app.test_client()
    if how == "no_cookie":
        resp = callback_with(attacker, params)
    elif how == "other_browser":
        resp = callback(attacker, at_provider)
    elif how == "wrong_value":
        attacker.set_cookie(name, value[:-2] + "zz", path=CALLBACK_PATH)
        resp = callback(attacker, at_provider)
    else:
        # The attacker's own, legitimately bound flow does not open the victim's.
        own = begin(app, headers, browser=attacker)
        assert own.cookie[0] != name
        resp = callback(attacker, at_provider)
    err = assert_envelope(resp, 400, "1301", "browser")
    assert "Location" not in resp.headers, err
    assert provider.state.token_calls == []
    assert connection_count(app) == 0
    # The legitimate browser can still finish.
    assert verification_code(callback(flow.browser, at_provider))
    assert provider.state.code_exchange_count == 1


def test_two_flows_side_by_side_in_one_browser(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    one = begin(app, headers, browser=browser, name="one")
    two = begin(app, headers, browser=browser, name="two")
    assert verification_code(callback(browser, provider.approve(two.location)))
    assert verification_code(callback(browser, provider.approve(one.location)))
    assert connection_count(app) == 2


# --------------------------------------------------------------------------- iss (RFC 9207)


ISSUER = "https://issuer.example.test"


def test_iss_matching_works(
    app: Flask, provider_factory: Callable[..., LiveProvider], headers: dict[str, str]
) -> None:
    provider = provider_factory(ISSUER=ISSUER)
    register(app, provider, issuer=ISSUER)
    conn = connect(app, provider, headers)
    assert conn["access_token"]


@pytest.mark.parametrize("case", ["other_issuer", "tampered", "missing"])
def test_iss_mismatch_refused_before_token_request(
    app: Flask, provider_factory: Callable[..., LiveProvider], headers: dict[str, str], case: str
) -> None:
    provider = provider_factory(ISSUER=None if case == "missing" else ISSUER)
    register(app, provider, issuer="https://other.example.test" if case == "other_issuer" else ISSUER)
    flow = begin(app, headers)
    params = {k: v[0] for k, v in query(provider.approve(flow.location)).items()}
    assert ("iss" in params) is (case != "missing")
    if case == "tampered":
        params["iss"] = "https://evil.test"
    resp = callback_with(flow.browser, params)
    assert_envelope(resp, 400, "1301", "issuer")
    assert provider.state.token_calls == []
    assert connection_count(app) == 0


def test_iss_is_checked_on_error_responses_too(
    app: Flask, provider_factory: Callable[..., LiveProvider], headers: dict[str, str]
) -> None:
    provider = provider_factory(ISSUER=ISSUER)
    register(app, provider, issuer=ISSUER)
    flow = begin(app, headers)
    params = {k: v[0] for k, v in query(provider.approve(flow.location, confirm=False)).items()}
    assert params["error"] == "access_denied"
    assert_envelope(callback_with(flow.browser, {**params, "iss": "https://evil.test"}), 400, "1301")
    resp = callback_with(flow.browser, params)
    assert query(resp.headers["Location"])["error"] == ["access_denied"]


# --------------------------------------------------------------------------- provider errors


def test_access_denied_redirects_with_error_and_stores_nothing(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location, confirm=False)
    assert query(at_provider)["error"] == ["access_denied"]
    back = callback(flow.browser, at_provider)
    assert back.status_code == 302
    assert back.headers["Referrer-Policy"] == "no-referrer"
    loc = urlsplit(back.headers["Location"])
    assert loc.netloc == "client.int"
    q = parse_qs(loc.query)
    assert q["keep"] == ["1"] and q["error"] == ["access_denied"]
    assert "verification_code" not in q and "verification_token" not in q
    assert provider.state.token_calls == []
    assert connection_count(app) == 0


def test_error_description_is_escaped(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    params = {k: v[0] for k, v in query(provider.approve(flow.location, confirm=False)).items()}
    nasty = "<b>no</b>&verification_code=evil#frag"
    back = callback_with(flow.browser, {**params, "error_description": nasty})
    location = back.headers["Location"]
    assert "<" not in location and "#" not in location
    q = query(location)
    assert q["error_description"] == [nasty]
    assert "verification_code" not in q
    # An error value that is not an OAuth error code is not echoed.
    flow = begin(app, headers)
    params = {k: v[0] for k, v in query(provider.approve(flow.location, confirm=False)).items()}
    back = callback_with(flow.browser, {**params, "error": "<script>"})
    assert query(back.headers["Location"])["error"] == ["invalid_request"]


@pytest.mark.parametrize("fault", ["invalid_grant", "invalid_client"])
def test_token_endpoint_oauth_errors_redirect_with_error(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str], fault: str
) -> None:
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location)
    provider.state.inject_token_fault(fault)
    back = callback(flow.browser, at_provider)
    assert back.status_code == 302
    q = query(back.headers["Location"])
    assert q["error"] == [fault] and q["keep"] == ["1"]
    assert "verification_code" not in q
    assert provider.state.code_exchange_count == 1
    assert connection_count(app) == 0


@pytest.mark.parametrize("fault", ["timeout", "http500", "html200", "no_access_token"])
def test_token_endpoint_failures_store_nothing(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider], fault: str
) -> None:
    app = make_app(ZIS_HTTP_TIMEOUT=1)
    provider = provider_factory(FAULT_SLEEP=2)
    register(app, provider)
    headers = auth_header(app)
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location)
    provider.state.inject_token_fault(fault)
    back = callback(flow.browser, at_provider)
    assert back.status_code == 302, back.get_data(as_text=True)
    location = back.headers["Location"]
    q = query(location)
    assert q["error"] == ["provider_error"] and q["keep"] == ["1"]
    assert "verification_code" not in q
    for body_part in ("injected", "oops", "html", "token_type", "Internal Server Error"):
        assert body_part not in location
    assert connection_count(app) == 0
    with app.app_context(), pytest.raises(ConnectionNotFound):
        zis_of(app).get_connection("acme", "main")
    # The code may have been used up at the provider; the flow is over either way.
    assert_envelope(callback(flow.browser, at_provider), 400, "1301")


def test_failed_reauthorization_keeps_the_old_connection(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    first = connect(app, provider, headers)
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location)
    provider.state.inject_token_fault("http500")
    back = callback(flow.browser, at_provider)
    assert query(back.headers["Location"])["error"] == ["provider_error"]
    with app.app_context():
        conn = zis_of(app).get_connection("acme", "main", refresh_if_due=False)
    assert conn.uuid == first["uuid"] and conn.access_token == first["access_token"]
    assert conn.refresh_token == first["refresh_token"]


# --------------------------------------------------------------------------- origins


BAD_ORIGINS = [
    "https://evil.test/cb",
    "//evil.test/cb",
    "https:evil.test",
    "javascript:alert(1)",
    "https://client.int.evil.test/cb",
    "https://client.int@evil.test/cb",
    "https://evil.test\\@client.int/cb",
    "https://evil.test\\.client.int/cb",
    "http://client.int/cb",
    "https://client.int:8443/cb",
    "https://user:pw@client.int/cb",
    "https://client.int%2F@evil.test/",
    "https://evil.test#@client.int",
    "https://evil.test?@client.int",
    "https://evil.test/https://client.int/",
    "https://client.int.:443/cb",
    "https://client.int\u3002evil.test/",
    " https://client.int/cb",
    "java\tscript:alert(1)",
    "HTTPS://evil.test",
    "data:text/html,hi",
    "ftp://client.int/",
    "/relative/path",
    "https://client.int/cb\r\nX-Injected: 1",
    "",
    5,
]


def test_bad_origins_refused_at_start(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    for origin in BAD_ORIGINS:
        resp = start(browser, headers, origin_oauth_redirect_url=origin)
        assert resp.status_code == 422, (origin, resp.get_json())
        assert_envelope(resp, 422, "1303", "origin_oauth_redirect_url")
    resp = start(browser, headers, origin_oauth_redirect_url=None)
    assert_envelope(resp, 422, "1303", "origin_oauth_redirect_url")
    assert nothing_pending(app)


@pytest.mark.parametrize(
    "origin",
    [
        "https://client.int/callback?keep=1",
        "https://CLIENT.int:443/x#frag",
        "http://localhost/admin/connected",
        "http://localhost:80/admin",
    ],
)
def test_allowed_origins_work(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str], origin: str
) -> None:
    flow = begin(app, headers, origin_oauth_redirect_url=origin)
    back = callback(flow.browser, provider.approve(flow.location))
    # (werkzeug normalises the host's case in Location)
    assert back.headers["Location"].split("?")[0].lower() == origin.split("?")[0].split("#")[0].lower()
    assert verification_code(back)


def test_https_origin_required_without_insecure_http(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_ALLOW_INSECURE_HTTP=False, ZIS_ALLOWED_REDIRECT_ORIGINS=["http://client.int"])
    with app.app_context():
        zis_of(app).create_oauth_client(
            "acme",
            name="acme",
            client_id="c",
            client_secret="s",
            auth_url="https://idp.test/authorize",
            token_url="https://idp.test/token",
        )
    resp = start(app.test_client(), auth_header(app), origin_oauth_redirect_url="http://client.int/cb")
    assert_envelope(resp, 422, "1303", "origin_oauth_redirect_url")


# --------------------------------------------------------------------------- start validation


START_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "name"),
    ({"name": "bad name!"}, "name"),
    ({"name": "x" * 129}, "name"),
    ({"name": 5}, "name"),
    ({"oauth_client_name": None}, "oauth_client_name"),
    ({"oauth_client_name": 5}, "oauth_client_name"),
    ({"oauth_client_name": None, "oauth_client_uuid": "not-a-uuid"}, "oauth_client_uuid"),
    ({"allow_offline_access": "yes"}, "allow_offline_access"),
    ({"permission_scopes": 5}, "permission_scopes"),
    ({"permission_scopes": 'read "write"'}, "permission_scopes"),
    ({"grant_type": "password"}, "grant_type"),
    ({"surprise": 1}, "surprise"),
]


def test_start_validation_names_the_field(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    for body, field in START_ERRORS:
        resp = start(browser, headers, **body)
        assert resp.status_code == 422, (body, resp.get_json())
        assert_envelope(resp, 422, "1303", field)
    assert nothing_pending(app) and connection_count(app) == 0
    assert provider.state.token_calls == []


def test_start_treats_null_optionals_as_absent(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    payload = {
        "name": "main",
        "oauth_client_name": "acme",
        "origin_oauth_redirect_url": ORIGIN_URL,
        "oauth_client_uuid": None,
        "permission_scopes": None,
        "allow_offline_access": None,
        "oauth_url_subdomain": None,
        "grant_type": None,
    }
    resp = app.test_client().post(f"{PREFIX}/connections/oauth/start/acme", json=payload, headers=headers)
    assert resp.status_code == 200, resp.get_json()


def test_start_unknown_client_and_bad_bodies(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    browser = app.test_client()
    assert_envelope(start(browser, headers, oauth_client_name="nope"), 404, "1302", "nope")
    unknown_uuid = "00000000-0000-4000-8000-000000000000"
    assert_envelope(
        start(browser, headers, oauth_client_name=None, oauth_client_uuid=unknown_uuid), 404, "1302"
    )
    with app.app_context():
        uuid = zis_of(app).get_oauth_client("acme", name="acme").uuid
    ok = start(browser, headers, oauth_client_name=None, oauth_client_uuid=uuid.upper())
    assert ok.status_code == 200
    mismatch = start(browser, headers, oauth_client_name="other", oauth_client_uuid=uuid)
    assert_envelope(mismatch, 422, "1303", "oauth_client_name")
    url = f"{PREFIX}/connections/oauth/start/acme"
    assert_envelope(browser.post(url, data="name=main", headers=headers), 415, "1301")
    bad_json = browser.post(url, data="{", content_type="application/json", headers=headers)
    assert_envelope(bad_json, 400, "1301")
    assert_envelope(browser.post(url, json=["name"], headers=headers), 400, "1301")


def test_start_authentication(app: Flask, provider: LiveProvider, acme: None) -> None:
    browser = app.test_client()
    assert_envelope(start(browser, {}), 401, "1200")
    assert_envelope(start(browser, {"Authorization": "Bearer nope"}), 401, "1200")
    assert_envelope(start(browser, auth_header(app, "beta")), 403, "1200")
    # The client belongs to acme: beta cannot start with it even on its own route.
    assert_envelope(start(browser, auth_header(app, "beta"), integration="beta"), 404, "1302")
    assert nothing_pending(app)


# --------------------------------------------------------------------------- verification code


def test_access_codes_returns_connection_and_is_single_use(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    flow = begin(app, headers)
    at_provider = provider.approve(flow.location)
    code = verification_code(callback(flow.browser, at_provider))
    got = exchange(flow.browser, headers, code)
    assert got.status_code == 200
    assert got.headers["Cache-Control"] == "no-store"
    conn = got.get_json()
    assert set(conn) >= {
        "access_token",
        "created_by",
        "integration",
        "name",
        "oauth_access_token_response_body",
        "oauth_client_uuid",
        "oauth_url_subdomain",
        "permission_scope",
        "refresh_token",
        "token_expiry",
        "token_type",
        "uuid",
        "zendesk_account_id",
        "origin_oauth_redirect_url",
        "raw_callback_params",
    }
    with app.app_context():
        assert conn["oauth_client_uuid"] == zis_of(app).get_oauth_client("acme", name="acme").uuid
    assert conn["integration"] == "acme" and conn["name"] == "main"
    assert conn["origin_oauth_redirect_url"] == ORIGIN_URL
    assert conn["created_by"]
    raw = parse_qs(conn["raw_callback_params"])
    assert raw["code"] == query(at_provider)["code"]
    body = conn["oauth_access_token_response_body"]
    assert conn["access_token"] in str(body)
    assert_envelope(exchange(flow.browser, headers, code), 400, "1301")
    assert_envelope(exchange(flow.browser, headers, ""), 400, "1301")
    assert_envelope(exchange(flow.browser, headers, "made-up"), 400, "1301")


def test_verification_code_expires(make_app: Callable[..., Flask], provider: LiveProvider) -> None:
    app = make_app(ZIS_VERIFICATION_CODE_MAX_AGE=60)
    register(app, provider)
    headers = auth_header(app)
    flow = begin(app, headers)
    code = verification_code(callback(flow.browser, provider.approve(flow.location)))
    with later(61):
        assert_envelope(exchange(flow.browser, headers, code), 400, "1301")


def test_verification_code_is_bound_to_its_integration(
    app: Flask, provider: LiveProvider, acme: None, headers: dict[str, str]
) -> None:
    register(app, provider, integration="beta", name="beta", client_id="beta-client")
    beta_headers = auth_header(app, "beta")
    acme_flow = begin(app, headers)
    acme_code = verification_code(callback(acme_flow.browser, provider.approve(acme_flow.location)))
    beta_flow = begin(app, beta_headers, integration="beta", oauth_client_name="beta")
    beta_code = verification_code(callback(beta_flow.browser, provider.approve(beta_flow.location)))

    browser = app.test_client()
    # beta's token on acme's route: 403, and the code survives.
    assert_envelope(exchange(browser, beta_headers, acme_code, "acme"), 403, "1200")
    # acme's own token, beta's code: 400 (unknown here, as the service answers), and the code survives.
    assert_envelope(exchange(browser, headers, beta_code, "acme"), 400, "1301")
    beta_conn = exchange(browser, beta_headers, beta_code, "beta").get_json()
    acme_conn = exchange(browser, headers, acme_code, "acme").get_json()
    assert beta_conn["integration"] == "beta" and acme_conn["integration"] == "acme"
    assert beta_conn["access_token"] != acme_conn["access_token"]


# --------------------------------------------------------------------------- client credentials


@pytest.mark.parametrize("how", ["client_grant", "body_grant"])
def test_client_credentials(app: Flask, provider: LiveProvider, headers: dict[str, str], how: str) -> None:
    if how == "client_grant":
        register(
            app,
            provider,
            grant_type="client_credentials",
            auth_url=None,
            token_endpoint_auth_method="client_secret_post",
        )
        body: dict[str, Any] = {"origin_oauth_redirect_url": None}
    else:
        register(app, provider)
        body = {"grant_type": "client_credentials"}
    browser = app.test_client()
    resp = start(browser, headers, permission_scopes="read", **body)
    assert resp.status_code == 200, resp.get_json()
    redirect_url = resp.get_json()["redirect_url"]
    prefix = f"http://localhost{PREFIX}/connections/oauth/access_codes/acme?verification_code="
    assert redirect_url.startswith(prefix)
    [call] = provider.state.token_calls
    assert call["grant_type"] == "client_credentials" and call["status"] == 200
    assert call["scope"] == "read"
    assert provider.state.authorize_requests == []
    code = query(redirect_url)["verification_code"][0]
    conn = exchange(browser, headers, code).get_json()
    assert conn["access_token"] and conn["name"] == "main"
    assert conn["permission_scope"] == "read"
    assert provider.state.is_access_token_active(conn["access_token"])
    assert_envelope(exchange(browser, headers, code), 400, "1301")


def test_client_credentials_provider_failure_stores_nothing(
    app: Flask, provider: LiveProvider, headers: dict[str, str]
) -> None:
    register(app, provider, grant_type="client_credentials")
    provider.state.inject_token_fault("http500")
    resp = start(app.test_client(), headers)
    assert_envelope(resp, 502, "1305")
    assert "Internal Server Error" not in resp.get_data(as_text=True)
    assert connection_count(app) == 0 and nothing_pending(app)


# --------------------------------------------------------------------------- no leaks


CLIENT_SECRET = "the-client-secret-" + "x" * 20


def approve_unlogged(
    provider: LiveProvider, location: str, caplog: pytest.LogCaptureFixture | None, noise: list[Any]
) -> str:
    """``provider.approve``, setting aside the log records it causes: that is the test's
    fake browser (urllib3 logging the authorize URL it fetched), not the extension."""
    before = len(caplog.records) if caplog is not None else 0
    at_provider = provider.approve(location)
    if caplog is not None:
        noise.extend(caplog.records[before:])
    return at_provider


def secrets_of_one_flow(
    app: Flask,
    provider: LiveProvider,
    headers: dict[str, str],
    *,
    caplog: pytest.LogCaptureFixture | None = None,
    noise: list[Any] | None = None,
) -> dict[str, str]:
    """Run one whole flow and return every secret value it produced, by name."""
    flow = begin(app, headers)
    st = app.extensions["zis_connections"]
    pending = st.storage.get_flow(serializer(app, STATE_SALT).loads(flow.state))
    verifier = st.encryptor.decrypt(pending.code_verifier_enc)
    at_provider = approve_unlogged(provider, flow.location, caplog, noise if noise is not None else [])
    vcode = verification_code(callback(flow.browser, at_provider))
    conn = exchange(flow.browser, headers, vcode).get_json()
    return {
        "flow_token": flow.flow_token,
        "state": flow.state,
        "binding_cookie": flow.cookie[1],
        "code": query(at_provider)["code"][0],
        "pkce_verifier": verifier,
        "verification_code": vcode,
        "access_token": conn["access_token"],
        "refresh_token": conn["refresh_token"],
        "client_secret": CLIENT_SECRET,
    }


@pytest.fixture
def secret_client(app: Flask, provider: LiveProvider) -> None:
    # client_secret_post: the secret travels in the form body, the easier one to leak.
    register(app, provider, client_secret=CLIENT_SECRET, token_endpoint_auth_method="client_secret_post")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_database_file_holds_no_secret_in_clear(
    app: Flask, provider: LiveProvider, secret_client: None, headers: dict[str, str], tmp_path: Any
) -> None:
    seen = secrets_of_one_flow(app, provider, headers)
    files = [p for p in tmp_path.rglob("*.sqlite3*") if p.is_file()]
    assert files, "the sqlite backend wrote no database file"
    dump = b"".join(p.read_bytes() for p in files)
    assert len(dump) > 0
    for what in (
        "access_token",
        "refresh_token",
        "client_secret",
        "code",
        "pkce_verifier",
        "verification_code",
        "binding_cookie",
    ):
        assert seen[what].encode() not in dump, f"{what} is in the database file in clear"


def _record_texts(record: Any) -> Iterator[str]:
    yield record.getMessage()
    yield str(record.msg)
    args = record.args
    if isinstance(args, dict):
        args = tuple(args.values())
    for arg in args or ():
        yield str(arg)
        yield repr(arg)
    if record.exc_info:
        yield logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        yield record.exc_text


def test_logs_over_a_whole_flow_hold_no_secret(
    app: Flask,
    provider: LiveProvider,
    secret_client: None,
    headers: dict[str, str],
    all_logs: pytest.LogCaptureFixture,
) -> None:
    noise: list[Any] = []
    values = secrets_of_one_flow(app, provider, headers, caplog=all_logs, noise=noise)
    # A re-authorization that fails at the token endpoint (the extension logs a warning) ...
    flow = begin(app, headers)
    at_provider = approve_unlogged(provider, flow.location, all_logs, noise)
    provider.state.inject_token_fault("http500")
    assert query(callback(flow.browser, at_provider).headers["Location"])["error"] == ["provider_error"]
    # ... and bad requests carrying secrets (a replayed state, a used verification code).
    callback(app.test_client(), at_provider)
    exchange(flow.browser, headers, values["verification_code"])
    values |= {
        "code_2": query(at_provider)["code"][0],
        "state_2": flow.state,
        "flow_token_2": flow.flow_token,
        "binding_cookie_2": flow.cookie[1],
    }

    records = [r for r in all_logs.records if not any(r is n for n in noise)]
    assert any(r.name == "flask_zis_connections" for r in records)  # the capture works
    for record in records:
        for text in _record_texts(record):
            for what, value in values.items():
                assert value not in text, f"{what} leaked into log {record.name}: {record.msg!r}"
