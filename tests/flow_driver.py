"""Drive the whole OAuth flow the way a browser would: host test client + live provider.

The host app is exercised through Flask's test client (its "browser" keeps the binding
cookie); the provider is a real Authlib server on a loopback port that the extension
reaches over real HTTP.  Tests of the flow and of the token lifecycle share this.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient

from flask_zis_connections import OAuthClient, ZISConnections
from flask_zis_connections.importing import import_jsonl

from .helpers import PREFIX
from .live_provider import LiveProvider

ORIGIN_URL = "https://client.int/callback?keep=1"


def zis_of(app: Flask) -> ZISConnections:
    return app.extensions["zis_connections"].ext  # type: ignore[no-any-return]


def register(
    app: Flask,
    provider: LiveProvider,
    *,
    integration: str = "acme",
    name: str = "acme",
    client_id: str = "demo-client",
    client_secret: str = "demo-secret",
    provider_kw: dict[str, Any] | None = None,
    **options: Any,
) -> OAuthClient:
    """Register the same client at the provider and in the extension."""
    kw = dict(provider_kw or {})
    if "token_endpoint_auth_method" in options:
        kw.setdefault("token_endpoint_auth_method", options["token_endpoint_auth_method"])
    provider.register_client(client_id, client_secret, **kw)
    options.setdefault("auth_url", provider.auth_url)
    options.setdefault("token_url", provider.token_url)
    options.setdefault("default_scopes", "read write")
    with app.app_context():
        return zis_of(app).create_oauth_client(
            integration, name=name, client_id=client_id, client_secret=client_secret, **options
        )


def auth_header(app: Flask, integration: str = "acme") -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {zis_of(app).issue_access_token(integration)}"}


def start(browser: FlaskClient, headers: dict[str, str], *, integration: str = "acme", **body: Any) -> Any:
    payload: dict[str, Any] = {
        "name": "main",
        "oauth_client_name": "acme",
        "origin_oauth_redirect_url": ORIGIN_URL,
    }
    payload.update(body)
    payload = {k: v for k, v in payload.items() if v is not None}
    return browser.post(f"{PREFIX}/connections/oauth/start/{integration}", json=payload, headers=headers)


def redirect_to_provider(browser: FlaskClient, redirect_url: str) -> str:
    """Follow ``start_redirect`` (sets the binding cookie); return the provider URL."""
    parts = urlsplit(redirect_url)
    resp = browser.get(f"{parts.path}?{parts.query}")
    assert resp.status_code == 307, resp.get_data(as_text=True)
    return str(resp.headers["Location"])


def callback(browser: FlaskClient, provider_location: str) -> Any:
    parts = urlsplit(provider_location)
    return browser.get(f"{parts.path}?{parts.query}")


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def connect(
    app: Flask,
    provider: LiveProvider,
    headers: dict[str, str],
    *,
    browser: FlaskClient | None = None,
    integration: str = "acme",
    **body: Any,
) -> dict[str, Any]:
    """Run the whole flow and return the connection JSON from ``access_codes``."""
    browser = browser or app.test_client()
    resp = start(browser, headers, integration=integration, **body)
    assert resp.status_code == 200, resp.get_json()
    auth_url = redirect_to_provider(browser, resp.get_json()["redirect_url"])
    back = callback(browser, provider.approve(auth_url))
    assert back.status_code == 302, back.get_data(as_text=True)
    code = query(back.headers["Location"])["verification_code"][0]
    got = browser.get(
        f"{PREFIX}/connections/oauth/access_codes/{integration}",
        query_string={"verification_code": code},
        headers=headers,
    )
    assert got.status_code == 200, got.get_json()
    return got.get_json()  # type: ignore[no-any-return]


def import_access_token(app: Flask, name: str, token: str, integration: str = "acme") -> None:
    """Import ``token`` over connection ``name`` with ``replace=True``, through the
    integration's first OAuth client, as the JSON Lines import does."""
    with app.app_context():
        client = zis_of(app).list_oauth_clients(integration)[0]
        line = {"integration": integration, "name": name, "oauth_client_name": client.name}
        report = import_jsonl([json.dumps({**line, "access_token": token})], replace=True)
    assert report.ok, report.results
