"""``zis.session``: calling a provider's API with a connection's credentials.

Real parts only: the live Authlib provider (its ``/api/me`` answers 200 for a live
access token, 401 otherwise), loopback servers that answer whatever a test needs
(:mod:`.hostile_server`, which also records every request that reached them, so a test
can prove nothing was sent), and real databases.  Clocks move with ``time-machine``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import time_machine
from flask import Flask, current_app

from flask_zis_connections import ReauthorizationRequired, ZISConnections, connection_refreshed
from flask_zis_connections.domain import ProviderQuirks, utcnow
from flask_zis_connections.errors import InvalidRequest, InvalidValue
from flask_zis_connections.outbound import RedirectRefused
from flask_zis_connections.session import ConnectionSession, ForbiddenDestination, retry_after_seconds

from .flow_driver import auth_header, connect, register, zis_of
from .hostile_server import HostileHandler, HostileServer
from .live_provider import LiveProvider

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
ALL_BACKENDS = pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)


@dataclass
class Env:
    """A host app with connection ``main`` of integration ``acme`` at the live provider."""

    app: Flask
    provider: LiveProvider
    conn: dict[str, Any]

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    def session(self, **kw: Any) -> ConnectionSession:
        with self.app.app_context():
            return self.zis.session("acme", "main", **kw)

    def access_token(self) -> str:
        with self.app.app_context():
            return self.zis.get_connection("acme", "main", refresh_if_due=False).access_token

    def point_api_at(self, url: str | None, **more: Any) -> None:
        """The host's own Python API moves the client's API base (and more quirks)."""
        with self.app.app_context():
            self.zis.update_oauth_client("acme", self.conn["oauth_client_uuid"], api_base_url=url, **more)

    def revoke_access_token(self) -> str:
        """Revoke the current access token at the provider (RFC 7009): its API now says 401."""
        token = self.access_token()
        answer = requests.post(
            self.provider.revocation_url,
            data={"token": token, "token_type_hint": "access_token"},
            auth=("demo-client", "demo-secret"),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert not self.provider.state.is_access_token_active(token)
        self.provider.state.reset_counters()
        return token


@pytest.fixture
def make_env(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> Callable[..., Env]:
    def build(*, config: dict[str, Any] | None = None, **client_options: Any) -> Env:
        provider = provider_factory()
        app = make_app(**(config or {}))
        client_options.setdefault("api_base_url", provider.url)
        register(app, provider, **client_options)
        conn = connect(app, provider, auth_header(app), name="main", allow_offline_access=True)
        provider.state.reset_counters()
        return Env(app, provider, conn)

    return build


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


def ok(handler: HostileHandler) -> None:
    handler.json(b'{"ok": true}')


def answers(*behaviours: Callable[[HostileHandler], None]) -> Callable[[HostileHandler], None]:
    """Answer the n-th request with the n-th behaviour (the last one repeats)."""
    count = 0
    lock = threading.Lock()

    def behave(handler: HostileHandler) -> None:
        nonlocal count
        with lock:
            index = min(count, len(behaviours) - 1)
            count += 1
        behaviours[index](handler)

    return behave


# -- the basics ------------------------------------------------------------------------------
@ALL_BACKENDS
def test_a_relative_url_reaches_the_api_with_the_token(make_env: Callable[..., Env]) -> None:
    env = make_env()
    with env.session() as s:
        r = s.get("/api/me")
    assert r.status_code == 200, r.text
    assert r.json()["client_id"] == "demo-client"
    assert env.provider.state.token_call_count == 0


@SQLITE
def test_the_token_goes_in_the_authorization_header_over_the_callers(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env()
    api = servers(ok)
    env.point_api_at(api.url + "/v2")
    with env.session() as s:
        r = s.post("/items?page=2", json={"a": 1}, headers={"authorization": "Bearer caller-chosen"})
    assert r.status_code == 200
    [seen] = api.seen
    assert seen.path == "/v2/items?page=2"
    assert seen.headers["Authorization"] == f"Bearer {env.conn['access_token']}"
    assert seen.body == b'{"a": 1}'


@SQLITE
def test_an_api_that_wants_its_own_token_header_gets_it(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    # Shopify's Admin API takes the token in X-Shopify-Access-Token, not Authorization.
    env = make_env()
    api = servers(ok)
    env.point_api_at(api.url, api_token_header="X-Shopify-Access-Token")
    with env.session() as s:
        assert s.get("/admin/shop.json").status_code == 200
    [seen] = api.seen
    assert seen.headers["X-Shopify-Access-Token"] == env.conn["access_token"]
    assert "Authorization" not in seen.headers


@SQLITE
def test_requests_in_the_block_need_no_app_context_and_a_refresh_gets_one(
    make_env: Callable[..., Env],
) -> None:
    env = make_env()
    env.revoke_access_token()
    apps: list[str] = []

    def on_refreshed(sender: Flask, **_: Any) -> None:
        apps.append(current_app.name)  # a receiver may rely on the app context

    with env.session() as s, connection_refreshed.connected_to(on_refreshed, sender=env.app):
        r = s.get("/api/me")
    assert r.status_code == 200
    assert apps == [env.app.name]


# -- 401: refresh once, retry once ---------------------------------------------------------------
@SQLITE
def test_a_revoked_token_is_refreshed_once_and_the_request_retried(make_env: Callable[..., Env]) -> None:
    env = make_env()
    old = env.revoke_access_token()
    with env.session() as s:
        r = s.get("/api/me")
    assert r.status_code == 200, r.text
    assert env.provider.state.refresh_call_count == 1
    assert env.access_token() != old


@SQLITE
def test_an_expired_token_is_refreshed_before_sending(make_env: Callable[..., Env]) -> None:
    env = make_env()
    s = env.session()  # opened with the token that is about to expire
    with time_machine.travel(utcnow() + timedelta(hours=2), tick=True), s:
        r = s.get("/api/me")
    assert r.status_code == 200, r.text
    assert env.provider.state.refresh_call_count == 1
    assert env.access_token() != env.conn["access_token"]


@ALL_BACKENDS
@pytest.mark.parametrize("sharing", ["one session per thread", "one session for all threads"])
def test_fifty_threads_with_a_stale_token_cause_one_refresh(
    make_env: Callable[..., Env], sharing: str
) -> None:
    env = make_env()
    env.revoke_access_token()
    count = 50
    shared = env.session() if sharing == "one session for all threads" else None
    barrier = threading.Barrier(count)
    statuses: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            s = shared or env.session()  # opened before anyone refreshed: all hold the revoked token
            barrier.wait(30)
            status = s.get("/api/me").status_code
            with lock:
                statuses.append(status)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert statuses == [200] * count
    assert env.provider.state.refresh_call_count == 1


@SQLITE
def test_a_second_401_is_returned_as_is(make_env: Callable[..., Env], servers: Servers) -> None:
    env = make_env()
    api = servers(lambda h: h.answer(401, b'{"error": "nope"}'))
    env.point_api_at(api.url)
    with env.session() as s:
        r = s.get("/x")
    assert r.status_code == 401
    assert env.provider.state.refresh_call_count == 1
    first, second = (seen.headers["Authorization"] for seen in api.seen)
    assert first == f"Bearer {env.conn['access_token']}"
    assert second == f"Bearer {env.access_token()}" != first


@SQLITE
def test_a_streamed_body_is_not_retried_after_a_401(make_env: Callable[..., Env], servers: Servers) -> None:
    env = make_env()
    api = servers(lambda h: h.answer(401))
    env.point_api_at(api.url)
    with env.session() as s:
        r = s.post("/upload", data=(chunk for chunk in [b"a", b"b"]))
    assert r.status_code == 401
    assert len(api.seen) == 1
    assert env.provider.state.refresh_call_count == 0


@SQLITE
def test_a_refused_refresh_after_a_401_says_to_reconnect(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.revoke_access_token()
    env.provider.state.revoke_refresh_token(env.conn["refresh_token"])
    with env.session() as s, pytest.raises(ReauthorizationRequired):
        s.get("/api/me")


# -- where the credentials may go -----------------------------------------------------------------
@SQLITE
@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/x?api_key=SEKRIT",
        "http://LocalHost.:{port}/x?api_key=SEKRIT",
        "http://127.0.0.1:{port}@localhost:{port}/x?api_key=SEKRIT",
        "http://127.0.0.2:{port}/x?api_key=SEKRIT",
    ],
)
def test_another_host_is_refused_and_sent_nothing(
    make_env: Callable[..., Env], servers: Servers, url: str
) -> None:
    env = make_env()  # api_base_url http://127.0.0.1:<provider port>
    other = servers(ok)
    target = url.format(port=other.port)
    with env.session() as s:
        with pytest.raises(ForbiddenDestination) as caught:
            s.get(target)
        with pytest.raises(ForbiddenDestination):
            s.send(requests.Request("GET", target).prepare())  # built by hand: checked too
    assert other.seen == []
    message = str(caught.value)
    assert caught.value.host in message
    assert "allowed_domains" in message
    assert "SEKRIT" not in message and "/x" not in message
    assert env.conn["access_token"] not in message
    assert env.provider.state.token_call_count == 0


@SQLITE
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "localhost:80/x", "mailto:a@b.c"])
def test_urls_that_are_not_http_are_refused(make_env: Callable[..., Env], url: str) -> None:
    env = make_env()
    with env.session() as s, pytest.raises(ForbiddenDestination):
        s.get(url)


@SQLITE
def test_allowed_domains_admit_another_host(make_env: Callable[..., Env], servers: Servers) -> None:
    env = make_env(allowed_domains=["localhost"])
    other = servers(ok)
    with env.session() as s:
        assert s.get(f"http://localhost:{other.port}/v1/a").status_code == 200
        assert s.get(f"http://LOCALHOST:{other.port}/v1/b").status_code == 200
    assert [seen.path for seen in other.seen] == ["/v1/a", "/v1/b"]
    assert {seen.headers["Authorization"] for seen in other.seen} == {f"Bearer {env.conn['access_token']}"}


@SQLITE
def test_the_port_is_not_part_of_the_host_check(make_env: Callable[..., Env], servers: Servers) -> None:
    """Like ``allowed_domain`` of the other connection types: a host name, any port."""
    env = make_env()
    same_host = servers(ok)  # 127.0.0.1, another port than the provider's
    with env.session() as s:
        assert s.get(f"{same_host.url}/x").status_code == 200
    assert len(same_host.seen) == 1


@SQLITE
def test_plain_http_is_refused_unless_insecure_http_is_allowed(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env()
    api = servers(ok)
    with env.app.app_context():
        st = env.app.extensions["zis_connections"]
        record = st.lifecycle.find("acme", name="main")
        client = st.storage.get_client("acme", uuid=record.oauth_client_uuid)
        assert client is not None
        client = client.replace(quirks=ProviderQuirks(api_base_url=api.url))
        with (
            ConnectionSession(env.app, st.lifecycle, record, client, allow_insecure_http=False) as s,
            pytest.raises(ForbiddenDestination, match="over plain http"),
        ):
            s.get("/x")
        metadata_client = client.replace(quirks=ProviderQuirks(api_base_url="{{metadata.instance_url}}"))
        with pytest.raises(InvalidValue, match="must use https") as caught:
            ConnectionSession(
                env.app,
                st.lifecycle,
                record.replace(metadata={"instance_url": api.url}),
                metadata_client,
                allow_insecure_http=False,
            )
        assert caught.value.field == "metadata.instance_url"
    assert api.seen == []


@SQLITE
def test_a_redirect_is_refused_and_its_target_sees_nothing(
    make_env: Callable[..., Env], servers: Servers
) -> None:
    env = make_env(allowed_domains=["localhost"])
    elsewhere = servers(ok)
    for status in (302, 307):
        api = servers(lambda h, status=status: h.redirect(status, f"http://localhost:{elsewhere.port}/grab"))
        env.point_api_at(api.url)
        with env.session() as s, pytest.raises(RedirectRefused):
            s.get("/start")
        assert len(api.seen) == 1
    assert elsewhere.seen == []


# -- where relative URLs go ------------------------------------------------------------------------
@SQLITE
def test_a_relative_url_without_api_base_url_says_to_set_it(make_env: Callable[..., Env]) -> None:
    env = make_env(api_base_url=None)
    with env.session() as s:
        with pytest.raises(InvalidValue, match="Set api_base_url") as caught:
            s.get("/api/me")
        assert caught.value.field == "api_base_url"
        with pytest.raises(ForbiddenDestination, match="neither api_base_url nor allowed_domains"):
            s.get(env.provider.url + "/api/me")


@SQLITE
@pytest.mark.parametrize("path", ["/a/../../oauth/token", "../x", "/a/%2e%2e/b", "/./x", "//localhost/x"])
def test_a_relative_url_stays_under_the_base(
    make_env: Callable[..., Env], servers: Servers, path: str
) -> None:
    env = make_env()
    api = servers(ok)
    env.point_api_at(api.url + "/v1/")
    with env.session() as s, pytest.raises(InvalidRequest):
        s.get(path)
    assert api.seen == []


@SQLITE
@pytest.mark.parametrize(
    ("base", "path"), [("{{metadata.instance_url}}", "/api/me"), ("{{metadata.instance_url}}/api", "/me")]
)
def test_api_base_url_from_the_connections_metadata(
    make_env: Callable[..., Env], base: str, path: str
) -> None:
    env = make_env(api_base_url=base)
    with env.app.app_context():
        with pytest.raises(InvalidValue, match="update_connection_metadata") as caught:
            env.zis.session("acme", "main")
        assert caught.value.field == "metadata.instance_url"
        env.zis.update_connection_metadata("acme", "main", {"instance_url": env.provider.url + "/"})
    with env.session() as s:
        r = s.get(path)
    assert r.status_code == 200, r.text
    assert r.json()["client_id"] == "demo-client"


@SQLITE
@pytest.mark.parametrize(
    "value", ["javascript:alert(1)", "ftp://files.example/", "no url at all", "https://user:pw@x.test", 42]
)
def test_a_metadata_base_that_is_not_a_web_url_is_refused(make_env: Callable[..., Env], value: Any) -> None:
    env = make_env(api_base_url="{{metadata.instance_url}}")
    with env.app.app_context():
        env.zis.update_connection_metadata("acme", "main", {"instance_url": value})
        with pytest.raises(InvalidValue) as caught:
            env.zis.session("acme", "main")
    assert caught.value.field == "metadata.instance_url"


# -- 429: wait a little, or hand it back --------------------------------------------------------------
def _in(seconds: int) -> str:
    return format_datetime(utcnow() + timedelta(seconds=seconds), usegmt=True)


@SQLITE
@pytest.mark.parametrize("retry_after", [lambda: "1", lambda: _in(2)], ids=["seconds", "http-date"])
def test_a_short_retry_after_is_waited_out_and_retried_once(
    make_env: Callable[..., Env], servers: Servers, retry_after: Callable[[], str]
) -> None:
    env = make_env()
    api = servers(answers(lambda h: h.answer(429, headers={"Retry-After": retry_after()}), ok))
    env.point_api_at(api.url)
    started = time.monotonic()
    with env.session() as s:
        r = s.get("/x")
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert elapsed >= 1.0
    assert len(api.seen) == 2
    assert {seen.headers["Authorization"] for seen in api.seen} == {f"Bearer {env.conn['access_token']}"}


@SQLITE
@pytest.mark.parametrize(
    ("headers", "session_kw"),
    [
        ({"Retry-After": "3600"}, {}),
        ({}, {}),
        ({"Retry-After": "soon"}, {}),
        ({"Retry-After": "1"}, {"max_retry_after": 0.5}),
    ],
    ids=["too-long", "missing", "unreadable", "over-the-callers-bound"],
)
def test_a_429_that_asks_too_much_is_returned_at_once(
    make_env: Callable[..., Env], servers: Servers, headers: dict[str, str], session_kw: dict[str, Any]
) -> None:
    env = make_env()
    api = servers(answers(lambda h: h.answer(429, headers=headers), ok))
    env.point_api_at(api.url)
    started = time.monotonic()
    with env.session(**session_kw) as s:
        r = s.get("/x")
    assert r.status_code == 429
    assert time.monotonic() - started < 1.0
    assert len(api.seen) == 1


def test_retry_after_is_read_in_both_forms() -> None:
    now = utcnow()
    assert retry_after_seconds("0") == 0
    assert retry_after_seconds(" 120 ") == 120
    assert retry_after_seconds(
        format_datetime(now + timedelta(seconds=90), usegmt=True), now
    ) == pytest.approx(90, abs=1)
    assert retry_after_seconds(format_datetime(now - timedelta(days=1), usegmt=True), now) == 0
    for unreadable in (None, "", "-5", "1.5", "tomorrow", "Wed, 21 Oct 2015 07:28:00"):
        assert retry_after_seconds(unreadable, now) is None


# -- secrets stay out of logs and messages --------------------------------------------------------------
@SQLITE
def test_no_token_in_logs_or_messages(
    make_env: Callable[..., Env], servers: Servers, all_logs: pytest.LogCaptureFixture
) -> None:
    env = make_env()
    env.revoke_access_token()
    other = servers(ok)
    messages: list[str] = []
    with env.session() as s:
        assert s.get("/api/me?q=SEKRIT").status_code == 200
        for bad in (f"http://localhost:{other.port}/x?q=SEKRIT", "../x?q=SEKRIT"):
            with pytest.raises(InvalidRequest) as caught:
                s.get(bad)
            messages.append(str(caught.value))
    with env.app.app_context():
        conn = env.zis.get_connection("acme", "main", refresh_if_due=False)
    secrets = [
        env.conn["access_token"],
        env.conn["refresh_token"],
        conn.access_token,
        str(conn.refresh_token),
    ]
    ours = [r.getMessage() for r in all_logs.records if r.name.startswith("flask_zis_connections")]
    assert any("answered 401" in line for line in ours)  # the retry is logged ...
    for text in [all_logs.text, *messages]:
        for secret in secrets:
            assert secret not in text
    for text in [*ours, *messages]:
        assert "SEKRIT" not in text  # ... without the URL's query (urllib3's DEBUG lines have it)
