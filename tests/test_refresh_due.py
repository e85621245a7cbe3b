"""``flask zis refresh-due`` keeps idle refresh tokens alive (Xero, QuickBooks).

A connection nobody uses never has its access token refreshed, so a refresh token with
an expiry of its own would die unused.  ``--refresh-token-within`` refreshes those
connections too.  Real parts: the live Authlib provider, every storage backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_zis_connections.cli import refresh_due_connections
from flask_zis_connections.domain import ConnectionRecord, utcnow
from flask_zis_connections.storage import Storage

from .flow_driver import auth_header, connect, register
from .live_provider import LiveProvider

NO_REFRESH = {"due": 0, "refreshed": 0, "needs_reauth": 0, "failed": 0, "skipped": 0}


@dataclass
class Env:
    app: Flask
    provider: LiveProvider
    headers: dict[str, str]

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    def record(self, name: str) -> ConnectionRecord:
        rec = self.storage.get_connection("acme", name=name)
        assert rec is not None
        return rec

    def connect(self, name: str, *, refresh_token_in: timedelta | None, **changes: Any) -> str:
        """A new connection whose stored refresh token expires ``refresh_token_in`` from
        now (written through the storage, as a provider stating it would leave it); returns
        its access token."""
        conn = connect(self.app, self.provider, self.headers, name=name, allow_offline_access=True)
        rec = self.record(name)
        expiry = None if refresh_token_in is None else (utcnow() + refresh_token_in).replace(microsecond=0)
        stored = self.storage.update_connection(
            rec.replace(refresh_token_expiry=expiry, **changes), expected_version=rec.version
        )
        assert stored is not None and stored.refresh_token_expiry == expiry
        return str(conn["access_token"])

    def access_token(self, name: str) -> str:
        with self.app.app_context():
            return (
                self.app.extensions["zis_connections"]
                .ext.get_connection(  # type: ignore[no-any-return]
                    "acme", name, refresh_if_due=False
                )
                .access_token
            )

    def run(self, *args: str) -> Result:
        return self.app.test_cli_runner().invoke(args=["zis", "refresh-due", *args])


@pytest.fixture
def env(make_app: Callable[..., Flask], provider: LiveProvider) -> Env:
    app = make_app()
    register(app, provider)
    return Env(app, provider, auth_header(app))


def report(result: Result) -> dict[str, int]:
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_connections_whose_refresh_token_expires_soon_are_refreshed(env: Env) -> None:
    near = env.connect("near", refresh_token_in=timedelta(minutes=30))
    far = env.connect("far", refresh_token_in=timedelta(days=30))
    unknown = env.connect("unknown", refresh_token_in=None)  # the provider never said
    broken = env.connect("broken", refresh_token_in=timedelta(minutes=5), needs_reauth=True)
    env.provider.state.reset_counters()

    result = env.run("--refresh-token-within", "3600")

    assert result.exit_code == 0, result.output
    assert report(result) == {**NO_REFRESH, "due": 1, "refreshed": 1}
    assert env.provider.state.refresh_call_count == 1
    assert env.access_token("near") != near
    assert env.record("near").version == 3  # connected, expiry written, refreshed
    for name, token in (("far", far), ("unknown", unknown), ("broken", broken)):
        assert env.access_token(name) == token, name
    assert env.record("broken").needs_reauth
    # The new refresh token's expiry is what the provider said (nothing): nothing is due.
    again = env.run("--refresh-token-within", "3600")
    assert report(again) == NO_REFRESH
    assert env.provider.state.refresh_call_count == 1


def test_the_default_window_is_a_week_and_zero_turns_it_off(env: Env) -> None:
    token = env.connect("idle", refresh_token_in=timedelta(days=6))
    env.provider.state.reset_counters()

    off = env.run("--refresh-token-within", "0")
    assert report(off) == NO_REFRESH
    assert env.access_token("idle") == token

    default = env.run()
    assert default.exit_code == 0, default.output
    assert report(default) == {**NO_REFRESH, "due": 1, "refreshed": 1}
    assert env.provider.state.refresh_call_count == 1
    assert env.access_token("idle") != token


def test_a_connection_due_both_ways_is_refreshed_once(env: Env) -> None:
    env.connect("both", refresh_token_in=timedelta(minutes=10))
    env.provider.state.reset_counters()

    # Its access token (one hour) is due within two hours, its refresh token too.
    result = env.run("--within", "7200", "--refresh-token-within", "3600")

    assert report(result) == {**NO_REFRESH, "due": 1, "refreshed": 1}
    assert env.provider.state.refresh_call_count == 1


def test_a_failing_provider_is_counted_and_exits_non_zero_then_backs_off(env: Env) -> None:
    token = env.connect("idle", refresh_token_in=timedelta(hours=1))
    env.provider.state.reset_counters()
    env.provider.state.inject_token_fault("http500")

    failed = env.run("--refresh-token-within", "7200")

    assert failed.exit_code == 1
    assert report(failed) == {**NO_REFRESH, "due": 1, "failed": 1}
    assert "acme/idle" in failed.output and token not in failed.output
    assert env.access_token("idle") == token
    # Backing off: the next run fails fast, without calling the provider again.
    calls = env.provider.state.refresh_call_count
    backing_off = env.run("--refresh-token-within", "7200")
    assert backing_off.exit_code == 1
    assert report(backing_off)["failed"] == 1
    assert env.provider.state.refresh_call_count == calls


def test_a_refused_refresh_token_is_counted_as_needs_reauth(env: Env) -> None:
    env.connect("revoked", refresh_token_in=timedelta(hours=1))
    rec = env.record("revoked")
    with env.app.app_context():
        refresh_token = env.app.extensions["zis_connections"].lifecycle.decrypt(rec).refresh_token
    env.provider.state.revoke_refresh_token(refresh_token)

    result = env.run("--refresh-token-within", "7200")

    assert result.exit_code == 0, result.output  # a person must reconnect: no provider failure
    assert report(result) == {**NO_REFRESH, "due": 1, "needs_reauth": 1}
    assert env.record("revoked").needs_reauth
    assert refresh_token not in result.output


def test_the_scan_pages_through_every_integration(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    """Over one page (500) of connections: the due one on the second page and the one in
    another integration are found; nobody else is refreshed."""
    app = make_app()
    register(app, provider)
    register(app, provider, integration="other", client_id="other-client")
    env = Env(app, provider, auth_header(app))
    env.connect("template", refresh_token_in=None)
    template = env.record("template")
    for i in range(520):
        uuid = f"00000000-0000-4000-8000-{i:012d}"
        env.storage.upsert_connection(template.replace(uuid=uuid, name=f"bulk{i}"))
    late = env.connect("late", refresh_token_in=timedelta(minutes=10))
    other = Env(app, provider, auth_header(app, "other"))
    conn = connect(app, provider, other.headers, integration="other", name="main", allow_offline_access=True)
    rec = env.storage.get_connection("other", name="main")
    assert rec is not None
    soon = rec.replace(refresh_token_expiry=utcnow() + timedelta(minutes=20))
    assert env.storage.update_connection(soon, expected_version=rec.version) is not None
    provider.state.reset_counters()

    with app.app_context():
        result = refresh_due_connections(within=0, refresh_token_within=3600)

    assert result.counts == {**NO_REFRESH, "due": 2, "refreshed": 2}
    assert result.errors == []
    assert provider.state.refresh_call_count == 2
    assert env.access_token("late") != late
    assert env.storage.get_connection("other", name="main").version == rec.version + 2  # type: ignore[union-attr]
    assert conn["access_token"] not in str(result)
