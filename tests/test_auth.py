"""API authentication: bearer tokens bound to one integration, admin sessions with CSRF."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import Result
from flask import Flask, session
from flask.testing import FlaskClient

from flask_zis_connections import ZISConnections
from flask_zis_connections.crypto import hash_secret

from .helpers import PREFIX, assert_envelope, client_body

URL = f"{PREFIX}/connections/oauth/clients/acme"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Basic abc", "Bearer nope", "bearer zis_x"])
def test_missing_or_invalid_token_is_401(client: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    assert_envelope(client.get(URL, headers=headers), 401, "1200")


def test_token_of_another_integration_is_403(app: Flask, client: FlaskClient, zis: ZISConnections) -> None:
    with app.app_context():
        other = zis.issue_access_token("other")
    assert_envelope(client.get(URL, headers={"Authorization": f"Bearer {other}"}), 403, "1200")


def test_token_is_stored_only_as_a_hash(app: Flask, zis: ZISConnections) -> None:
    with app.app_context():
        token = zis.issue_access_token("acme")
    storage = app.extensions["zis_connections"].storage
    stored = storage.list_api_tokens("acme")
    assert [t.token_hash for t in stored] == [hash_secret(token)]
    assert token not in repr(stored)


def test_revoked_token_is_401(app: Flask, client: FlaskClient, zis: ZISConnections) -> None:
    with app.app_context():
        token = zis.issue_access_token("acme")
        assert client.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert zis.revoke_access_token(token)
    assert_envelope(client.get(URL, headers={"Authorization": f"Bearer {token}"}), 401, "1200")


def test_cli_issue_and_revoke(app: Flask) -> None:
    runner = app.test_cli_runner()
    result: Result = runner.invoke(args=["zis", "tokens", "issue", "acme"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    c = app.test_client()
    assert c.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert runner.invoke(args=["zis", "tokens", "revoke", token]).exit_code == 0
    assert c.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    bad = runner.invoke(args=["zis", "tokens", "issue", "Not Valid"])
    assert bad.exit_code != 0 and "integration" in bad.output


@pytest.fixture
def session_app(make_app: Callable[..., Flask]) -> Flask:
    app = make_app()
    zis: ZISConnections = app.extensions["zis_connections"].ext

    @zis.admin_session_loader
    def load_admin(integration: str) -> str | None:
        return session.get("admin") if integration == "acme" else None

    @app.post("/login")
    def login() -> str:
        session["admin"] = "alice"
        return "ok"

    return app


def test_admin_session_reads_and_same_origin_writes(session_app: Flask) -> None:
    c = session_app.test_client()
    assert_envelope(c.get(URL), 401, "1200")
    c.post("/login")
    assert c.get(URL).status_code == 200
    resp = c.post(URL, json=client_body(), headers={"Origin": "http://localhost"})
    assert resp.status_code == 201, resp.get_json()
    # Another integration is not admitted by the loader.
    assert_envelope(c.get(f"{PREFIX}/connections/oauth/clients/other"), 401, "1200")


@pytest.mark.parametrize(
    "headers", [{}, {"Origin": "https://evil.test"}, {"Referer": "https://evil.test/x"}, {"Origin": "null"}]
)
def test_admin_session_cross_site_write_is_403(session_app: Flask, headers: dict[str, str]) -> None:
    c = session_app.test_client()
    c.post("/login")
    assert_envelope(c.post(URL, json=client_body(), headers=headers), 403, "1200")
    assert c.get(URL).get_json()["clients"] == []


def test_only_trusted_origins_may_write_with_session(session_app: Flask) -> None:
    c = session_app.test_client()
    c.post("/login")
    # https://client.int is an allowed *redirect* origin: a place the browser may be
    # sent back to, which admits no admin writes.
    resp = c.post(URL, json=client_body(), headers={"Origin": "https://client.int"})
    assert_envelope(resp, 403, "1200", "ZIS_TRUSTED_ORIGINS")
    assert c.get(URL).get_json()["clients"] == []
