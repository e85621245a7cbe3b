"""Every provider preset, through a real flow and a real refresh against a provider playing it.

For each preset in the catalog a client is created with ``provider=<name>``; only the
URLs (and ``api_base_url``/``allowed_domains``) are given explicitly, to keep the flow on
the loopback provider. Everything else - client authentication, PKCE, scope separator,
offline parameters and scopes, token and refresh parameters, where the token sits in
the answer, the HTTP-200 error field, metadata rules, the assumed lifetime - comes from
the preset. The provider plays the matching real provider's quirks
(:mod:`tests.support.quirks`), is registered with the preset's authentication method and
PKCE rule, and records what it was sent, which is checked against the preset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask

from flask_zis_connections.domain import utcnow
from flask_zis_connections.providers import ProviderPreset, catalog

from .flow_driver import auth_header, connect, zis_of
from .helpers import PREFIX
from .live_provider import SUBDOMAIN, LiveProvider
from .support.quirks import (
    NOTION_WORKSPACE,
    QUICKBOOKS_REALM_ID,
    SALESFORCE_ID_PATH,
    SLACK_APP_ID,
    SLACK_BOT_USER_ID,
    SLACK_TEAM,
    SLACK_USER_ID,
    STRIPE_ACCOUNT,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

CLIENT_ID = "preset-client"
CLIENT_SECRET = "preset-client-secret"
#: The scopes every flow asks for: two, so the separator shows.
SCOPES = ["read", "write"]

#: The provider behaviour each preset is checked against (the rest: the plain demo).
BEHAVIOUR_OF: Mapping[str, str] = {
    "atlassian": "atlassian",
    "dropbox": "dropbox",
    "github": "github-form",
    "google": "google",
    "linear": "linear",
    "microsoft": "microsoft",
    "notion": "notion",
    "quickbooks": "quickbooks",
    "salesforce": "salesforce",
    "shopify": "shopify",
    "slack": "slack",
    "stripe": "stripe",
    "xero": "xero",
    "zendesk": "zendesk",
}

#: The account (subdomain) a per-account preset connects to.
ACCOUNT_OF: Mapping[str, str] = {"microsoft": "common", "shopify": "acme-shop"}


def expected_metadata(provider: LiveProvider) -> dict[str, dict[str, Any]]:
    """What the quirky presets must keep, spelled out (not derived from their rules)."""
    return {
        "notion": dict(NOTION_WORKSPACE),
        "quickbooks": {"realmId": QUICKBOOKS_REALM_ID},
        "salesforce": {
            "instance_url": provider.url,
            "id": f"https://login.salesforce.com{SALESFORCE_ID_PATH}",
        },
        "shopify": {"shop": "acme-shop.myshopify.com"},
        "slack": {
            "team.id": SLACK_TEAM["id"],
            "team.name": SLACK_TEAM["name"],
            "app_id": SLACK_APP_ID,
            "bot_user_id": SLACK_BOT_USER_ID,
            "authed_user.id": SLACK_USER_ID,
        },
        "stripe": {"stripe_user_id": STRIPE_ACCOUNT, "livemode": False},
    }


def lookup(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def moment(value: str | None) -> datetime:
    assert value is not None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_in_about(value: str | None, seconds: float | None) -> None:
    if seconds is None:
        assert value is None
        return
    expected = utcnow() + timedelta(seconds=seconds)
    assert abs((moment(value) - expected).total_seconds()) < 60, (value, expected)


def lifetime(preset: ProviderPreset, answer: Mapping[str, Any]) -> float | None:
    """The access token lifetime the extension should store for ``answer``.

    Only called for connections that have a refresh token - the answer's, or after a
    refresh answered without one, the kept one - so an answer without ``expires_in``
    gets the preset's assumed lifetime either way.
    """
    raw = lookup(answer, preset.token_response_fields.get("expires_in", "expires_in"))
    return float(raw) if raw is not None else preset.default_token_lifetime


def declared_metadata(preset: ProviderPreset, answer: Mapping[str, Any], callback: str) -> dict[str, Any]:
    """The values the preset's metadata rules pick from this answer and callback."""
    found: dict[str, Any] = {}
    for path in preset.metadata_from_token:
        value = lookup(answer, path)
        if value is not None:
            found[path] = value
    params = dict(parse_qsl(urlsplit(callback).query))
    for name in preset.metadata_from_callback:
        if name in params:
            found[name] = params[name]
    return found


@pytest.mark.parametrize("name", sorted(catalog()))
def test_preset_flow_and_refresh(
    name: str, make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> None:
    preset = catalog()[name]
    config: dict[str, Any] = {"BEHAVE_LIKE": BEHAVIOUR_OF.get(name, "plain")}
    if preset.issuer is not None:
        config["ISSUER"] = preset.issuer  # the provider says who it is, as the preset expects
    provider = provider_factory(**config)
    per_account = SUBDOMAIN in preset.auth_url or SUBDOMAIN in preset.token_url
    account = ACCOUNT_OF.get(name, "acme")

    def local(url: str) -> str:
        return provider.for_tenant(url) if per_account else url

    method = preset.token_endpoint_auth_method or "client_secret_basic"
    offline_scopes = [s for s in preset.offline_scopes.split() if s not in SCOPES]
    provider.register_client(
        CLIENT_ID,
        CLIENT_SECRET,
        token_endpoint_auth_method=method,
        require_pkce=bool(preset.pkce),
        scope=" ".join([*SCOPES, *offline_scopes]),
    )
    app = make_app()
    with app.app_context():
        client = zis_of(app).create_oauth_client(
            "acme",
            provider=name,
            name="p",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            auth_url=local(provider.auth_url),
            token_url=local(provider.token_url),
            revocation_url=local(provider.revocation_url) if preset.revocation_url else None,
            api_base_url=provider.url,
            allowed_domains=[],
        )
    assert client.quirks.provider == name
    headers = auth_header(app)
    body: dict[str, Any] = {
        "oauth_client_name": "p",
        "allow_offline_access": True,
        "permission_scopes": " ".join(SCOPES),
    }
    if per_account:
        body["oauth_url_subdomain"] = account
    conn = connect(app, provider, headers, **body)
    state = provider.state
    tenant = account if per_account else None

    # What the authorize request carried.
    sent = state.authorize_requests[0]
    assert sent["response_type"] == "code" and sent["client_id"] == CLIENT_ID
    assert sent["scope"] == preset.scope_separator.join([*SCOPES, *offline_scopes])
    for key, value in {**preset.authorize_params, **preset.offline_access_params}.items():
        assert sent.get(key) == value, key
    pkce = preset.pkce is not False  # unsaid: the client's default, PKCE on
    assert ("code_challenge" in sent) is pkce
    if pkce:
        assert sent["code_challenge_method"] == "S256"
    assert {c["tenant"] for c in state.authorize_calls} == {tenant}

    # What the code exchange carried, and what was read from the answer.
    [exchange] = [c for c in state.token_calls if c["grant_type"] == "authorization_code"]
    assert exchange["status"] == 200 and exchange["tenant"] == tenant
    assert exchange["auth_method"] == method
    assert exchange["extra_params"] == dict(preset.token_params)
    assert exchange["has_code_verifier"] is pkce
    answer = exchange["answer"]
    fields = preset.token_response_fields
    assert conn["access_token"] == lookup(answer, fields.get("access_token", "access_token"))
    assert conn["refresh_token"] == lookup(answer, fields.get("refresh_token", "refresh_token"))
    assert conn["refresh_token"], "allow_offline_access with the preset's options brings a refresh token"
    assert set(conn["permission_scope"].replace(",", " ").split()) == {*SCOPES, *offline_scopes}
    assert_in_about(conn["token_expiry"], lifetime(preset, answer))
    refresh_lifetime = lookup(answer, fields.get("refresh_token_expires_in", "refresh_token_expires_in"))
    if refresh_lifetime is None and lookup(answer, fields.get("refresh_token", "refresh_token")):
        # A silent provider's documented refresh-token lifetime (Xero's 60 days).
        refresh_lifetime = preset.default_refresh_token_lifetime
    assert_in_about(
        conn["refresh_token_expiry"], None if refresh_lifetime is None else float(refresh_lifetime)
    )
    callback = state.authorize_calls[-1]["location"]
    metadata = declared_metadata(preset, answer, callback)
    assert conn["metadata"] == metadata
    if name in expected_metadata(provider):
        assert metadata == expected_metadata(provider)[name]

    # A refresh: the preset's refresh params, the same authentication, a new token.
    resp = app.test_client().get(
        f"{PREFIX}/connections/refresh/acme", query_string={"name": "main"}, headers=headers
    )
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    [refresh] = [c for c in state.token_calls if c["grant_type"] == "refresh_token"]
    assert refresh["status"] == 200 and refresh["tenant"] == tenant
    assert refresh["auth_method"] == method
    assert refresh["refresh_token"] == conn["refresh_token"]
    assert refresh["extra_params"] == dict(preset.refresh_params)
    again = refresh["answer"]
    assert refreshed["access_token"] == lookup(again, fields.get("access_token", "access_token"))
    assert refreshed["access_token"] != conn["access_token"]
    assert refreshed["refresh_token"] == (
        lookup(again, fields.get("refresh_token", "refresh_token")) or conn["refresh_token"]
    )
    assert_in_about(refreshed["token_expiry"], lifetime(preset, again))
    assert refreshed["metadata"] == metadata
