"""The admin console through Flask's test client: admission, CSRF, headers, every action.

The console runs on a host app with the extension, the HTTP API and the console
registered as the README says, an admin loader reading the host's session, and a live
demo OAuth provider for the real flow (connect, refresh now, delete with revocation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_zis_connections import ZISConnections

from .flow_driver import register
from .live_provider import LiveProvider

PREFIX = "/admin/connections"
OWN = {"Origin": "http://localhost"}
ADMIN = "alice"
CLIENT_SECRET = "demo-secret"
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


@pytest.fixture
def backend() -> str:
    """The console is a thin layer over storage the contract suite already covers."""
    return "sqlite"


@pytest.fixture
def console(make_app: Callable[..., Flask]) -> Flask:
    app = make_app()
    zis: ZISConnections = app.extensions["zis_connections"].ext
    app.register_blueprint(zis.admin_blueprint, url_prefix=PREFIX)

    @zis.admin_session_loader
    def load_admin(integration: str) -> str | None:
        return session.get("admin") if integration in session.get("admin_of", ()) else None

    return app


@pytest.fixture
def zis(console: Flask) -> ZISConnections:
    return console.extensions["zis_connections"].ext  # type: ignore[no-any-return]


class Browser:
    """A test client that keeps every page it saw, for the secret scan."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.pages: list[str] = []

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self._seen(self.client.get(path, **kw))

    def post(self, path: str, **kw: Any) -> TestResponse:
        kw.setdefault("headers", OWN)
        return self._seen(self.client.post(path, **kw))

    def _seen(self, resp: TestResponse) -> TestResponse:
        for key, value in SECURITY_HEADERS.items():
            assert resp.headers.get(key) == value, (resp.request.path, key)
        self.pages.append(resp.get_data(as_text=True))
        resp.close()  # static files are streamed from an open file
        return resp

    def csrf(self) -> str:
        page = self.get(f"{PREFIX}/i/acme").get_data(as_text=True)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page
        return found.group(1)


@pytest.fixture
def admin(console: Flask) -> Browser:
    client = console.test_client()
    with client.session_transaction() as s:
        s["admin"] = ADMIN
        s["admin_of"] = ["acme"]
    return Browser(client)


@pytest.fixture
def stranger(console: Flask) -> Browser:
    return Browser(console.test_client())


@pytest.fixture
def provider_client(console: Flask, provider: LiveProvider) -> Any:
    return register(console, provider, revocation_url=provider.revocation_url)


def connect_through_console(
    admin: Browser, provider: LiveProvider, client_uuid: str, name: str = "main"
) -> str:
    """Press Connect, follow the flow through the provider, land on the connection page."""
    started = admin.post(
        f"{PREFIX}/i/acme/connect",
        data={"oauth_client_uuid": client_uuid, "name": name, "csrf_token": admin.csrf()},
    )
    assert started.status_code == 303, started.get_data(as_text=True)
    to_provider = admin.client.get(_local(started.headers["Location"]))
    assert to_provider.status_code == 307, to_provider.get_data(as_text=True)
    back = admin.client.get(_local(provider.approve(to_provider.headers["Location"])))
    assert back.status_code == 302
    assert _local(back.headers["Location"]).startswith(f"{PREFIX}/i/acme/connected?verification_code=")
    landed = admin.get(_local(back.headers["Location"]))
    assert landed.status_code == 303
    page = admin.get(_local(landed.headers["Location"]))
    assert page.status_code == 200
    assert "Connected: the provider&#39;s tokens are stored." in page.get_data(as_text=True)
    return _local(landed.headers["Location"]).split("?")[0]


def _local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def snapshot(app: Flask) -> Any:
    st = app.extensions["zis_connections"]
    with app.app_context():
        return (
            st.storage.list_clients("acme"),
            [(c.uuid, c.version) for c in st.storage.list_connections("acme").items],
            st.storage.list_api_tokens("acme"),
        )


# -- admission ---------------------------------------------------------------------------
def test_every_page_for_an_admin_and_none_for_others(
    console: Flask,
    zis: ZISConnections,
    admin: Browser,
    stranger: Browser,
    provider: LiveProvider,
    provider_client: Any,
) -> None:
    conn_page = connect_through_console(admin, provider, provider_client.uuid)
    with console.app_context():
        cred = zis.create_connection(
            "acme",
            "reports",
            type="bearer_token",
            allowed_domain="api.acme.test",
            token="bearer-secret-value",
        )
    pages = [
        f"{PREFIX}/",
        f"{PREFIX}/i/acme",
        f"{PREFIX}/i/acme/clients/new",
        f"{PREFIX}/i/acme/clients/{provider_client.uuid}/edit",
        f"{PREFIX}/i/acme/clients/{provider_client.uuid}/delete",
        conn_page,
        f"{conn_page}/delete",
        f"{PREFIX}/i/acme/c/{cred.uuid}",
        f"{PREFIX}/connect/acme/csrf",
        f"{PREFIX}/connect/done/acme?error=access_denied",
    ]
    for path in pages:
        seen = admin.get(path)
        assert seen.status_code == 200, (path, seen.get_data(as_text=True))
        refused = stranger.get(path)
        assert refused.status_code == 401, path
        text = refused.get_data(as_text=True)
        assert "Sign in required" in text and "Traceback" not in text and "acme" not in text.split("<main")[1]
    # Another integration's admin is not this one's.
    with stranger.client.session_transaction() as s:
        s["admin"], s["admin_of"] = "bob", ["other"]
    assert stranger.get(f"{PREFIX}/i/acme").status_code == 401
    assert stranger.get(f"{PREFIX}/").status_code == 401  # admits no stored integration
    # The connection page shows what an operator needs, never a token.
    text = admin.get(conn_page).get_data(as_text=True)
    assert "badge-active" in text and "read write" in text and "connection.created" in text
    _no_secrets(console, zis, admin.pages + stranger.pages, extra=["bearer-secret-value"])


def test_without_an_admin_loader_the_console_is_off(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    app.register_blueprint(app.extensions["zis_connections"].ext.admin_blueprint, url_prefix=PREFIX)
    resp = app.test_client().get(f"{PREFIX}/i/acme")
    assert resp.status_code == 403
    assert "admin_session_loader" in resp.get_data(as_text=True)
    for key, value in SECURITY_HEADERS.items():
        assert resp.headers[key] == value


def test_unknown_things_are_a_plain_404(admin: Browser) -> None:
    resp = admin.get(f"{PREFIX}/i/acme/c/00000000-0000-4000-8000-000000000000")
    assert resp.status_code == 404 and "Not found" in resp.get_data(as_text=True)
    assert admin.get(f"{PREFIX}/i/acme/clients/00000000-0000-4000-8000-000000000000/edit").status_code == 404


# -- forms are refused without every check ----------------------------------------------
def test_forms_refused_without_csrf_origin_or_admin(
    console: Flask, admin: Browser, stranger: Browser, provider: LiveProvider, provider_client: Any
) -> None:
    conn_page = connect_through_console(admin, provider, provider_client.uuid)
    admin.post(f"{PREFIX}/i/acme/tokens", data={"csrf_token": admin.csrf()})
    with console.app_context():
        token_id = console.extensions["zis_connections"].storage.list_api_tokens("acme")[0].id
    forms = {
        f"{PREFIX}/i/acme/clients/new": {
            "provider": "github",
            "name": "gh",
            "client_id": "x",
            "client_secret": "y",
        },
        f"{PREFIX}/i/acme/clients/{provider_client.uuid}/edit": {"name": "renamed"},
        f"{PREFIX}/i/acme/clients/{provider_client.uuid}/delete": {},
        f"{PREFIX}/i/acme/tokens": {},
        f"{PREFIX}/i/acme/tokens/{token_id}/revoke": {},
        f"{PREFIX}/i/acme/connect": {"oauth_client_uuid": provider_client.uuid, "name": "other"},
        f"{conn_page}/connect": {},
        f"{conn_page}/refresh": {},
        f"{conn_page}/delete": {},
        f"{PREFIX}/connect/start": {"integration": "acme", "client": "acme", "name": "other"},
    }
    good = admin.csrf()
    before = snapshot(console)
    for path, form in forms.items():
        cases = [
            (admin, {**form}, OWN, 403),  # no token
            (admin, {**form, "csrf_token": "wrong" + good[5:]}, OWN, 403),
            (admin, {**form, "csrf_token": good}, {"Origin": "https://evil.example"}, 403),
            (admin, {**form, "csrf_token": good}, {"Referer": "https://evil.example/page"}, 403),
            (admin, {**form, "csrf_token": good}, {}, 403),  # neither Origin nor Fetch Metadata
            (stranger, {**form, "csrf_token": good}, OWN, 401),
        ]
        for who, data, headers, status in cases:
            resp = who.post(path, data=data, headers=headers)
            assert resp.status_code == status, (path, data, headers, resp.get_data(as_text=True))
            assert "Traceback" not in resp.get_data(as_text=True)
        assert snapshot(console) == before, path
    # A JSON start needs the token in the header, too.
    resp = admin.post(f"{PREFIX}/connect/start", json={"integration": "acme", "client": "acme", "name": "x"})
    assert resp.status_code == 403
    assert snapshot(console) == before


# -- OAuth clients ----------------------------------------------------------------------
def test_client_from_preset_edit_and_delete(console: Flask, zis: ZISConnections, admin: Browser) -> None:
    with console.app_context():
        zis.issue_access_token("acme")  # the integration exists
    form = admin.get(f"{PREFIX}/i/acme/clients/new").get_data(as_text=True)
    assert '<option value="github">' in form and 'type="password"' in form
    created = admin.post(
        f"{PREFIX}/i/acme/clients/new",
        data={
            "provider": "github",
            "name": "gh",
            "client_id": "gh-id",
            "client_secret": "gh-secret-1",
            "csrf_token": admin.csrf(),
        },
    )
    assert created.status_code == 303
    page = admin.get(_local(created.headers["Location"])).get_data(as_text=True)
    assert "OAuth client created." in page and "gh-id" in page
    with console.app_context():
        client = zis.get_oauth_client("acme", name="gh")
    assert client.token_url == "https://github.com/login/oauth/access_token"

    # A bad value re-shows the form with the reason, never the secret typed.
    bad = admin.post(
        f"{PREFIX}/i/acme/clients/new",
        data={
            "provider": "nope",
            "name": "x",
            "client_id": "x",
            "client_secret": "typed-secret",
            "csrf_token": admin.csrf(),
        },
    )
    assert bad.status_code == 422 and "provider" in bad.get_data(as_text=True)
    assert "typed-secret" not in bad.get_data(as_text=True)

    edit = admin.get(f"{PREFIX}/i/acme/clients/{client.uuid}/edit").get_data(as_text=True)
    assert "gh-secret-1" not in edit and "a secret is set" in edit
    saved = admin.post(
        f"{PREFIX}/i/acme/clients/{client.uuid}/edit",
        data={
            "name": "github-main",
            "default_scopes": "repo",
            "version": str(client.version),
            "csrf_token": admin.csrf(),
        },
    )
    assert saved.status_code == 303
    # Moving the token URL needs the secret again, as over HTTP.
    moved = admin.post(
        f"{PREFIX}/i/acme/clients/{client.uuid}/edit",
        data={"token_url": "https://evil.example/token", "csrf_token": admin.csrf()},
    )
    assert moved.status_code == 422 and "client_secret" in moved.get_data(as_text=True)
    with console.app_context():
        client = zis.get_oauth_client("acme", uuid=client.uuid)
    assert (client.name, client.default_scopes) == ("github-main", "repo")
    assert client.token_url == "https://github.com/login/oauth/access_token"

    confirm = admin.get(f"{PREFIX}/i/acme/clients/{client.uuid}/delete").get_data(as_text=True)
    assert "Delete client github-main" in confirm
    gone = admin.post(f"{PREFIX}/i/acme/clients/{client.uuid}/delete", data={"csrf_token": admin.csrf()})
    assert gone.status_code == 303
    with console.app_context():
        assert zis.list_oauth_clients("acme") == []
    _no_secrets(console, zis, admin.pages, extra=["gh-secret-1", "typed-secret"])


# -- API tokens ---------------------------------------------------------------------------
def test_issue_token_shown_once_then_revoke(console: Flask, zis: ZISConnections, admin: Browser) -> None:
    with console.app_context():
        zis.issue_access_token("acme")
    issued = admin.post(f"{PREFIX}/i/acme/tokens", data={"csrf_token": admin.csrf()})
    assert issued.status_code == 200
    token = re.search(r'value="(zis_[^"]+)"', issued.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    admin.pages.pop()  # the one page that shows it
    listing = admin.get(f"{PREFIX}/i/acme").get_data(as_text=True)
    assert token not in listing
    with console.app_context():
        tokens = (
            zis.list_oauth_clients("acme"),
            console.extensions["zis_connections"].storage.list_api_tokens("acme"),
        )
    assert len(tokens[1]) == 2 and all(t.id in listing for t in tokens[1])
    # The token works against the API until revoked.
    api = console.test_client()
    assert (
        api.get(
            "/api/services/zis/connections/oauth/clients/acme", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )
    with console.app_context():
        from flask_zis_connections.crypto import hash_secret

        token_id = console.extensions["zis_connections"].storage.get_api_token(hash_secret(token)).id
    revoked = admin.post(f"{PREFIX}/i/acme/tokens/{token_id}/revoke", data={"csrf_token": admin.csrf()})
    assert revoked.status_code == 303
    assert "API token revoked." in admin.get(_local(revoked.headers["Location"])).get_data(as_text=True)
    assert (
        api.get(
            "/api/services/zis/connections/oauth/clients/acme", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 401
    )
    _no_secrets(console, zis, admin.pages, extra=[token])


# -- connections --------------------------------------------------------------------------
def test_connect_refresh_now_and_delete(
    console: Flask, zis: ZISConnections, admin: Browser, provider: LiveProvider, provider_client: Any
) -> None:
    conn_page = connect_through_console(admin, provider, provider_client.uuid)
    with console.app_context():
        first = zis.get_connection("acme", "main", refresh_if_due=False)
    refreshed = admin.post(f"{conn_page}/refresh", data={"csrf_token": admin.csrf()})
    assert refreshed.status_code == 303
    page = admin.get(_local(refreshed.headers["Location"])).get_data(as_text=True)
    assert "Refreshed" in page and "connection.refreshed" in page
    with console.app_context():
        second = zis.get_connection("acme", "main", refresh_if_due=False)
    assert second.access_token != first.access_token and second.uuid == first.uuid

    # The provider refuses the refresh token: the page says a person must connect again.
    provider.state.revoke(provider.state.find_refresh_token(second.refresh_token), access_only=False)
    failed = admin.post(f"{conn_page}/refresh", data={"csrf_token": admin.csrf()})
    assert failed.status_code == 422
    assert "needs re-authorization" in failed.get_data(as_text=True)
    listing = admin.get(f"{PREFIX}/i/acme").get_data(as_text=True)
    assert "badge-needs_reauth" in listing

    # Reconnect keeps the uuid and clears the state.
    again = admin.post(f"{conn_page}/connect", data={"csrf_token": admin.csrf()})
    assert again.status_code == 303
    to_provider = admin.client.get(_local(again.headers["Location"]))
    back = admin.client.get(_local(provider.approve(to_provider.headers["Location"])))
    landed = admin.get(_local(back.headers["Location"]))
    assert _local(landed.headers["Location"]).split("?")[0] == conn_page
    assert "badge-active" in admin.get(conn_page).get_data(as_text=True)

    confirm = admin.get(f"{conn_page}/delete").get_data(as_text=True)
    assert "Delete connection main" in confirm
    deleted = admin.post(f"{conn_page}/delete", data={"csrf_token": admin.csrf()})
    assert deleted.status_code == 200
    assert "Revoked at the provider" in deleted.get_data(as_text=True)
    with console.app_context():
        assert list(zis.list_connections("acme")["connections"]) == []
    _no_secrets(
        console,
        zis,
        admin.pages,
        extra=[
            first.access_token,
            first.refresh_token or "-",
            second.access_token,
            second.refresh_token or "-",
        ],
    )


def test_provider_refusal_lands_on_a_page(
    console: Flask, admin: Browser, provider: LiveProvider, provider_client: Any
) -> None:
    started = admin.post(
        f"{PREFIX}/i/acme/connect",
        data={"oauth_client_uuid": provider_client.uuid, "name": "main", "csrf_token": admin.csrf()},
    )
    to_provider = admin.client.get(_local(started.headers["Location"]))
    back = admin.client.get(_local(provider.approve(to_provider.headers["Location"], confirm=False)))
    page = admin.get(_local(back.headers["Location"]))
    assert page.status_code == 400 and "access_denied" in page.get_data(as_text=True)


def test_popup_start_endpoint(
    console: Flask, admin: Browser, provider: LiveProvider, provider_client: Any
) -> None:
    token = admin.get(f"{PREFIX}/connect/acme/csrf").get_json()["csrf_token"]
    resp = admin.post(
        f"{PREFIX}/connect/start",
        json={"integration": "acme", "client": "acme", "name": "popup", "scopes": "read"},
        headers={**OWN, "X-CSRF-Token": token},
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    to_provider = admin.client.get(_local(resp.get_json()["redirect_url"]))
    back = admin.client.get(_local(provider.approve(to_provider.headers["Location"])))
    done = _local(back.headers["Location"])
    assert done.startswith(f"{PREFIX}/connect/done/acme?verification_code=")
    page = admin.get(done).get_data(as_text=True)
    assert 'data-verification-code="' in page and "zis-connect.js" in page
    # A plain form (no JavaScript) with return_to goes back to the host's page instead.
    form = admin.post(
        f"{PREFIX}/connect/start",
        data={
            "integration": "acme",
            "client": "acme",
            "name": "popup",
            "return_to": "/settings",
            "csrf_token": token,
        },
    )
    assert form.status_code == 303
    assert (
        admin.post(
            f"{PREFIX}/connect/start",
            data={
                "integration": "acme",
                "client": "acme",
                "name": "p",
                "return_to": "https://evil.example/",
                "csrf_token": token,
            },
        ).status_code
        == 422
    )


def test_static_scripts_served_with_headers(admin: Browser) -> None:
    for name in ("zis-connect.js", "zis-admin.css"):
        resp = admin.get(f"{PREFIX}/static/{name}")
        assert resp.status_code == 200 and resp.get_data()


def _no_secrets(app: Flask, zis: ZISConnections, pages: list[str], *, extra: list[str]) -> None:
    """No page holds a client secret, a token, a refresh token or an API token."""
    st = app.extensions["zis_connections"]
    secrets = [CLIENT_SECRET, *extra]
    with app.app_context():
        for client in st.storage.list_clients():
            if client.client_secret_enc:
                secrets.append(st.encryptor.decrypt(client.client_secret_enc))
        for rec in st.storage.list_connections("acme").items:
            conn = st.lifecycle.decrypt(rec)
            secrets += [s for s in (conn.access_token, conn.refresh_token) if s]
    joined = "\n".join(pages)
    for secret in secrets:
        assert secret not in joined


@pytest.fixture(autouse=True)
def _no_leaks(all_logs: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert "Traceback" not in all_logs.text
