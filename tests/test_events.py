"""The event log, seen from the HTTP API, the CLI and the database file.

Real flows against the live provider write the events; each is read back through
``GET /integrations/{integration}/events`` with the actor who caused it - an API token,
an admin's browser session, the CLI, or the extension itself - and the raw rows of the
SQLite file are searched for every secret the test handled.  Clocks move with
``time-machine``.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask, session
from flask.testing import FlaskClient

from flask_zis_connections import ZISConnections
from flask_zis_connections.domain import Event, utcnow
from flask_zis_connections.errors import ConfigurationError, StorageUnavailable
from flask_zis_connections.storage import MemoryStorage

from .flow_driver import callback, query, redirect_to_provider, start, zis_of
from .helpers import PREFIX, assert_envelope, client_body
from .live_provider import LiveProvider

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
ADMIN_ORIGIN = "https://admin.int"
#: What an admin's browser sends with a write: the host's trusted origin.
ADMIN_WRITE = {"Origin": ADMIN_ORIGIN}
EVENTS_URL = f"{PREFIX}/integrations/acme/events"


@pytest.fixture
def admin_app(make_app: Callable[..., Flask]) -> Flask:
    """A host whose logged-in admins (``POST /login/<who>``) may use the API for ``acme``."""
    app = make_app(ZIS_TRUSTED_ORIGINS=[ADMIN_ORIGIN])

    @zis_of(app).admin_session_loader
    def load_admin(integration: str) -> str | None:
        return session.get("admin") if integration == "acme" else None

    @app.post("/login/<who>")
    def login(who: str) -> str:
        session["admin"] = who
        return "ok"

    return app


def logged_in(app: Flask, who: str) -> FlaskClient:
    browser = app.test_client()
    browser.post(f"/login/{who}")
    return browser


def cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["zis", *args])
    assert result.exit_code == 0, result.output
    return result.output


def read_events(browser: FlaskClient, headers: dict[str, str] | None = None, **query: str) -> Any:
    resp = browser.get(EVENTS_URL, query_string=query, headers=headers or {})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def all_events(app: Flask) -> list[Event]:
    with app.app_context():
        return app.extensions["zis_connections"].storage.list_events("acme", limit=1000).items  # type: ignore[no-any-return]


@dataclass
class Journey:
    """What one walk through every action left behind."""

    app: Flask
    token_id: str
    client_uuid: str = ""
    connection_uuid: str = ""
    #: Every secret the walk handled: tokens, codes, client secrets, the bearer token.
    secrets: dict[str, str] = field(default_factory=dict)


def run_flow(
    journey: Journey, provider: LiveProvider, browser: FlaskClient, headers: dict[str, str], tag: str
) -> dict[str, Any]:
    """One authorization-code flow for connection ``main``, keeping every secret it shows."""
    started = start(browser, headers, name="main", allow_offline_access=True)
    assert started.status_code == 200, started.get_json()
    start_url = started.get_json()["redirect_url"]
    provider_url = redirect_to_provider(browser, start_url)
    answer = provider.approve(provider_url)
    back = callback(browser, answer)
    assert back.status_code == 302, back.get_data(as_text=True)
    verification_code = query(back.headers["Location"])["verification_code"][0]
    got = browser.get(
        f"{PREFIX}/connections/oauth/access_codes/acme",
        query_string={"verification_code": verification_code},
        headers=headers,
    )
    assert got.status_code == 200, got.get_json()
    conn: dict[str, Any] = got.get_json()
    journey.secrets |= {
        f"{tag} flow token": query(start_url)["flow_token"][0],
        f"{tag} state": query(provider_url)["state"][0],
        f"{tag} authorization code": query(answer)["code"][0],
        f"{tag} verification code": verification_code,
        f"{tag} access token": conn["access_token"],
        f"{tag} refresh token": conn["refresh_token"],
    }
    return conn


def keep_tokens(journey: Journey, tag: str, conn: dict[str, Any]) -> None:
    journey.secrets[f"{tag} access token"] = conn["access_token"]
    journey.secrets[f"{tag} refresh token"] = conn["refresh_token"]


@pytest.fixture
def journey(admin_app: Flask, provider: LiveProvider) -> Journey:
    """Every action that writes an event, each by the actor the test names in its comment."""
    app = admin_app
    zis = zis_of(app)
    api = app.test_client()
    alice = logged_in(app, "alice")

    # cli: an API token for the integration, shown once.
    bearer = cli(app, "tokens", "issue", "acme").strip()
    headers = {"Authorization": f"Bearer {bearer}"}
    with app.app_context():
        (token,) = app.extensions["zis_connections"].storage.list_api_tokens("acme")
    j = Journey(app, token_id=token.id, secrets={"bearer token": bearer})

    # the API token: an OAuth client, then a connection through the whole flow.
    client_secret = "cs-" + secrets.token_urlsafe(24)
    j.secrets["client secret"] = client_secret
    provider.register_client("demo-client", client_secret)
    body = client_body(
        provider.url,
        client_id="demo-client",
        client_secret=client_secret,
        revocation_url=provider.revocation_url,
    )
    created = api.post(f"{PREFIX}/connections/oauth/clients/acme", json=body, headers=headers)
    assert created.status_code == 201, created.get_json()
    j.client_uuid = created.get_json()["uuid"]
    conn = run_flow(j, provider, api, headers, "first")
    j.connection_uuid = conn["uuid"]

    # the host's hot path on a fresh token: no event at all.
    before = len(all_events(app))
    with app.app_context():
        for _ in range(3):
            assert zis.get_token("acme", "main") == conn["access_token"]
    assert len(all_events(app)) == before

    # refreshes: the API token, alice's session, the host's own code (system).
    refreshed = api.get(f"{PREFIX}/connections/refresh/acme?name=main", headers=headers)
    assert refreshed.status_code == 200
    keep_tokens(j, "api refresh", refreshed.get_json())
    by_alice = alice.get(
        f"{PREFIX}/connections/refresh/acme?name=main", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert by_alice.status_code == 200, by_alice.get_json()
    keep_tokens(j, "alice refresh", by_alice.get_json())
    with app.app_context():
        by_host = zis.refresh("acme", name="main")
    j.secrets["host refresh access token"] = by_host.access_token
    j.secrets["host refresh refresh token"] = str(by_host.refresh_token)

    # the API token: a refresh the provider fails, then one it refuses for good.
    provider.state.inject_token_fault("http500")
    failed = api.get(f"{PREFIX}/connections/refresh/acme?name=main", headers=headers)
    assert failed.status_code == 502
    provider.state.inject_token_fault("invalid_grant")
    with time_machine.travel(utcnow() + timedelta(seconds=10), tick=True):  # past the back-off
        refused = api.get(f"{PREFIX}/connections/refresh/acme?name=main", headers=headers)
    assert_envelope(refused, 422, "1303")

    # alice: connects it again through her own browser, then edits the client twice.
    conn = run_flow(j, provider, alice, {"Origin": "http://localhost"}, "reconnect")
    assert conn["uuid"] == j.connection_uuid
    client_url = f"{PREFIX}/connections/oauth/clients/acme/{j.client_uuid}"
    assert alice.patch(client_url, json={"default_scopes": "read"}, headers=ADMIN_WRITE).status_code == 200
    new_secret = "cs-" + secrets.token_urlsafe(24)
    j.secrets["new client secret"] = new_secret
    provider.register_client("demo-client", new_secret)
    rotated = api.patch(client_url, json={"client_secret": new_secret}, headers=headers)
    assert rotated.status_code == 200, rotated.get_json()

    # a credential connection: created by the API token, changed by alice, deleted by the token.
    api_key, new_key = "ak-" + secrets.token_urlsafe(24), "ak-" + secrets.token_urlsafe(24)
    j.secrets |= {"api key": api_key, "new api key": new_key}
    key_body = {
        "name": "key",
        "api_key": api_key,
        "header_name": "X-Api-Key",
        "allowed_domain": "api.example.test",
    }
    key_url = f"{PREFIX}/integrations/acme/connections/api_key"
    assert api.post(key_url, json=key_body, headers=headers).status_code == 201
    change = {"api_key": new_key, "allowed_domain": "api2.example.test"}
    assert alice.patch(f"{key_url}/key", json=change, headers=ADMIN_WRITE).status_code == 200
    assert api.delete(f"{key_url}/key", headers=headers).status_code == 200

    # alice deletes the OAuth connection (revoked at the provider); the token its client.
    gone = alice.delete(f"{PREFIX}/connections/acme?name=main", headers=ADMIN_WRITE)
    assert gone.status_code == 200 and gone.get_json()["revoked"] is True
    assert api.delete(client_url, headers=headers).status_code == 200

    # cli: the API token revoked - given as the token itself.
    cli(app, "tokens", "revoke", bearer)
    return j


def kinds_and_actors(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["kind"], e["actor"]) for e in events]


@SQLITE
def test_every_action_writes_its_event_naming_who_did_it(journey: Journey) -> None:
    app, token = journey.app, f"api-token:{journey.token_id}"
    # Read by alice's session, newest first.
    listing = read_events(logged_in(app, "alice"), **{"page[size]": "100"})
    assert listing["meta"] == {"has_more": False, "after_cursor": None}
    events = listing["events"]
    assert kinds_and_actors(events[::-1]) == [
        ("api_token.issued", "cli"),
        ("client.created", token),
        ("connection.created", token),  # written by the callback: the flow's starter
        ("connection.refreshed", token),
        ("connection.refreshed", "alice"),
        ("connection.refreshed", "system"),
        ("connection.refresh_failed", token),
        ("connection.refresh_failed", token),
        ("connection.needs_reauth", token),
        ("connection.reauthorized", "alice"),
        ("client.changed", "alice"),
        ("client.changed", token),
        ("connection.created", token),
        ("connection.changed", "alice"),
        ("connection.deleted", token),
        ("connection.deleted", "alice"),
        ("client.deleted", token),
        ("api_token.revoked", "cli"),
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for event in events[::-1]:
        by_kind.setdefault(event["kind"], []).append(event)
        assert set(event) == {
            "id",
            "kind",
            "connection_name",
            "connection_uuid",
            "oauth_client_uuid",
            "actor",
            "detail",
            "created_at",
        }
        assert event["created_at"].endswith("Z")

    oauth_created, key_created = by_kind["connection.created"]
    assert oauth_created["detail"] == {"type": "oauth"}
    assert (oauth_created["connection_name"], oauth_created["connection_uuid"]) == (
        "main",
        journey.connection_uuid,
    )
    assert oauth_created["oauth_client_uuid"] == journey.client_uuid
    assert key_created["detail"] == {"type": "api_key"} and key_created["oauth_client_uuid"] is None
    assert [e["detail"]["reason"] for e in by_kind["connection.refresh_failed"]] == [
        "provider_error",
        "invalid_grant",
    ]
    assert by_kind["connection.needs_reauth"][0]["detail"] == {"reason": "invalid_grant"}
    assert by_kind["connection.reauthorized"][0]["connection_uuid"] == journey.connection_uuid
    assert [e["detail"]["fields"] for e in by_kind["client.changed"]] == [
        ["default_scopes"],
        ["client_secret"],
    ]
    assert by_kind["connection.changed"][0]["detail"] == {
        "type": "api_key",
        "fields": ["allowed_domain", "api_key"],
    }
    assert [(e["connection_name"], e["detail"]) for e in by_kind["connection.deleted"]] == [
        ("key", {"revoked": None}),
        ("main", {"revoked": True}),
    ]
    assert by_kind["client.created"][0]["detail"] == {"name": "acme"}
    assert by_kind["client.deleted"][0]["oauth_client_uuid"] == journey.client_uuid
    assert by_kind["api_token.issued"][0]["detail"] == {"token_id": journey.token_id}
    assert by_kind["api_token.revoked"][0]["detail"] == {"token_id": journey.token_id}


@SQLITE
def test_no_event_and_no_row_holds_a_secret(journey: Journey, database_uri: str) -> None:
    app = journey.app
    with app.app_context():
        reader = zis_of(app).issue_access_token("acme")
    journey.secrets["reader's bearer token"] = reader
    answered = read_events(app.test_client(), {"Authorization": f"Bearer {reader}"}, **{"page[size]": "100"})
    api_json = json.dumps(answered)
    db_path = Path(database_uri.removeprefix("sqlite:///"))
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as raw:
        rows = raw.execute("SELECT * FROM zis_events ORDER BY id").fetchall()
    raw.close()
    assert len(rows) == len(answered["events"]) == 19
    row_text = repr(rows)
    for row in rows:
        assert isinstance(json.loads(row[7]), dict)  # detail: a JSON object
    files = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert len(journey.secrets) >= 20
    for what, value in journey.secrets.items():
        assert len(value) >= 16, what
        assert value not in api_json, what
        assert value not in row_text, what
        assert value.encode() not in files, f"{what} is in the database file"


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)
def test_pages_are_newest_first_and_follow_the_cursor(app: Flask, zis: ZISConnections) -> None:
    with app.app_context():
        bearer = zis.issue_access_token("acme")
        for _ in range(4):
            zis.issue_access_token("acme")
        zis.issue_access_token("other")  # another integration's log
    headers = {"Authorization": f"Bearer {bearer}"}
    browser = app.test_client()
    everything = read_events(browser, headers)["events"]
    assert len(everything) == 5 and all(e["kind"] == "api_token.issued" for e in everything)
    seen: list[dict[str, Any]] = []
    after: str | None = None
    pages = 0
    while True:
        page = read_events(
            browser, headers, **{"page[size]": "2", **({"page[after]": after} if after else {})}
        )
        pages += 1
        seen += page["events"]
        assert page["meta"]["has_more"] == (page["meta"]["after_cursor"] is not None)
        after = page["meta"]["after_cursor"]
        if after is None:
            break
    assert pages == 3
    assert seen == everything
    assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), reverse=True)
    # A new event never slips into pages already handed out.
    first = read_events(browser, headers, **{"page[size]": "2"})
    with app.app_context():
        zis.issue_access_token("acme")
    second = read_events(
        browser, headers, **{"page[size]": "2", "page[after]": first["meta"]["after_cursor"]}
    )
    assert second["events"] == everything[2:4]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_only_the_integrations_own_callers_read_its_log(admin_app: Flask) -> None:
    with admin_app.app_context():
        other = zis_of(admin_app).issue_access_token("other")
    browser = admin_app.test_client()
    assert_envelope(browser.get(EVENTS_URL, headers={"Authorization": f"Bearer {other}"}), 403, "1200")
    assert_envelope(browser.get(EVENTS_URL), 401, "1200")
    assert_envelope(browser.get(EVENTS_URL, headers={"Authorization": "Bearer zis_forged"}), 401, "1200")
    # alice is an admin of acme only (the loader says so).
    alice = logged_in(admin_app, "alice")
    assert alice.get(EVENTS_URL).status_code == 200
    assert_envelope(alice.get(f"{PREFIX}/integrations/other/events"), 401, "1200")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"page[size]": "0"}, "page[size]"),
        ({"page[size]": "101"}, "page[size]"),
        ({"page[size]": "ten"}, "page[size]"),
        ({"page[size]": "-1"}, "page[size]"),
        ({"page[size]": "9" * 40}, "page[size]"),
        ({"page[after]": "xyz"}, "page[after]"),
        ({"page[after]": "-5"}, "page[after]"),
        ({"page[after]": "9" * 20}, "page[after]"),
        ({"page[before]": "3"}, "page[before]"),
    ],
)
def test_bad_page_parameters_are_422_naming_them(
    client: FlaskClient, bearer: dict[str, str], params: dict[str, str], named: str
) -> None:
    assert_envelope(client.get(EVENTS_URL, query_string=params, headers=bearer), 422, "1303", named)


@SQLITE
@pytest.mark.parametrize(("retention", "kept_for"), [(None, 90), (7, 7)])
def test_purge_trims_events_older_than_the_retention(
    make_app: Callable[..., Flask], retention: int | None, kept_for: int
) -> None:
    app = make_app(**({} if retention is None else {"ZIS_EVENT_RETENTION_DAYS": retention}))
    zis = zis_of(app)
    start_at = utcnow()
    with time_machine.travel(start_at, tick=False), app.app_context():
        zis.issue_access_token("acme")  # will be too old
    with time_machine.travel(start_at + timedelta(days=2), tick=False), app.app_context():
        zis.issue_access_token("acme")  # will be just young enough
    with time_machine.travel(start_at + timedelta(days=kept_for + 1), tick=False):
        with app.app_context():
            zis.issue_access_token("acme")  # today's
        before = [e.id for e in all_events(app)]
        output = cli(app, "purge")
        after = [e.id for e in all_events(app)]
    assert f"Purged 1 events older than {kept_for} days." in output
    assert after == before[:2]
    # Nothing left to trim: a second run deletes nothing.
    with time_machine.travel(start_at + timedelta(days=kept_for + 1), tick=False):
        assert f"Purged 0 events older than {kept_for} days." in cli(app, "purge")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize("value", [0, -3, "ninety", True])
def test_the_retention_must_be_a_positive_number_of_days(
    make_app: Callable[..., Flask], value: object
) -> None:
    with pytest.raises(ConfigurationError, match="ZIS_EVENT_RETENTION_DAYS"):
        make_app(ZIS_EVENT_RETENTION_DAYS=value)


class BrokenLogStorage(MemoryStorage):
    """A store that keeps everything but the event log."""

    def _add_event(self, event: Event) -> Event:
        raise StorageUnavailable("The connections storage is unavailable (test).")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_an_event_that_cannot_be_written_never_fails_the_operation(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(ZIS_STORAGE=BrokenLogStorage())
    caplog.set_level(logging.WARNING, logger="flask_zis_connections")
    with app.app_context():
        bearer = zis_of(app).issue_access_token("acme")
    secret = "cs-" + secrets.token_urlsafe(24)
    created = app.test_client().post(
        f"{PREFIX}/connections/oauth/clients/acme",
        json=client_body(client_secret=secret),
        headers={"Authorization": f"Bearer {bearer}"},
    )
    assert created.status_code == 201, created.get_json()
    warnings = [r.getMessage() for r in caplog.records if "Could not record" in r.getMessage()]
    assert len(warnings) == 2 and "client.created" in warnings[1]
    assert not any(secret in m or bearer in m for m in caplog.messages)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_request_actor_ends_with_the_request(admin_app: Flask, provider: LiveProvider) -> None:
    """Host code after an API request acts as the system again, never as the last caller;
    the CLI's actor, too, ends with its command."""
    zis = zis_of(admin_app)
    provider.register_client("demo-client", "demo-secret")
    with admin_app.app_context():
        zis.create_oauth_client(
            "acme", **client_body(provider.url, client_id="demo-client", client_secret="demo-secret")
        )
    alice = logged_in(admin_app, "alice")
    run_flow(Journey(admin_app, token_id=""), provider, alice, {"Origin": "http://localhost"}, "alice")
    cli(admin_app, "tokens", "list")
    with admin_app.app_context():
        zis.refresh("acme", name="main")
    newest, created = read_events(alice)["events"][:2]
    assert (created["kind"], created["actor"]) == ("connection.created", "alice")
    assert (newest["kind"], newest["actor"]) == ("connection.refreshed", "system")
