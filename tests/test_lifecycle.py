"""The token lifecycle: show, refresh, get_token, one refresh at a time, failures.

Everything runs against the real in-process provider (Authlib, refresh-token rotation:
a used refresh token dies) on every backend.  Tokens become due by moving the clock
with ``time-machine`` - never by sleeping.  The package reads the time through
``domain.utcnow()``; wait loops use ``time.monotonic``, which time-machine leaves alone.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import time_machine
from flask import Flask
from werkzeug.test import TestResponse

from flask_zis_connections import (
    Connection,
    ConnectionNotFound,
    ProviderError,
    ReauthorizationRequired,
    ZISConnections,
    ZISError,
    connection_deleted,
    connection_refresh_failed,
    connection_refreshed,
    get_token,
)
from flask_zis_connections.domain import ConnectionRecord, utcnow
from flask_zis_connections.storage import SQLAlchemyStorage, Storage
from flask_zis_connections.storage.sqlalchemy.schema import connections

from .flow_driver import auth_header, connect, register, start, zis_of
from .helpers import JOIN_TIMEOUT, PREFIX, assert_envelope, run_threads
from .live_provider import DEFAULT_REDIRECT_URI, LiveProvider

SERVICE_FIELDS = {
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
    # Beyond the service's fields: what the provider told (or the host set) for later calls.
    "metadata",
    "refresh_token_expiry",
}
EXPIRY_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
#: Generous bound for joining worker threads; a hang fails the test instead of the run.


# -- fixtures and helpers ------------------------------------------------------------------
@dataclass
class Env:
    """A host app with one client registered at the live provider, and its connections."""

    app: Flask
    provider: LiveProvider
    headers: dict[str, str]
    conn: dict[str, Any] = field(default_factory=dict)

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    def record(self, name: str = "main") -> ConnectionRecord:
        rec = self.storage.get_connection("acme", name=name)
        assert rec is not None, f"connection {name!r} is gone"
        return rec

    def current(self, name: str = "main") -> Connection:
        """The stored connection, decrypted, without any refresh."""
        return self.app.extensions["zis_connections"].lifecycle.decrypt(self.record(name))  # type: ignore[no-any-return]

    def connect(self, name: str = "main", **body: Any) -> dict[str, Any]:
        return connect(self.app, self.provider, self.headers, name=name, **body)

    def get(self, path: str, **query: str) -> TestResponse:
        return self.app.test_client().get(PREFIX + path, query_string=query, headers=self.headers)

    def delete(self, path: str, **query: str) -> TestResponse:
        return self.app.test_client().delete(PREFIX + path, query_string=query, headers=self.headers)

    def token(self, name: str = "main") -> str:
        with self.app.app_context():
            return get_token("acme", name)

    def raw_row(self, uuid: str) -> Any:
        """The stored row exactly as the database holds it (the record for memory)."""
        storage = self.storage
        if isinstance(storage, SQLAlchemyStorage):
            with storage.engine.connect() as db:
                return tuple(db.execute(sa.select(connections).where(connections.c.uuid == uuid)).one())
        return storage.get_connection("acme", uuid=uuid)


@pytest.fixture
def make_env(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> Callable[..., Env]:
    def build(
        *,
        config: dict[str, Any] | None = None,
        provider_config: dict[str, Any] | None = None,
        client: dict[str, Any] | None = None,
        connect_main: bool = True,
    ) -> Env:
        provider = provider_factory(**{"SLOW_SLEEP": 0.3, **(provider_config or {})})
        app = make_app(**(config or {}))
        register(app, provider, **(client or {}))
        env = Env(app, provider, auth_header(app))
        if connect_main:
            env.conn = env.connect("main", allow_offline_access=True)
        return env

    return build


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


def clock_at(moment: datetime, *, tick: bool = True) -> time_machine.travel:
    """Move every thread's clock (the package's and the provider's) to ``moment``."""
    return time_machine.travel(moment, tick=tick)


def expiry_of(env: Env, name: str = "main") -> datetime:
    expiry = env.record(name).token_expiry
    assert expiry is not None
    return expiry


def dead_port_url() -> str:
    """A loopback URL nothing listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth/revoke"


def refresh_at_provider(provider: LiveProvider, refresh_token: str) -> requests.Response:
    """Use a refresh token at the provider directly, as an attacker replaying it would."""
    with requests.Session() as http:
        return http.post(
            provider.token_url,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=("demo-client", "demo-secret"),
            timeout=10,
        )


# -- show ------------------------------------------------------------------------------------
def test_show_returns_the_service_json_without_refreshing_a_fresh_token(env: Env) -> None:
    calls = env.provider.state.token_call_count
    by_name = env.get("/connections/acme", name="main")
    assert by_name.status_code == 200, by_name.get_json()
    assert by_name.headers["Cache-Control"] == "no-store"
    body = by_name.get_json()
    assert set(body) == SERVICE_FIELDS
    assert body["access_token"] == env.conn["access_token"]
    assert body["refresh_token"] == env.conn["refresh_token"]
    assert body["integration"] == "acme" and body["name"] == "main"
    assert body["token_type"] == "bearer" and body["permission_scope"] == "read write"
    assert EXPIRY_RE.fullmatch(body["token_expiry"]), body["token_expiry"]
    assert body["token_expiry"] == expiry_of(env).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert '"access_token"' in body["oauth_access_token_response_body"]
    by_uuid = env.get("/connections/acme", uuid=body["uuid"])
    assert by_uuid.get_json() == body
    both = env.get("/connections/acme", uuid=body["uuid"], name="main")
    assert both.status_code == 200 and both.get_json() == body
    assert env.provider.state.token_call_count == calls


def test_show_lookup_errors(env: Env) -> None:
    other = env.connect("other")
    assert_envelope(env.get("/connections/acme"), 400, "1301", "name or uuid")
    assert_envelope(
        env.get("/connections/acme", name="main", uuid=other["uuid"]), 400, "1301", "different connections"
    )
    assert_envelope(env.get("/connections/acme", name="nope"), 404, "1302")
    assert_envelope(env.get("/connections/acme", uuid="0b6f3c4e-8a52-4c55-9d2b-7f7f5c0d7e11"), 404, "1302")
    assert_envelope(env.get("/connections/acme", uuid="not-a-uuid"), 422, "1303", "uuid")
    assert_envelope(env.get("/connections/refresh/acme"), 400, "1301")
    assert_envelope(env.get("/connections/refresh/acme", name="nope"), 404, "1302")
    # Another integration's token may not look: 403; no token: 401.
    foreign = auth_header(env.app, "other_integration")
    resp = env.app.test_client().get(f"{PREFIX}/connections/acme?name=main", headers=foreign)
    assert_envelope(resp, 403, "1200")
    assert_envelope(env.app.test_client().get(f"{PREFIX}/connections/acme?name=main"), 401, "1200")


def test_show_refreshes_first_when_the_token_is_within_the_leeway(env: Env) -> None:
    old_expiry = expiry_of(env)
    with clock_at(old_expiry - timedelta(seconds=30)):  # leeway is 60 s; not yet expired
        resp = env.get("/connections/acme", name="main")
        now = utcnow()
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert env.provider.state.refresh_call_count == 1
    assert body["access_token"] != env.conn["access_token"]
    assert body["refresh_token"] != env.conn["refresh_token"]
    new_expiry = datetime.strptime(body["token_expiry"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert new_expiry > now + timedelta(seconds=3500)
    assert env.record().access_token_enc != env.conn["access_token"]
    assert env.token() == body["access_token"]


# -- refresh endpoint --------------------------------------------------------------------------
def test_refresh_endpoint_refreshes_now_and_stores_the_rotated_refresh_token(env: Env) -> None:
    old_refresh = env.conn["refresh_token"]
    version = env.record().version
    resp = env.get("/connections/refresh/acme", name="main")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == SERVICE_FIELDS and body["uuid"] == env.conn["uuid"]
    assert env.provider.state.refresh_call_count == 1
    assert env.provider.state.token_calls[-1]["refresh_token"] == old_refresh
    assert body["access_token"] != env.conn["access_token"]
    assert body["refresh_token"] not in (None, old_refresh)
    assert not env.provider.state.is_refresh_token_active(old_refresh)
    assert env.provider.state.is_refresh_token_active(body["refresh_token"])
    assert env.provider.state.is_access_token_active(body["access_token"])
    with env.app.app_context():
        stored = env.zis.get_connection("acme", name="main")
    assert stored.access_token == body["access_token"]
    assert stored.refresh_token == body["refresh_token"]
    assert stored.version == version + 1
    by_uuid = env.get("/connections/refresh/acme", uuid=body["uuid"])
    assert by_uuid.status_code == 200 and env.provider.state.refresh_call_count == 2


def test_refresh_endpoint_fetches_a_new_client_credentials_token(env: Env) -> None:
    register(env.app, env.provider, name="svc", client_id="svc-client", grant_type="client_credentials")
    browser = env.app.test_client()
    started = start(
        browser, env.headers, name="robot", oauth_client_name="svc", grant_type="client_credentials"
    )
    assert started.status_code == 200, started.get_json()
    location = started.get_json()["redirect_url"]
    created = browser.get(location.replace("http://localhost", ""), headers=env.headers).get_json()
    assert created["refresh_token"] is None
    assert env.provider.state.client_credentials_call_count == 1
    resp = env.get("/connections/refresh/acme", name="robot")
    assert resp.status_code == 200, resp.get_json()
    assert env.provider.state.client_credentials_call_count == 2
    assert env.provider.state.refresh_call_count == 0
    assert resp.get_json()["access_token"] != created["access_token"]
    assert env.provider.state.is_access_token_active(resp.get_json()["access_token"])


def test_a_connection_without_refresh_token_cannot_be_refreshed(make_env: Callable[..., Env]) -> None:
    env = make_env(connect_main=False)
    env.provider.state.inject_token_fault("omit_refresh_token")  # taken by the code exchange
    conn = env.connect("main")
    assert conn["refresh_token"] is None
    calls = env.provider.state.token_call_count
    err = assert_envelope(env.get("/connections/refresh/acme", name="main"), 422, "1303")
    assert "no refresh token" in err["detail"] and "new OAuth flow" in err["detail"]
    with clock_at(expiry_of(env) + timedelta(seconds=5)), pytest.raises(ReauthorizationRequired) as info:
        env.token()
    assert "no refresh token" in info.value.message
    assert env.provider.state.token_call_count == calls
    assert not env.record().needs_reauth  # nothing was refused; a new flow fixes it


# -- Python API ----------------------------------------------------------------------------------
def test_get_token_on_a_fresh_token_reads_only(env: Env) -> None:
    before = env.raw_row(env.conn["uuid"])
    calls = env.provider.state.token_call_count
    with clock_at(expiry_of(env) - timedelta(seconds=61)):  # just outside the leeway
        for _ in range(5):
            assert env.token() == env.conn["access_token"]
    assert env.provider.state.token_call_count == calls
    assert env.raw_row(env.conn["uuid"]) == before


def test_python_api_get_refresh_delete(env: Env) -> None:
    uuid = env.conn["uuid"]
    with env.app.app_context():
        zis = env.zis
        conn = zis.get_connection("acme", name="main")
        assert conn.uuid == uuid and conn.access_token == env.conn["access_token"]
        assert zis.get_connection("acme", uuid=uuid) == conn
        assert zis.get_token("acme", "main") == conn.access_token
        refreshed = zis.refresh("acme", name="main")
        assert refreshed.access_token != conn.access_token
        assert refreshed.refresh_token != conn.refresh_token
        assert refreshed.version == conn.version + 1
        assert get_token("acme", "main") == refreshed.access_token
        assert zis.refresh("acme", uuid=uuid).version == conn.version + 2
        with pytest.raises(ConnectionNotFound, match="Start an OAuth flow"):
            zis.get_connection("acme", name="nope")
        with pytest.raises(ConnectionNotFound):
            get_token("acme", "nope")
        with pytest.raises(ConnectionNotFound):
            zis.get_connection("other", name="main")  # names are per integration
        with pytest.raises(ZISError, match="exactly one"):
            zis.get_connection("acme")
        with pytest.raises(ZISError, match="exactly one"):
            zis.refresh("acme", "main", uuid=uuid)
        assert zis.delete_connection("acme", name="main") is None  # no revocation_url
        with pytest.raises(ConnectionNotFound):
            zis.get_connection("acme", uuid=uuid)
        with pytest.raises(ConnectionNotFound):
            zis.delete_connection("acme", name="main")
        with pytest.raises(ConnectionNotFound):
            zis.refresh("acme", name="main")
    assert env.provider.state.refresh_call_count == 2


# -- one refresh at a time -------------------------------------------------------------------------
def test_fifty_threads_on_an_expired_token_make_one_refresh(env: Env) -> None:
    env.provider.state.inject_token_fault("slow")
    version = env.record().version

    def call(_: int) -> str:
        return env.token()

    with clock_at(expiry_of(env) + timedelta(seconds=5)):
        tokens, errors = run_threads(50, call)
    assert errors == []
    assert env.provider.state.refresh_call_count == 1
    assert len(set(tokens)) == 1
    assert tokens[0] != env.conn["access_token"]
    assert env.provider.state.is_access_token_active(tokens[0])
    assert env.record().version == version + 1
    assert env.token() == tokens[0]


def test_a_burst_of_forced_refreshes_makes_one_provider_call(env: Env) -> None:
    env.provider.state.inject_token_fault("slow")

    def call(_: int) -> str:
        with env.app.app_context():
            return env.zis.refresh("acme", name="main").access_token

    tokens, errors = run_threads(20, call)
    assert errors == []
    assert env.provider.state.refresh_call_count == 1
    assert len(set(tokens)) == 1 and tokens[0] != env.conn["access_token"]
    # A refresh asked for after that one finished is a new refresh.
    with env.app.app_context():
        assert env.zis.refresh("acme", name="main").access_token != tokens[0]
    assert env.provider.state.refresh_call_count == 2


def test_a_forced_refresh_uses_a_refresh_completed_after_it_arrived(env: Env) -> None:
    """The caller read the row, then lost the CPU; it takes the lease only after another
    refresh was stored and released.  That refresh is the one it asked for."""
    life = env.app.extensions["zis_connections"].lifecycle
    arrived = env.record()
    with env.app.app_context():
        other = env.zis.refresh("acme", name="main")
    assert life.ensure_fresh(arrived, force=True).version == other.version
    assert env.provider.state.refresh_call_count == 1
    # One that arrives after the stored refresh refreshes again.
    assert life.ensure_fresh(env.record(), force=True).version == other.version + 1
    assert env.provider.state.refresh_call_count == 2


def test_concurrent_refresh_endpoint_calls_share_one_refresh(env: Env) -> None:
    env.provider.state.inject_token_fault("slow")

    def call(_: int) -> dict[str, Any]:
        resp = env.get("/connections/refresh/acme", name="main")
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()  # type: ignore[no-any-return]

    bodies, errors = run_threads(8, call)
    assert errors == []
    assert env.provider.state.refresh_call_count == 1
    assert len({b["access_token"] for b in bodies}) == 1


def test_tokens_shorter_than_the_leeway_are_not_refreshed_on_every_call(
    make_env: Callable[..., Env],
) -> None:
    # The provider issues 30 s tokens; the leeway is 60 s.  Refreshing "when it expires
    # within the leeway" would refresh on every call, and every waiter of a refresh
    # would refresh again.
    env = make_env(provider_config={"ACCESS_TOKEN_EXPIRES_IN": 30})
    assert env.token() == env.conn["access_token"]
    assert env.provider.state.refresh_call_count == 0
    with clock_at(expiry_of(env) - timedelta(seconds=5)):
        env.provider.state.inject_token_fault("slow")
        tokens, errors = run_threads(10, lambda _: env.token())
        assert errors == [] and len(set(tokens)) == 1
        assert env.provider.state.refresh_call_count == 1
        assert env.token() == tokens[0]
        assert env.get("/connections/acme", name="main").get_json()["access_token"] == tokens[0]
    assert env.provider.state.refresh_call_count == 1


def test_a_crashed_refresher_blocks_others_only_until_its_lease_expires(
    make_env: Callable[..., Env],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(config={"ZIS_REFRESH_LEASE_TTL": 5})
    storage = env.storage
    key = f"refresh:{env.conn['uuid']}"
    refused = threading.Event()
    attempts: list[bool] = []
    real_acquire = storage.acquire_lease
    real_take = storage.take_lease_and_read

    def spy(*args: Any, **kwargs: Any) -> Any:
        got, state = real_take(*args, **kwargs)
        attempts.append(got)
        if attempts.count(False) >= 2:
            refused.set()
        return got, state

    monkeypatch.setattr(storage, "take_lease_and_read", spy)
    with clock_at(expiry_of(env) + timedelta(seconds=5)) as traveller:
        # A refresher took the lease and died: it will never release it.
        assert real_acquire(key, "dead-owner", 5, utcnow())
        result: list[str] = []
        waiter = threading.Thread(target=lambda: result.append(env.token()))
        waiter.start()
        assert refused.wait(JOIN_TIMEOUT), "the caller never tried the lease"
        assert waiter.is_alive() and env.provider.state.token_call_count == 1  # waiting, not refreshing
        assert storage.lease_holder(key, utcnow()) == "dead-owner"
        traveller.shift(timedelta(seconds=6))  # past the dead lease's TTL
        waiter.join(JOIN_TIMEOUT)
        assert not waiter.is_alive()
        assert env.provider.state.refresh_call_count == 1
        assert result and result[0] != env.conn["access_token"]
        assert storage.lease_holder(key, utcnow()) is None  # the new holder released it
    assert attempts[-1] is True


# -- rotation ------------------------------------------------------------------------------------
def test_rotation_old_refresh_tokens_are_dead_and_never_reused(env: Env) -> None:
    expected: list[str | None] = []  # the refresh token stored before each refresh
    with env.app.app_context():
        for _ in range(3):
            expected.append(env.current().refresh_token)
            env.zis.refresh("acme", name="main")
    expected.append(env.current().refresh_token)
    with clock_at(expiry_of(env) + timedelta(seconds=5)):
        env.token()  # the fourth refresh, through get_token
    current = env.current().refresh_token
    assert current is not None
    sent = [c["refresh_token"] for c in env.provider.state.token_calls if c["grant_type"] == "refresh_token"]
    assert sent == expected, "each refresh must send the then-current refresh token"
    assert len(set(sent)) == len(sent) == 4 and current not in sent
    for old in sent:
        assert not env.provider.state.is_refresh_token_active(old)
        replay = refresh_at_provider(env.provider, old)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert env.provider.state.is_refresh_token_active(current)


def test_a_refresh_response_without_refresh_token_keeps_the_old_one(env: Env) -> None:
    old_refresh = env.conn["refresh_token"]
    env.provider.state.inject_token_fault("omit_refresh_token")
    with env.app.app_context():
        conn = env.zis.refresh("acme", name="main")
    assert conn.access_token != env.conn["access_token"]
    assert conn.refresh_token == old_refresh
    assert env.provider.state.is_refresh_token_active(old_refresh)  # a non-rotating answer
    with env.app.app_context():
        again = env.zis.refresh("acme", name="main")  # the kept token still works ...
    assert again.refresh_token not in (None, old_refresh)  # ... and rotates normally
    assert env.provider.state.refresh_call_count == 2


# -- re-authorization ------------------------------------------------------------------------------
@pytest.mark.parametrize("refusal", ["invalid_grant", "invalid_client"])
def test_a_refused_refresh_marks_needs_reauth_without_retrying_until_a_new_flow(
    env: Env, refusal: str
) -> None:
    if refusal == "invalid_grant":
        env.provider.state.revoke_refresh_token(env.conn["refresh_token"])  # a real refusal
    else:
        env.provider.state.inject_token_fault("invalid_client")
    failed: list[dict[str, Any]] = []

    def on_failed(sender: Flask, **payload: Any) -> None:
        failed.append(payload)

    with (
        connection_refresh_failed.connected_to(on_failed, sender=env.app),
        clock_at(expiry_of(env) + timedelta(seconds=5)),
    ):
        with pytest.raises(ReauthorizationRequired, match="new OAuth flow") as info:
            env.token()
        assert info.value.reason == refusal
        assert env.record().needs_reauth
        assert env.provider.state.refresh_call_count == 1
        # No retry loop: every later attempt answers at once, without the provider.
        with pytest.raises(ReauthorizationRequired):
            env.token()
        err = assert_envelope(env.get("/connections/acme", name="main"), 422, "1303")
        assert "re-authorization" in err["detail"]
        assert_envelope(env.get("/connections/refresh/acme", name="main"), 422, "1303")
        with env.app.app_context(), pytest.raises(ReauthorizationRequired):
            env.zis.refresh("acme", name="main")
        assert env.provider.state.refresh_call_count == 1
        assert [f["reason"] for f in failed] == [refusal]
        # A person connects again: same uuid, fresh tokens, usable at once.
        again = env.connect("main", allow_offline_access=True)
        assert again["uuid"] == env.conn["uuid"]
        assert not env.record().needs_reauth
        assert env.token() == again["access_token"]
        assert env.provider.state.refresh_call_count == 1
        with env.app.app_context():
            assert env.zis.refresh("acme", name="main").refresh_token != again["refresh_token"]


def test_concurrent_callers_of_a_refused_connection_make_one_provider_call(env: Env) -> None:
    env.provider.state.revoke_refresh_token(env.conn["refresh_token"])
    with clock_at(expiry_of(env) + timedelta(seconds=5)):
        _, errors = run_threads(20, lambda _: env.token())
    assert len(errors) == 20 and all(isinstance(e, ReauthorizationRequired) for e in errors)
    assert env.provider.state.refresh_call_count == 1


def test_a_refusal_after_a_concurrent_reauthorization_uses_the_new_tokens(env: Env) -> None:
    """invalid_grant, but the row changed meanwhile (a person re-connected): not needs_reauth."""
    env.provider.state.revoke_refresh_token(env.conn["refresh_token"])
    storage = env.storage
    fresh: list[ConnectionRecord] = []

    def reconnect_meanwhile(sender: Flask, **payload: Any) -> None:
        # Runs between the provider's refusal and the needs_reauth write.
        rec = storage.get_connection("acme", uuid=payload["uuid"])
        assert rec is not None
        written = storage.upsert_connection(
            rec.replace(token_expiry=utcnow() + timedelta(hours=1), updated_at=utcnow())
        )
        fresh.append(written)

    with (
        connection_refresh_failed.connected_to(reconnect_meanwhile, sender=env.app),
        clock_at(expiry_of(env) + timedelta(seconds=5)),
    ):
        assert env.token() == env.conn["access_token"]
    assert fresh and not env.record().needs_reauth
    assert env.record().version == fresh[0].version


# -- provider failures -------------------------------------------------------------------------------
FAULTS = ["timeout", "http500", "html200", "no_access_token"]


@pytest.mark.parametrize("fault", FAULTS)
def test_provider_failures_leave_the_row_unchanged_and_release_the_lease(
    make_env: Callable[..., Env],
    fault: str,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    env = make_env(config={"ZIS_HTTP_TIMEOUT": 1}, provider_config={"FAULT_SLEEP": 2})
    uuid = env.conn["uuid"]
    before_row, before_rec = env.raw_row(uuid), env.record()
    env.provider.state.inject_token_fault(fault)
    with clock_at(expiry_of(env) + timedelta(seconds=5)) as clock:
        with pytest.raises(ProviderError) as info:
            env.token()
        assert info.value.retry_after == 1  # the connection now backs off
        assert env.raw_row(uuid) == before_row
        assert env.record() == before_rec
        assert env.storage.lease_holder(f"refresh:{uuid}", utcnow()) is None
        # During the back-off callers fail fast; the provider is not called again.
        calls = env.provider.state.refresh_call_count
        fast = env.get("/connections/acme", name="main")
        assert_envelope(fast, 502, "1305", "Try again")
        assert fast.headers["Retry-After"] == "1"
        assert env.provider.state.refresh_call_count == calls
        clock.shift(timedelta(seconds=2))
        if fault != "timeout":  # the same through HTTP (one slow timeout is enough)
            env.provider.state.inject_token_fault(fault)
            err = assert_envelope(env.get("/connections/acme", name="main"), 502, "1305")
            assert err["detail"] == info.value.message
            assert env.raw_row(uuid) == before_row
            clock.shift(timedelta(seconds=3))
        # The fault is gone and the back-off over: the next call refreshes.
        token = env.token()
    assert token != env.conn["access_token"]
    assert env.record().version == before_rec.version + 1
    assert env.provider.state.refresh_call_count == (2 if fault == "timeout" else 3)
    for secret in (env.conn["access_token"], env.conn["refresh_token"], token):
        assert secret not in info.value.message
        assert secret not in all_logs.text


# -- token proxy (backend-independent: one backend is enough) ----------------------------------------
@pytest.fixture
def proxy(make_app: Callable[..., Flask], provider: LiveProvider) -> Iterator[tuple[Flask, LiveProvider]]:
    provider.register_client("host-client", "host-secret", token_endpoint_auth_method="client_secret_post")
    yield make_app(ZIS_HOST_TOKEN_URL=provider.token_url), provider


def proxy_post(app: Flask, body: Any, **kw: Any) -> TestResponse:
    return app.test_client().post(f"{PREFIX}/connections/oauth/tokens/acme", json=body, **kw)


@pytest.mark.parametrize("backend", ["memory"])
def test_token_proxy_forwards_client_credentials(proxy: tuple[Flask, LiveProvider]) -> None:
    app, provider = proxy
    resp = proxy_post(
        app,
        {
            "client_id": "host-client",
            "client_secret": "host-secret",
            "grant_type": "client_credentials",
            "scope": "read",
        },
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert body["scope"] == "read" and body["token_type"].lower() == "bearer"
    assert provider.state.is_access_token_active(body["access_token"])
    call = provider.state.token_calls[-1]
    assert call["grant_type"] == "client_credentials" and call["client_id"] == "host-client"


@pytest.mark.parametrize("backend", ["memory"])
def test_token_proxy_forwards_an_authorization_code(proxy: tuple[Flask, LiveProvider]) -> None:
    app, provider = proxy
    location = provider.approve(
        f"{provider.auth_url}?response_type=code&client_id=host-client&scope=read+write"
        f"&redirect_uri={DEFAULT_REDIRECT_URI}&state=s1"
    )
    code = re.search(r"[?&]code=([^&]+)", location)
    assert code is not None, location
    body = {
        "client_id": "host-client",
        "client_secret": "host-secret",
        "code": code.group(1),
        "grant_type": "authorization_code",
        "redirect_uri": DEFAULT_REDIRECT_URI,
    }
    resp = proxy_post(app, body)
    assert resp.status_code == 200, resp.get_json()
    assert provider.state.is_access_token_active(resp.get_json()["access_token"])
    assert provider.state.code_exchange_count == 1
    # The code is single use upstream: a replay is the upstream's invalid_grant, as a 400.
    assert_envelope(proxy_post(app, body), 400, "1301", "invalid_grant")


@pytest.mark.parametrize("backend", ["memory"])
def test_token_proxy_errors(proxy: tuple[Flask, LiveProvider], make_app: Callable[..., Flask]) -> None:
    app, provider = proxy
    good = {"client_id": "host-client", "client_secret": "host-secret", "grant_type": "client_credentials"}
    err = assert_envelope(proxy_post(app, {**good, "client_secret": "wrong"}), 401, "1200")
    assert "wrong" not in err["detail"]
    assert_envelope(proxy_post(app, {**good, "grant_type": "password"}), 400, "1301")
    assert_envelope(
        proxy_post(app, {k: v for k, v in good.items() if k != "grant_type"}), 422, "1303", "grant_type"
    )
    assert_envelope(proxy_post(app, {**good, "extra": "x"}), 422, "1303", "extra")
    assert_envelope(proxy_post(app, {**good, "scope": 5}), 422, "1303", "scope")
    assert_envelope(proxy_post(app, ["not", "an", "object"]), 400, "1301")
    resp = app.test_client().post(f"{PREFIX}/connections/oauth/tokens/acme", data="client_id=x")
    assert_envelope(resp, 415, "1301")
    resp = app.test_client().post(
        f"{PREFIX}/connections/oauth/tokens/acme", data="{nope", content_type="application/json"
    )
    assert_envelope(resp, 400, "1301")
    assert_envelope(app.test_client().post(f"{PREFIX}/connections/oauth/tokens/BAD!", json=good), 422, "1303")
    for fault in ("http500", "html200"):
        provider.state.inject_token_fault(fault)
        err = assert_envelope(proxy_post(app, good), 502, "1305")
        assert "oops" not in err["detail"] and "Internal Server Error" not in err["detail"]
    assert proxy_post(app, good).status_code == 200
    unset = make_app()
    assert_envelope(proxy_post(unset, good), 503, "1308", "ZIS_HOST_TOKEN_URL")
    dead = make_app(ZIS_HOST_TOKEN_URL=dead_port_url())
    assert_envelope(proxy_post(dead, good), 502, "1305", "could not be reached")


# -- list and delete ---------------------------------------------------------------------------------
def test_list_connections_paginates_with_a_cursor_and_shows_no_tokens(env: Env) -> None:
    made = [env.conn] + [env.connect(f"conn-{i}") for i in range(6)]
    secrets_ = [c[k] for c in made for k in ("access_token", "refresh_token")]
    seen: list[str] = []
    query: dict[str, str] = {"page[size]": "3"}
    pages = 0
    while True:
        resp = env.get("/integrations/acme/connections/all", **query)
        assert resp.status_code == 200, resp.get_json()
        text = resp.get_data(as_text=True)
        assert not any(s in text for s in secrets_)
        body = resp.get_json()
        pages += 1
        for item in body["oauth"]:
            assert not {"access_token", "refresh_token", "oauth_access_token_response_body"} & set(item)
            assert EXPIRY_RE.fullmatch(item["token_expiry"])
        seen += [item["uuid"] for item in body["oauth"]]
        if not body["meta"]["has_more"]:
            assert body["meta"]["after_cursor"] is None
            assert len(body["oauth"]) == 1
            break
        assert len(body["oauth"]) == 3
        assert body["meta"]["after_cursor"]
        query = {"page[size]": "3", "page[after]": body["meta"]["after_cursor"]}
    assert pages == 3
    assert seen == [c["uuid"] for c in made]
    assert len(env.get("/integrations/acme/connections/all").get_json()["oauth"]) == 7
    for bad in ("0", "101", "x"):
        assert_envelope(
            env.get("/integrations/acme/connections/all", **{"page[size]": bad}), 422, "1303", "page[size]"
        )
    assert_envelope(
        env.get("/integrations/acme/connections/all", **{"page[after]": "garbage"}),
        422,
        "1303",
        "page[after]",
    )
    other = env.app.test_client().get(
        f"{PREFIX}/integrations/other/connections/all", headers=auth_header(env.app, "other")
    )
    assert other.status_code == 200 and other.get_json()["oauth"] == []


def test_delete_revokes_at_the_provider_then_forgets(make_env: Callable[..., Env]) -> None:
    env = make_env(connect_main=False, client={"revocation_url": None})
    with env.app.app_context():
        client = env.zis.get_oauth_client("acme", name="acme")
        env.zis.update_oauth_client("acme", client.uuid, revocation_url=env.provider.revocation_url)
    conn = env.connect("main", allow_offline_access=True)
    deleted: list[dict[str, Any]] = []

    def on_deleted(sender: Flask, **payload: Any) -> None:
        deleted.append(payload)

    with connection_deleted.connected_to(on_deleted, sender=env.app):
        resp = env.delete("/connections/acme", name="main")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"deleted": True, "uuid": conn["uuid"], "revoked": True}
    revoked = {r["token"]: r for r in env.provider.state.revocations}
    assert set(revoked) == {conn["access_token"], conn["refresh_token"]}
    assert all(r["status"] == 200 and r["client_id"] == "demo-client" for r in revoked.values())
    assert revoked[conn["refresh_token"]]["token_type_hint"] == "refresh_token"
    assert not env.provider.state.is_refresh_token_active(conn["refresh_token"])
    assert not env.provider.state.is_access_token_active(conn["access_token"])
    assert deleted == [{"integration": "acme", "name": "main", "uuid": conn["uuid"], "revoked": True}]
    assert_envelope(env.get("/connections/acme", name="main"), 404, "1302")
    assert_envelope(env.delete("/connections/acme", name="main"), 404, "1302")
    assert_envelope(env.delete("/connections/acme"), 400, "1301")


def test_delete_reports_a_failed_revocation_and_still_deletes(
    make_env: Callable[..., Env], all_logs: pytest.LogCaptureFixture
) -> None:
    env = make_env(connect_main=False, client={"revocation_url": dead_port_url()})
    conn = env.connect("main", allow_offline_access=True)
    resp = env.delete("/connections/acme", uuid=conn["uuid"])
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"deleted": True, "uuid": conn["uuid"], "revoked": False}
    assert env.storage.get_connection("acme", uuid=conn["uuid"]) is None
    assert "Revoking connection" in all_logs.text
    assert conn["refresh_token"] not in all_logs.text and conn["access_token"] not in all_logs.text
    assert env.provider.state.is_refresh_token_active(conn["refresh_token"])  # nothing reached it
    other = env.connect("other")
    with env.app.app_context():
        assert env.zis.delete_connection("acme", name="other") is False
    assert env.storage.get_connection("acme", uuid=other["uuid"]) is None


@pytest.mark.parametrize("backend", ["memory"])
def test_delete_still_deletes_when_the_revocation_url_cannot_be_built(make_env: Callable[..., Env]) -> None:
    # The revocation URL needs a subdomain the connection was made without.
    env = make_env(client={"revocation_url": "http://{{subdomain}}.provider.test/revoke"})
    assert env.get("/connections/refresh/acme", name="main").status_code == 200  # refreshes work
    resp = env.delete("/connections/acme", name="main")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["revoked"] is False
    assert env.storage.get_connection("acme", name="main") is None


def test_delete_without_revocation_url_reports_none(env: Env) -> None:
    resp = env.delete("/connections/acme", name="main")
    assert resp.get_json() == {"deleted": True, "uuid": env.conn["uuid"], "revoked": None}
    assert env.provider.state.revocations == []


# -- signals -------------------------------------------------------------------------------------------
def test_signals_carry_identifiers_and_no_secrets(env: Env) -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    def receiver(kind: str) -> Callable[..., None]:
        def receive(sender: Flask, **payload: Any) -> None:
            assert sender is env.app
            got.append((kind, payload))

        return receive

    on_refreshed, on_failed, on_deleted = receiver("refreshed"), receiver("failed"), receiver("deleted")
    with (
        connection_refreshed.connected_to(on_refreshed, sender=env.app),
        connection_refresh_failed.connected_to(on_failed, sender=env.app),
        connection_deleted.connected_to(on_deleted, sender=env.app),
        env.app.app_context(),
    ):
        conn = env.zis.refresh("acme", name="main")
        env.provider.state.inject_token_fault("http500")
        with pytest.raises(ProviderError):
            env.zis.refresh("acme", name="main")
        env.zis.delete_connection("acme", name="main")
    assert [kind for kind, _ in got] == ["refreshed", "failed", "deleted"]
    ids = {"integration": "acme", "name": "main", "uuid": env.conn["uuid"]}
    assert got[0][1] == {**ids, "token_expiry": conn.token_expiry}
    assert got[1][1] == {**ids, "reason": "provider_error", "needs_reauth": False, "backoff_started": True}
    assert got[2][1] == {**ids, "revoked": None}
    secrets_ = {env.conn["access_token"], env.conn["refresh_token"], conn.access_token, conn.refresh_token}
    for _, payload in got:
        assert not any(s in str(v) for v in payload.values() for s in secrets_ if s)


# -- refresh-due -----------------------------------------------------------------------------------------
def test_refresh_due_refreshes_only_connections_about_to_expire(env: Env) -> None:
    soon = env.conn
    with clock_at(expiry_of(env) - timedelta(seconds=1800)):
        later = env.connect("later")  # expires 30 min after "main"
        broken = env.connect("broken", allow_offline_access=True)
    env.provider.state.revoke_refresh_token(broken["refresh_token"])
    with clock_at(expiry_of(env) - timedelta(seconds=300)):
        result = env.app.test_cli_runner().invoke(args=["zis", "refresh-due", "--within", "600"])
        assert result.exit_code == 0, result.output
        report = json_last_line(result.stdout)
        assert report == {"due": 1, "refreshed": 1, "needs_reauth": 0, "failed": 0, "skipped": 0}
        assert env.current("main").access_token != soon["access_token"]
        assert env.current("later").access_token == later["access_token"]
        assert env.provider.state.refresh_call_count == 1
        # Nothing is due now: a second run refreshes nothing.
        again = env.app.test_cli_runner().invoke(args=["zis", "refresh-due", "--within", "600"])
        assert json_last_line(again.stdout)["due"] == 0
    with clock_at(expiry_of(env, "later") - timedelta(seconds=60)):
        env.provider.state.inject_token_fault("http500")
        result = env.app.test_cli_runner().invoke(args=["zis", "refresh-due", "--within", "600"])
        assert result.exit_code == 1
        report = json_last_line(result.stdout)
        assert report == {"due": 2, "refreshed": 0, "needs_reauth": 1, "failed": 1, "skipped": 0}
        assert "later" in result.output and "broken" in result.output
        for secret in (later["access_token"], later["refresh_token"], broken["refresh_token"]):
            assert secret not in result.output
    assert env.record("broken").needs_reauth


def json_last_line(output: str) -> dict[str, Any]:
    import json

    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]
