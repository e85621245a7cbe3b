"""What a token holder, a hostile or slow provider and a forged request can do - and cannot.

Each test plays the attacker at the HTTP layer, against real parts: the live Authlib
provider, real loopback servers that redirect, drip or flood (:mod:`.hostile_server`),
and real databases.  Clocks move with ``time-machine``; nothing sleeps to wait for an
expiry.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import time_machine
from flask import Flask, Response, session
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_zis_connections import ZISConnections
from flask_zis_connections.api.blueprint import _PRIVATE_HEADERS, _private
from flask_zis_connections.domain import ConnectionRecord, utcnow
from flask_zis_connections.storage import Storage

from .flow_driver import auth_header, callback, connect, query, register, start, zis_of
from .helpers import PREFIX, assert_envelope, client_body
from .hostile_server import HostileHandler, HostileServer
from .live_provider import DEFAULT_REDIRECT_URI, LiveProvider

TOKEN_JSON = json.dumps(
    {"access_token": "stolen-shape-token", "token_type": "bearer", "expires_in": 3600}
).encode()


# -- a connected host app --------------------------------------------------------------------
@dataclass
class Env:
    app: Flask
    provider: LiveProvider
    headers: dict[str, str]
    conn: dict[str, Any]

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    @property
    def client_uuid(self) -> str:
        return str(self.conn["oauth_client_uuid"])

    def record(self) -> ConnectionRecord:
        rec = self.storage.get_connection("acme", name="main")
        assert rec is not None
        return rec

    def http(self) -> FlaskClient:
        return self.app.test_client()

    def get(self, path: str, **query: str) -> TestResponse:
        return self.http().get(PREFIX + path, query_string=query, headers=self.headers)

    def patch_client(self, body: dict[str, Any], **headers: str) -> TestResponse:
        return self.http().patch(
            f"{PREFIX}/connections/oauth/clients/acme/{self.client_uuid}",
            json=body,
            headers={**self.headers, **headers},
        )

    def point_client_at(self, **urls: str) -> None:
        """The host's own (trusted) Python API moves the client: the secret stays."""
        with self.app.app_context():
            self.zis.update_oauth_client("acme", self.client_uuid, **urls)


@pytest.fixture
def make_env(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> Callable[..., Env]:
    def build(*, provider_config: dict[str, Any] | None = None, **config: Any) -> Env:
        provider = provider_factory(**(provider_config or {}))
        app = make_app(**config)
        register(app, provider)
        headers = auth_header(app)
        conn = connect(app, provider, headers, name="main", allow_offline_access=True)
        return Env(app, provider, headers, conn)

    return build


def later(hours: float = 2) -> time_machine.travel:
    """Every thread's clock, moved past the demo provider's one-hour tokens."""
    return time_machine.travel(utcnow() + timedelta(hours=hours), tick=True)


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[HostileHandler], None]], HostileServer]]:
    started: list[HostileServer] = []

    def start_server(behave: Callable[[HostileHandler], None]) -> HostileServer:
        srv = HostileServer(behave).__enter__()
        started.append(srv)
        return srv

    yield start_server
    for srv in reversed(started):
        srv.__exit__(None, None, None)


Servers = Callable[[Callable[[HostileHandler], None]], HostileServer]
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


# -- 1. the client secret does not follow a moved URL -------------------------------------------
@SQLITE
@pytest.mark.parametrize(
    "change",
    [
        {"token_url": "/token"},
        {"revocation_url": "/revoke"},
        {"token_endpoint_auth_method": "client_secret_post"},
    ],
)
def test_moving_where_the_secret_goes_needs_the_secret(
    make_env: Callable[..., Env], servers: Servers, change: dict[str, str]
) -> None:
    env = make_env()
    evil = servers(lambda h: h.json(TOKEN_JSON))
    body = {k: (evil.url + v if v.startswith("/") else v) for k, v in change.items()}
    before = env.storage.get_client("acme", uuid=env.client_uuid)

    resp = env.patch_client(body)
    err = assert_envelope(resp, 422, "1303", "client_secret")
    assert next(iter(change)) in err["detail"]
    assert env.storage.get_client("acme", uuid=env.client_uuid) == before
    # The refresh and the delete still go where the host registered them.
    assert env.get("/connections/refresh/acme", name="main").status_code == 200
    assert env.http().delete(f"{PREFIX}/connections/acme?name=main", headers=env.headers).status_code == 200
    assert evil.seen == []


@SQLITE
def test_a_move_with_the_secret_or_an_unrelated_change_is_accepted(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env()
    evil = servers(lambda h: h.json(TOKEN_JSON))
    assert env.patch_client({"default_scopes": "read"}).status_code == 200
    assert env.patch_client({"token_url": env.provider.token_url}).status_code == 200  # unchanged value
    moved = env.patch_client({"token_url": evil.url + "/token", "client_secret": "their-own-secret"})
    assert moved.status_code == 200, moved.get_json()
    assert env.get("/connections/refresh/acme", name="main").status_code == 200
    # What went to the new URL is the secret given with the move, not the host's.
    assert len(evil.seen) == 1
    sent = evil.seen[0].headers.get("Authorization", "") + evil.seen[0].body.decode()
    assert "demo-secret" not in sent
    import base64

    assert base64.b64encode(b"demo-client:their-own-secret").decode() in sent


@SQLITE
def test_the_host_python_api_and_config_may_move_a_client_keeping_its_secret(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env()
    other = servers(lambda h: h.json(TOKEN_JSON))
    env.point_client_at(token_url=other.url + "/token")
    assert env.get("/connections/refresh/acme", name="main").status_code == 200
    assert len(other.seen) == 1  # trusted code moved it; the stored secret went along


# -- 2. no outbound call follows a redirect -----------------------------------------------------
@SQLITE
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirecting_token_endpoint_is_not_followed(
    make_env: Callable[..., Env], servers: Servers, status: int
) -> None:
    env = make_env()
    internal = servers(lambda h: h.json(TOKEN_JSON))  # an internal service answering token JSON
    redirector = servers(lambda h: h.redirect(status, internal.url + "/steal"))
    env.point_client_at(token_url=redirector.url + "/token")
    before = env.record()

    resp = env.get("/connections/refresh/acme", name="main")
    assert_envelope(resp, 502, "1305", "redirect")
    assert len(redirector.seen) == 1 and b"refresh_token" in redirector.seen[0].body
    assert internal.seen == []  # neither the refresh token nor the secret went on
    assert env.record() == before  # and nothing it could have answered was stored
    assert "stolen-shape-token" not in resp.get_data(as_text=True)


@SQLITE
def test_a_redirecting_revocation_endpoint_is_not_followed(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env()
    catcher = servers(lambda h: h.answer(200))
    redirector = servers(lambda h: h.redirect(307, catcher.url + "/revoke"))
    env.point_client_at(revocation_url=redirector.url + "/revoke")
    resp = env.http().delete(f"{PREFIX}/connections/acme?name=main", headers=env.headers)
    assert resp.status_code == 200 and resp.get_json()["revoked"] is False
    assert redirector.seen and catcher.seen == []


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_token_proxy_does_not_follow_a_redirect(make_app: Callable[..., Flask], servers: Servers) -> None:
    catcher = servers(lambda h: h.json(TOKEN_JSON))
    redirector = servers(lambda h: h.redirect(307, catcher.url + "/token"))
    app = make_app(ZIS_HOST_TOKEN_URL=redirector.url + "/token")
    resp = app.test_client().post(
        f"{PREFIX}/connections/oauth/tokens/acme",
        json={"grant_type": "authorization_code", "client_id": "c", "client_secret": "shh", "code": "x"},
    )
    assert_envelope(resp, 502, "1305")
    assert redirector.seen and catcher.seen == []
    assert "shh" not in resp.get_data(as_text=True)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_private_destinations_are_refused_unless_allowed(
    make_app: Callable[..., Flask], servers: Servers
) -> None:
    target = servers(lambda h: h.json(TOKEN_JSON))
    body = {"grant_type": "client_credentials", "client_id": "c", "client_secret": "shh"}
    # "localhost" resolves to loopback: refused after resolution, before any connection.
    url = f"https://localhost:{target.port}/token"
    app = make_app(ZIS_ALLOW_INSECURE_HTTP=False, ZIS_HOST_TOKEN_URL=url)
    resp = app.test_client().post(f"{PREFIX}/connections/oauth/tokens/acme", json=body)
    assert_envelope(resp, 502, "1305", "ZIS_ALLOWED_PRIVATE_HOSTS")
    assert target.seen == []
    # Listed as an allowed private host, the same server is reached (the TLS handshake then
    # fails against this plain-HTTP server, which still proves the connection was made).
    allowed = make_app(
        ZIS_ALLOW_INSECURE_HTTP=False, ZIS_HOST_TOKEN_URL=url, ZIS_ALLOWED_PRIVATE_HOSTS=["localhost"]
    )
    resp = allowed.test_client().post(f"{PREFIX}/connections/oauth/tokens/acme", json=body)
    assert resp.status_code == 502
    assert "ZIS_ALLOWED_PRIVATE_HOSTS" not in resp.get_json()["errors"][0]["detail"]


# -- 3. a total deadline, a size cap, and a lease that outlives the call ------------------------
@SQLITE
def test_a_dripping_token_endpoint_is_cut_at_the_deadline(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env(ZIS_HTTP_TIMEOUT=1)
    drip = servers(lambda h: h.drip(TOKEN_JSON, 0.1))  # ~7 s in all, each byte well within 1 s
    env.point_client_at(token_url=drip.url + "/token")
    before = env.record()
    started = time.monotonic()
    resp = env.get("/connections/refresh/acme", name="main")
    elapsed = time.monotonic() - started
    assert_envelope(resp, 502, "1305", "within 1s")
    assert elapsed < 2.5, elapsed
    assert env.record() == before


@SQLITE
def test_a_flooding_token_endpoint_is_cut_at_the_size_cap(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env(ZIS_MAX_PROVIDER_RESPONSE_BYTES=64 * 1024)
    flood = servers(lambda h: h.flood(20 * 1024 * 1024))
    env.point_client_at(token_url=flood.url + "/token")
    before = env.record()
    resp = env.get("/connections/refresh/acme", name="main")
    assert_envelope(resp, 502, "1305", "ZIS_MAX_PROVIDER_RESPONSE_BYTES")
    assert env.record() == before


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)
def test_a_refresh_slower_than_its_lease_sends_the_refresh_token_once(
    make_env: Callable[..., Env],
) -> None:
    # The lease (1.2 s) is far shorter than the provider's answer (2.5 s): the refresher
    # must keep it alive, or a second refresher would replay the same refresh token and
    # the rotating provider would answer invalid_grant (reuse detection).
    env = make_env(provider_config={"SLOW_SLEEP": 2.5}, ZIS_REFRESH_LEASE_TTL=1.2, ZIS_HTTP_TIMEOUT=5)
    old_refresh = env.conn["refresh_token"]
    env.provider.state.reset_counters()
    env.provider.state.inject_token_fault("slow")
    results: list[TestResponse] = []

    def refresh_now(delay: float) -> None:
        time.sleep(delay)
        results.append(env.get("/connections/refresh/acme", name="main"))

    threads = [threading.Thread(target=refresh_now, args=(d,)) for d in (0, 0.3, 1.4, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200] * 4, [r.get_json() for r in results]
    assert env.provider.state.refresh_call_count == 1
    sent = [c for c in env.provider.state.token_calls if c["grant_type"] == "refresh_token"]
    assert len(sent) == 1
    rec = env.record()
    assert not rec.needs_reauth
    tokens = {r.get_json()["refresh_token"] for r in results}
    assert len(tokens) == 1 and old_refresh not in tokens


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_refresher_that_cannot_renew_its_lease_stops_before_it_lapses(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database stops accepting renewals mid-call (say it is failing over): the
    # refresher must give up while its lease is still held - before anyone else may take
    # it and replay the refresh token - and must not write what it no longer owns.
    env = make_env(provider_config={"SLOW_SLEEP": 3.0}, ZIS_REFRESH_LEASE_TTL=1.5, ZIS_HTTP_TIMEOUT=8)
    monkeypatch.setattr(env.storage, "renew_lease", lambda *a, **k: False)
    env.provider.state.inject_token_fault("slow")
    before = env.record()
    started = time.monotonic()
    resp = env.get("/connections/refresh/acme", name="main")
    elapsed = time.monotonic() - started
    assert_envelope(resp, 502, "1305")
    assert elapsed < 1.5, elapsed  # cut at the lease's safety margin, not at 3 s or 8 s
    assert env.record() == before


# -- 4. a failing provider is not hammered ------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)
def test_a_failing_provider_backs_off_and_callers_fail_fast(
    make_env: Callable[..., Env], make_app: Callable[..., Flask], backend: str
) -> None:
    env = make_env(ZIS_REFRESH_BACKOFF_MAX=4)
    state = env.provider.state
    state.reset_counters()
    state.inject_token_fault("http500", times=10)
    before = env.record()
    with later() as clock:
        first = env.get("/connections/acme", name="main")
        assert_envelope(first, 502, "1305")
        assert state.refresh_call_count == 1
        again = env.get("/connections/acme", name="main")
        err = assert_envelope(again, 502, "1305", "Try again")
        assert again.headers["Retry-After"] == "1"
        assert state.refresh_call_count == 1  # failed fast: no second provider call
        if backend != "memory":
            # Another worker on the same database sees the same back-off.
            worker = make_app(ZIS_REFRESH_BACKOFF_MAX=4)
            resp = worker.test_client().get(
                f"{PREFIX}/connections/acme", query_string={"name": "main"}, headers=env.headers
            )
            assert_envelope(resp, 502, "1305")
            assert state.refresh_call_count == 1
        assert "1 time" in err["detail"]
        assert env.record() == before  # the row itself never changed
        backoff = env.storage.get_refresh_backoff(before.uuid)
        assert backoff is not None and backoff.failures == 1

        # Exponential: 1 s, then 2 s, 4 s, capped at ZIS_REFRESH_BACKOFF_MAX (4 s).
        for expected_wait in ("2", "4", "4"):
            clock.shift(timedelta(seconds=5))
            failed = env.get("/connections/refresh/acme", name="main")
            assert failed.headers["Retry-After"] == expected_wait, failed.get_json()
        assert state.refresh_call_count == 4

        clock.shift(timedelta(seconds=5))
        state.reset_counters()
        while state.pending_faults:  # the provider recovers
            state._faults.clear()
        ok = env.get("/connections/acme", name="main")
        assert ok.status_code == 200 and ok.get_json()["access_token"] != env.conn["access_token"]
        assert env.storage.get_refresh_backoff(before.uuid) is None  # success cleared it
        assert state.refresh_call_count == 1


@SQLITE
def test_a_due_but_valid_token_is_handed_out_during_a_back_off(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_REFRESH_LEEWAY=600)
    state = env.provider.state
    state.reset_counters()
    state.inject_token_fault("http500", times=5)
    with later(hours=0.95):  # due (within the 600 s leeway) but not expired
        for _ in range(3):
            resp = env.get("/connections/acme", name="main")
            assert resp.status_code == 200, resp.get_json()
            assert resp.get_json()["access_token"] == env.conn["access_token"]
            with env.app.app_context():
                assert zis_of(env.app).get_token("acme", "main") == env.conn["access_token"]
        assert state.refresh_call_count == 1  # one attempt, then the back-off holds
        # An explicit refresh during the back-off fails fast with Retry-After.
        forced = env.get("/connections/refresh/acme", name="main")
        assert_envelope(forced, 502, "1305")
        assert int(forced.headers["Retry-After"]) >= 1
        assert state.refresh_call_count == 1


@SQLITE
def test_reauthorization_clears_a_back_off(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.provider.state.inject_token_fault("http500")
    assert env.get("/connections/refresh/acme", name="main").status_code == 502
    assert env.storage.get_refresh_backoff(env.record().uuid) is not None
    connect(env.app, env.provider, env.headers, name="main", allow_offline_access=True)
    assert env.storage.get_refresh_backoff(env.record().uuid) is None
    assert env.get("/connections/refresh/acme", name="main").status_code == 200


# -- 5. the Host header does not widen the redirect allow-list ----------------------------------
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_with_a_public_url_the_host_header_is_not_an_own_origin(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    app = make_app(ZIS_PUBLIC_URL="https://zis.example", ZIS_ALLOWED_REDIRECT_ORIGINS=[])
    register(app, provider)
    headers = auth_header(app)
    c = app.test_client()

    def start_as(host: str, origin_url: str) -> TestResponse:
        # The attacker picks the Host header (and the proxy forwards https).
        return c.post(
            f"{PREFIX}/connections/oauth/start/acme",
            base_url=f"https://{host}",
            headers=headers,
            json={"name": "main", "oauth_client_name": "acme", "origin_oauth_redirect_url": origin_url},
        )

    evil = start_as("evil.example", "https://evil.example/landing")
    assert_envelope(evil, 422, "1303", "origin_oauth_redirect_url")
    good = start_as("evil.example", "https://zis.example/landing")
    assert good.status_code == 200
    assert good.get_json()["redirect_url"].startswith("https://zis.example/")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_without_a_public_url_flask_trusted_hosts_guards_the_host(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    app = make_app(TRUSTED_HOSTS=["localhost"], ZIS_ALLOWED_REDIRECT_ORIGINS=[])
    register(app, provider)
    headers = {**auth_header(app), "Host": "evil.example"}
    resp = start(app.test_client(), headers, origin_oauth_redirect_url="http://evil.example/x")
    assert_envelope(resp, 400, "1301")


# -- 6. trusted origins, same-origin refresh, admin-bound flows ---------------------------------
@pytest.fixture
def admin_app(make_app: Callable[..., Flask], provider: LiveProvider) -> Flask:
    app = make_app(ZIS_TRUSTED_ORIGINS=["https://admin.int"])
    zis: ZISConnections = zis_of(app)
    register(app, provider)

    @zis.admin_session_loader
    def load_admin(integration: str) -> str | None:
        return session.get("admin") if integration == "acme" else None

    @app.post("/login/<who>")
    def login(who: str) -> str:
        session["admin"] = who
        return "ok"

    return app


def logged_in(app: Flask, who: str) -> FlaskClient:
    c = app.test_client()
    c.post(f"/login/{who}")
    return c


CLIENTS_URL = f"{PREFIX}/connections/oauth/clients/acme"


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_redirect_origins_do_not_admit_admin_writes(admin_app: Flask) -> None:
    c = logged_in(admin_app, "alice")
    # https://client.int is an allowed redirect origin (see conftest), not a trusted one.
    refused = c.post(CLIENTS_URL, json=client_body(name="x"), headers={"Origin": "https://client.int"})
    assert_envelope(refused, 403, "1200", "ZIS_TRUSTED_ORIGINS")
    ok = c.post(CLIENTS_URL, json=client_body(name="y"), headers={"Origin": "https://admin.int"})
    assert ok.status_code == 201
    same = c.post(CLIENTS_URL, json=client_body(name="z"), headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 201
    names = {cl["name"] for cl in c.get(CLIENTS_URL).get_json()["clients"]}
    assert names == {"acme", "y", "z"}


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({}, 403),
        ({"Referer": "https://evil.test/page"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Referer": "http://localhost/admin"}, 200),
    ],
)
def test_a_session_refresh_must_be_same_origin(
    admin_app: Flask, provider: LiveProvider, headers: dict[str, str], status: int
) -> None:
    connect(admin_app, provider, auth_header(admin_app), name="main", allow_offline_access=True)
    provider.state.reset_counters()
    c = logged_in(admin_app, "alice")
    resp = c.get(f"{PREFIX}/connections/refresh/acme?name=main", headers=headers)
    assert resp.status_code == status, resp.get_json()
    assert provider.state.refresh_call_count == (1 if status == 200 else 0)
    # Reading is not state-changing: a plain session GET of the connection works.
    assert c.get(f"{PREFIX}/connections/acme?name=main").status_code == 200


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_flow_started_by_an_admin_opens_only_in_that_admins_browser(
    admin_app: Flask, provider: LiveProvider
) -> None:
    alice = logged_in(admin_app, "alice")
    started = start(alice, {"Origin": "http://localhost"})
    assert started.status_code == 200, started.get_json()
    url = urlsplit(started.get_json()["redirect_url"])
    target = f"{url.path}?{url.query}"
    for browser in (logged_in(admin_app, "bob"), admin_app.test_client()):
        assert_envelope(browser.get(target), 403, "1200")
    # Refusals did not burn the flow: alice's own browser still opens it, once.
    opened = alice.get(target)
    assert opened.status_code == 307
    back = callback(alice, provider.approve(opened.headers["Location"]))
    assert back.status_code == 302 and "verification_code" in query(back.headers["Location"])


# -- 7. mix-up defence by default -----------------------------------------------------------------
def _register_attacker_client(app: Flask, evil: HostileServer, **options: Any) -> None:
    with app.app_context():
        zis_of(app).create_oauth_client(
            "acme",
            name="evil",
            client_id="demo-client",
            client_secret="attacker-secret",
            auth_url=evil.url + "/authorize",
            token_url=evil.url + "/token",
            **options,
        )


def _bounce_to_honest_provider(location: str, provider: LiveProvider, redirect_uri: str) -> str:
    """The attacker's authorization server forwards the admin to the honest provider,
    keeping the state of the attacker-client's flow."""
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    honest = {
        "response_type": "code",
        "client_id": "demo-client",
        "redirect_uri": redirect_uri,
        "scope": "read write",
        "state": params["state"],
    }
    return provider.approve(f"{provider.auth_url}?{urlencode(honest)}")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_mix_up_is_refused_when_the_honest_provider_names_itself(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider], servers: Servers
) -> None:
    honest = provider_factory()
    honest.app.config["ISSUER"] = honest.url  # RFC 9207 iss on its redirects
    app = make_app()
    register(app, honest, pkce=False)  # the honest client; no `issuer` configured anywhere
    evil = servers(lambda h: h.json(TOKEN_JSON))
    _register_attacker_client(app, evil, pkce=False)
    browser = app.test_client()
    resp = start(browser, auth_header(app), oauth_client_name="evil")
    url = urlsplit(resp.get_json()["redirect_url"])
    to_evil = browser.get(f"{url.path}?{url.query}").headers["Location"]
    landing = _bounce_to_honest_provider(to_evil, honest, DEFAULT_REDIRECT_URI)
    assert "code=" in landing and "iss=" in landing
    assert_envelope(callback(browser, landing), 400, "1301", "issuer")
    assert evil.seen == []  # the honest code never reached the attacker's token endpoint


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_mix_up_is_refused_with_per_client_callbacks(
    make_app: Callable[..., Flask], provider: LiveProvider, servers: Servers
) -> None:
    app = make_app()
    honest = register(app, provider, pkce=False, per_client_callback=True)
    honest_uri = f"{DEFAULT_REDIRECT_URI}/{honest.uuid}"
    provider.register_client("demo-client", "demo-secret", redirect_uris=[honest_uri])
    evil = servers(lambda h: h.json(TOKEN_JSON))
    _register_attacker_client(app, evil, pkce=False)
    headers = auth_header(app)
    browser = app.test_client()
    resp = start(browser, headers, oauth_client_name="evil")
    url = urlsplit(resp.get_json()["redirect_url"])
    to_evil = browser.get(f"{url.path}?{url.query}").headers["Location"]
    landing = _bounce_to_honest_provider(to_evil, provider, honest_uri)
    assert urlsplit(landing).path.endswith(honest.uuid)
    assert_envelope(callback(browser, landing), 400, "1301", "callback URL")
    assert evil.seen == []
    # The honest client's own flow uses, and completes on, its own callback URL.
    conn = connect(app, provider, headers, name="main", browser=app.test_client())
    assert conn["oauth_client_uuid"] == honest.uuid


# -- 9. small ones -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("cursor", ["9" * 20, "9" * 5000, "-1", "1e9", "٣"])
def test_an_absurd_cursor_is_a_422(app: Flask, bearer: dict[str, str], cursor: str) -> None:
    resp = app.test_client().get(
        f"{PREFIX}/integrations/acme/connections/all", query_string={"page[after]": cursor}, headers=bearer
    )
    assert_envelope(resp, 422, "1303", "page[after]")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize("integration", ["ACME", "a b", "x" * 65, "acme%0d%0a", "..%2f..%2fetc"])
def test_the_admin_loader_never_sees_an_invalid_integration(
    make_app: Callable[..., Flask], integration: str
) -> None:
    app = make_app()
    seen: list[str] = []

    @zis_of(app).admin_session_loader
    def load_admin(name: str) -> str | None:
        seen.append(name)
        return "alice"

    resp = app.test_client().get(f"{PREFIX}/connections/oauth/clients/{integration}")
    assert resp.status_code in (404, 422)
    assert resp.get_json()["errors"][0]["status"] in ("404", "422")
    assert seen == []


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_flow_cookie_is_secure_behind_a_tls_terminating_proxy(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    app = make_app(ZIS_PUBLIC_URL="https://zis.example")
    register(app, provider)
    browser = app.test_client()  # plain http, as a proxy that terminated TLS forwards it
    resp = start(browser, auth_header(app), origin_oauth_redirect_url="https://client.int/cb")
    url = urlsplit(resp.get_json()["redirect_url"])
    opened = browser.get(f"{url.path}?{url.query}")
    assert opened.status_code == 307
    cookie = opened.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    "params",
    [{"prompt": "login\r\nX-Injected: 1"}, {"a\x00b": "1"}, {"prompt": "\x7f"}, {"k": "v" * 5000}],
)
def test_authorize_params_refuse_control_characters(
    app: Flask, bearer: dict[str, str], params: dict[str, str]
) -> None:
    c = app.test_client()
    resp = c.post(CLIENTS_URL, json=client_body(authorize_params=params), headers=bearer)
    assert_envelope(resp, 422, "1303", "authorize_params")
    resp = c.post(CLIENTS_URL, json=client_body(offline_access_params=params), headers=bearer)
    assert_envelope(resp, 422, "1303", "offline_access_params")
    assert c.get(CLIENTS_URL, headers=bearer).get_json()["clients"] == []


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)
def test_a_stale_client_update_is_a_409(app: Flask, bearer: dict[str, str]) -> None:
    c = app.test_client()
    created = c.post(CLIENTS_URL, json=client_body(), headers=bearer).get_json()
    assert created["version"] == 1
    url = f"{CLIENTS_URL}/{created['uuid']}"
    first = c.patch(url, json={"default_scopes": "a"}, headers={**bearer, "If-Match": '"1"'})
    assert first.status_code == 200 and first.headers["ETag"] == '"2"'
    stale = c.patch(url, json={"default_scopes": "b"}, headers={**bearer, "If-Match": '"1"'})
    assert_envelope(stale, 409, "1304")
    assert_envelope(c.patch(url, json={}, headers={**bearer, "If-Match": "soon"}), 400, "1301")
    listed = c.get(CLIENTS_URL, headers=bearer).get_json()["clients"][0]
    assert listed["default_scopes"] == "a" and listed["version"] == 2

    # Twenty concurrent edits of version 2: exactly one lands.
    codes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def edit(i: int) -> None:
        barrier.wait(10)
        resp = app.test_client().patch(
            url, json={"default_scopes": f"s{i}"}, headers={**bearer, "If-Match": '"2"'}
        )
        with lock:
            codes.append(resp.status_code)

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [200] + [409] * 19
    assert c.get(CLIENTS_URL, headers=bearer).get_json()["clients"][0]["version"] == 3


# -- headers and parameters a browser or a provider could be tricked with ---------------------
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    "param",
    [
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "code_challenge",
        "code_challenge_method",
        "scope",
    ],
)
def test_authorize_params_cannot_override_what_the_flow_sets(
    app: Flask, bearer: dict[str, str], param: str
) -> None:
    # An implicit-grant downgrade (response_type=token), a swapped redirect_uri or a
    # fixed state would each undo a defence of the flow (RFC 9700 §2.1, §2.1.2).
    c = app.test_client()
    for field in ("authorize_params", "offline_access_params"):
        resp = c.post(CLIENTS_URL, json=client_body(**{field: {param: "x"}}), headers=bearer)
        assert_envelope(resp, 422, "1303", field)
    assert c.get(CLIENTS_URL, headers=bearer).get_json()["clients"] == []


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_no_cors_and_no_framing_on_any_answer(app: Flask, bearer: dict[str, str]) -> None:
    c = app.test_client()
    cross = {"Origin": "https://evil.test"}
    answers = [
        c.get(CLIENTS_URL, headers={**bearer, **cross}),
        c.get(CLIENTS_URL, headers=cross),  # 401
        c.options(CLIENTS_URL, headers={**cross, "Access-Control-Request-Method": "POST"}),
        c.get(f"{PREFIX}/connections/oauth/start_redirect?flow_token=x", headers=cross),
        c.get(f"{PREFIX}/health", headers=cross),
    ]
    for resp in answers:
        assert not [k for k, _ in resp.headers.items() if k.lower().startswith("access-control-")]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Content-Security-Policy"] == "frame-ancestors 'none'"


def test_the_private_headers_replace_any_a_view_set() -> None:
    """An answer that already carries one of them (in any case) ends with exactly our
    value, once; one that carries none gets all four after its own."""
    set_by_view = _private(Response("x", headers={"cache-control": "public, max-age=600", "X-Own": "1"}))
    plain = _private(Response("x", headers={"X-Own": "1"}))
    for resp in (set_by_view, plain):
        for name, value in _PRIVATE_HEADERS:
            assert resp.headers.getlist(name) == [value], (name, resp.headers)
        assert resp.headers["X-Own"] == "1"
    assert [k for k, _ in plain.headers.items()][-4:] == [k for k, _ in _PRIVATE_HEADERS]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_form_post_response_cannot_complete_a_flow(app: Flask) -> None:
    # response_mode=form_post would deliver code and state in a POST body: refused.
    resp = app.test_client().post(f"{PREFIX}/connections/oauth/callback", data={"code": "c", "state": "s"})
    assert_envelope(resp, 405, "1301")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("kind", "body", "secret_field"),
    [
        ("bearer_token", {"token": "tok-secret-1"}, "token"),
        ("basic_auth", {"username": "u", "password": "pw-secret-1"}, "password"),
        ("api_key", {"api_key": "key-secret-1", "header_name": "X-Api-Key"}, "api_key"),
    ],
)
def test_a_write_only_secret_does_not_follow_a_moved_domain(
    app: Flask, bearer: dict[str, str], kind: str, body: dict[str, str], secret_field: str
) -> None:
    # Secrets of credential connections are write-only over HTTP ("*****"): moving where
    # zis.session delivers one would hand it to whoever holds the integration's token.
    c = app.test_client()
    base = f"{PREFIX}/integrations/acme/connections/{kind}"
    created = c.post(base, json={"name": "crm", "allowed_domain": "api.example.com", **body}, headers=bearer)
    assert created.status_code == 201, created.get_json()
    moved = c.patch(f"{base}/crm", json={"allowed_domain": "evil.example.net"}, headers=bearer)
    assert_envelope(moved, 422, "1303", secret_field)
    assert c.get(f"{base}/crm", headers=bearer).get_json()[kind]["allowed_domain"] == "api.example.com"
    if kind == "api_key":
        renamed = c.patch(f"{base}/crm", json={"header_name": "X-Other"}, headers=bearer)
        assert_envelope(renamed, 422, "1303", "api_key")
    # The same value, or the move with the secret given again, is fine.
    assert (
        c.patch(f"{base}/crm", json={"allowed_domain": "api.example.com"}, headers=bearer).status_code == 200
    )
    again = {"allowed_domain": "api2.example.com", secret_field: body[secret_field]}
    assert c.patch(f"{base}/crm", json=again, headers=bearer).status_code == 200
    # The host's own Python code is trusted to move it.
    with app.app_context():
        zis_of(app).update_connection("acme", "crm", type=kind, allowed_domain="api3.example.com")
