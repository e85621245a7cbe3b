"""Real providers' quirks, each through a real flow and a real refresh.

The in-process Authlib provider plays one real provider at a time
(:mod:`tests.support.quirks`: Slack's comma-joined scopes and ``{"ok": ...}`` envelope,
Google's offline rule, Salesforce's missing ``expires_in``, Zendesk's requested
lifetimes, QuickBooks' ``realmId`` callback, GitHub's form-encoded answers). Each test
registers a client with the matching options spelled out - no preset - runs the flow
and a refresh through the HTTP API, and checks both sides: what reached the provider
and what the extension stored and shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_zis_connections.domain import ConnectionRecord, utcnow
from flask_zis_connections.storage import Storage

from .flow_driver import (
    ORIGIN_URL,
    auth_header,
    callback,
    connect,
    query,
    redirect_to_provider,
    register,
    start,
    zis_of,
)
from .helpers import PREFIX, assert_envelope, client_body
from .live_provider import LiveProvider
from .support.quirks import (
    GITHUB_REFRESH_TOKEN_LIFETIME,
    QUICKBOOKS_REALM_ID,
    QUICKBOOKS_REFRESH_TOKEN_LIFETIME,
    SALESFORCE_ID_PATH,
    SLACK_BOT_USER_ID,
    SLACK_TEAM,
    SLACK_USER_ID,
)

SLACK_METADATA = ["team.id", "team.name", "enterprise.id", "bot_user_id", "authed_user.id"]
#: Where Slack puts the installing user's token when the app asked for user scopes.
SLACK_USER_TOKEN_FIELDS = {
    "access_token": "authed_user.access_token",
    "refresh_token": "authed_user.refresh_token",
    "expires_in": "authed_user.expires_in",
    "token_type": "authed_user.token_type",
    "scope": "authed_user.scope",
}


@dataclass
class Quirky:
    """A host app with one OAuth client (``acme``) and the provider playing a real one."""

    app: Flask
    provider: LiveProvider
    headers: dict[str, str]

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.provider.state.token_calls

    def call(self, grant_type: str) -> dict[str, Any]:
        """The last token call of ``grant_type``."""
        return [c for c in self.calls if c["grant_type"] == grant_type][-1]

    @property
    def authorize_query(self) -> dict[str, str]:
        return self.provider.state.authorize_requests[-1]

    def connect(self, **body: Any) -> dict[str, Any]:
        return connect(self.app, self.provider, self.headers, **body)

    def refresh(self) -> TestResponse:
        return self.app.test_client().get(
            f"{PREFIX}/connections/refresh/acme", query_string={"name": "main"}, headers=self.headers
        )

    def show(self) -> TestResponse:
        return self.app.test_client().get(
            f"{PREFIX}/connections/acme", query_string={"name": "main"}, headers=self.headers
        )

    def record(self) -> ConnectionRecord | None:
        return self.storage.get_connection("acme", name="main")

    def callback_location(self, **body: Any) -> str:
        """Run the flow up to the callback; where the extension then sends the browser."""
        browser: FlaskClient = self.app.test_client()
        resp = start(browser, self.headers, **body)
        assert resp.status_code == 200, resp.get_json()
        provider_url = redirect_to_provider(browser, resp.get_json()["redirect_url"])
        back = callback(browser, self.provider.approve(provider_url))
        assert back.status_code == 302, back.get_data(as_text=True)
        return str(back.headers["Location"])


MakeQuirky = Callable[..., Quirky]


@pytest.fixture
def quirky(make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]) -> MakeQuirky:
    """``quirky("slack", provider_config={...}, provider_kw={...}, **client_options)``;
    ``per_account=True`` points the client at the provider's ``/t/{{subdomain}}/`` URLs,
    ``preset="slack"`` creates the client from that preset (URLs still the provider's)."""

    def build(
        behave_like: str,
        *,
        provider_config: dict[str, Any] | None = None,
        provider_kw: dict[str, Any] | None = None,
        per_account: bool = False,
        preset: str | None = None,
        **options: Any,
    ) -> Quirky:
        provider = provider_factory(BEHAVE_LIKE=behave_like, **(provider_config or {}))
        if per_account:
            options.setdefault("auth_url", provider.for_tenant(provider.auth_url))
            options.setdefault("token_url", provider.for_tenant(provider.token_url))
        app = make_app()
        if preset is None:
            register(app, provider, provider_kw=provider_kw, **options)
        else:
            register_preset(app, provider, preset, provider_kw=provider_kw, **options)
        return Quirky(app, provider, auth_header(app))

    return build


def register_preset(
    app: Flask, live: LiveProvider, preset: str, *, provider_kw: dict[str, Any] | None, **options: Any
) -> None:
    """:func:`register` for a preset client (whose ``provider`` option that function's
    own ``provider`` argument would shadow), its URLs pointed at ``live``."""
    kw = dict(provider_kw or {})
    if "token_endpoint_auth_method" in options:
        kw.setdefault("token_endpoint_auth_method", options["token_endpoint_auth_method"])
    live.register_client("demo-client", "demo-secret", **kw)
    options = {
        "auth_url": live.auth_url,
        "token_url": live.token_url,
        "revocation_url": None,
        "api_base_url": live.url,
        "allowed_domains": [],
        "default_scopes": "read write",
        **options,
    }
    with app.app_context():
        zis_of(app).create_oauth_client(
            "acme",
            provider=preset,
            name="acme",
            client_id="demo-client",
            client_secret="demo-secret",
            **options,
        )


def moment(value: str | None) -> datetime:
    assert value is not None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_in_about(value: str | None, seconds: float) -> None:
    """``value`` (connection JSON time) is ``seconds`` from now, give or take a minute."""
    expected = utcnow() + timedelta(seconds=seconds)
    assert abs((moment(value) - expected).total_seconds()) < 60, (value, expected)


def scope_names(scope: str) -> set[str]:
    return set(re.split(r"[ ,]+", scope.strip()))


# -- Slack --------------------------------------------------------------------------------


def test_slack_bot_token_flow_and_refresh(quirky: MakeQuirky) -> None:
    q = quirky(
        "slack",
        token_endpoint_auth_method="client_secret_post",
        scope_separator=",",
        ok_field="ok",
        metadata_from_token=SLACK_METADATA,
    )
    conn = q.connect(allow_offline_access=True)

    assert q.authorize_query["scope"] == "read,write"
    assert "scope=read%2Cwrite" in q.provider.state.authorize_calls[0]["raw_query"]
    exchange = q.call("authorization_code")
    answer = exchange["answer"]
    assert exchange["auth_method"] == "client_secret_post" and exchange["status"] == 200
    assert answer["ok"] is True and answer["token_type"] == "bot" and answer["scope"] == "read,write"
    assert conn["access_token"] == answer["access_token"]
    assert conn["access_token"] != answer["authed_user"]["access_token"]
    assert conn["refresh_token"] == answer["refresh_token"]
    assert conn["token_type"] == "bot"
    assert conn["permission_scope"] == "read write"  # Slack's commas, stored the RFC 6749 way
    assert_in_about(conn["token_expiry"], 3600)
    slack_metadata = {
        "team.id": SLACK_TEAM["id"],
        "team.name": SLACK_TEAM["name"],
        "bot_user_id": SLACK_BOT_USER_ID,
        "authed_user.id": SLACK_USER_ID,
    }
    assert conn["metadata"] == slack_metadata  # enterprise is null: not kept

    resp = q.refresh()
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    call = q.call("refresh_token")
    assert call["refresh_token"] == conn["refresh_token"]
    assert call["auth_method"] == "client_secret_post"
    assert "authed_user" not in call["answer"]  # Slack's refresh answer is top-level only
    assert refreshed["access_token"] == call["answer"]["access_token"] != conn["access_token"]
    assert refreshed["refresh_token"] == call["answer"]["refresh_token"]
    assert refreshed["token_type"] == "bot"
    assert refreshed["metadata"] == slack_metadata
    assert q.show().get_json()["metadata"] == slack_metadata


def test_slack_user_token_through_token_response_fields(quirky: MakeQuirky) -> None:
    q = quirky(
        "slack",
        provider_config={"SLACK_TOKEN_OWNER": "user"},
        token_endpoint_auth_method="client_secret_post",
        scope_separator=",",
        ok_field="ok",
        token_response_fields=SLACK_USER_TOKEN_FIELDS,
        metadata_from_token=["team.id", "authed_user.id"],
    )
    conn = q.connect(allow_offline_access=True)

    user = q.call("authorization_code")["answer"]["authed_user"]
    assert conn["access_token"] == user["access_token"]
    assert conn["refresh_token"] == user["refresh_token"]
    assert conn["token_type"] == "user"
    assert conn["permission_scope"] == "read write"
    assert_in_about(conn["token_expiry"], user["expires_in"])
    assert conn["metadata"] == {"team.id": SLACK_TEAM["id"], "authed_user.id": SLACK_USER_ID}


def test_slack_user_token_refresh_reads_slacks_top_level_refresh_answer(quirky: MakeQuirky) -> None:
    """Slack answers a refresh of a rotating user token at the top level
    (``{"ok": true, "access_token": ..., "token_type": "user", ...}``, no ``authed_user``),
    so a client reading the code exchange's ``authed_user.*`` must still read that."""
    q = quirky(
        "slack",
        provider_config={"SLACK_TOKEN_OWNER": "user"},
        token_endpoint_auth_method="client_secret_post",
        scope_separator=",",
        ok_field="ok",
        token_response_fields=SLACK_USER_TOKEN_FIELDS,
    )
    conn = q.connect(allow_offline_access=True)

    resp = q.refresh()
    call = q.call("refresh_token")
    assert call["status"] == 200 and call["answer"]["token_type"] == "user"
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    assert refreshed["access_token"] == call["answer"]["access_token"] != conn["access_token"]
    assert refreshed["refresh_token"] == call["answer"]["refresh_token"]


def test_slack_refuses_space_separated_scopes(quirky: MakeQuirky) -> None:
    q = quirky("slack", token_endpoint_auth_method="client_secret_post", ok_field="ok")
    location = q.callback_location()

    assert q.authorize_query["scope"] == "read write"
    assert location.startswith(ORIGIN_URL)
    assert query(location)["error"] == ["invalid_scope"]
    assert q.calls == [] and q.record() is None


@pytest.mark.parametrize("ok_field", ["ok", None])
def test_slack_http_200_error_at_the_callback_stores_nothing(
    quirky: MakeQuirky, ok_field: str | None
) -> None:
    q = quirky(
        "slack",
        token_endpoint_auth_method="client_secret_post",
        scope_separator=",",
        ok_field=ok_field,
    )
    q.provider.state.inject_token_fault("invalid_grant")
    location = q.callback_location()

    [exchange] = q.calls
    assert exchange["status"] == 200 and exchange["answer"] == {"ok": False, "error": "invalid_code"}
    assert location.startswith(ORIGIN_URL)
    got = query(location)
    assert got["error"] == ["invalid_code"] and "verification_code" not in got
    assert q.record() is None


@pytest.mark.parametrize(
    ("preset", "behave_like", "answer"),
    [
        ("slack", "slack", {"ok": False, "error": "invalid_refresh_token"}),
        ("github", "github-form", {"error": "bad_refresh_token"}),
    ],
)
def test_a_refused_refresh_token_in_the_providers_words_asks_for_reauthorization(
    quirky: MakeQuirky, preset: str, behave_like: str, answer: dict[str, Any]
) -> None:
    """Slack refuses a dead refresh token with HTTP 200 ``{"ok": false, "error":
    "invalid_refresh_token"}``, GitHub with HTTP 200 ``error=bad_refresh_token``: as
    after ``invalid_grant``, a person must connect again - no back-off and retry of a
    refresh token that will never work. (The preset's client, pointed at the provider.)"""
    q = quirky(behave_like, preset=preset, token_endpoint_auth_method="client_secret_post")
    q.connect(allow_offline_access=True)
    q.provider.state.inject_token_fault("invalid_grant")

    resp = q.refresh()
    call = q.call("refresh_token")
    assert call["status"] == 200 and call["answer"] == answer
    assert_envelope(resp, 422, "1303")
    rec = q.record()
    assert rec is not None and rec.needs_reauth


# -- Google -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offline_params", "allow_offline", "gets_refresh_token"),
    [
        ({}, True, False),
        ({"access_type": "offline", "prompt": "consent"}, False, False),
        ({"access_type": "offline"}, True, False),
        ({"access_type": "offline", "prompt": "consent"}, True, True),
    ],
    ids=["no-offline-params", "offline-not-asked", "without-prompt-consent", "offline"],
)
def test_google_refresh_token_only_for_offline_consent(
    quirky: MakeQuirky, offline_params: dict[str, str], allow_offline: bool, gets_refresh_token: bool
) -> None:
    q = quirky(
        "google",
        token_endpoint_auth_method="client_secret_post",
        offline_access_params=offline_params,
    )
    conn = q.connect(allow_offline_access=allow_offline)

    sent = q.authorize_query
    for key, value in offline_params.items():
        assert (sent.get(key) == value) is allow_offline
    assert ("refresh_token" in q.call("authorization_code")["answer"]) is gets_refresh_token
    assert conn["access_token"]
    if not gets_refresh_token:
        assert conn["refresh_token"] is None
        assert_envelope(q.refresh(), 422, "1303", "no refresh token")
        assert q.provider.state.refresh_call_count == 0
        return

    refresh_token = conn["refresh_token"]
    resp = q.refresh()
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    call = q.call("refresh_token")
    assert call["refresh_token"] == refresh_token and call["auth_method"] == "client_secret_post"
    assert "refresh_token" not in call["answer"]  # Google does not rotate ...
    assert refreshed["refresh_token"] == refresh_token  # ... so the old one is kept
    assert refreshed["access_token"] == call["answer"]["access_token"] != conn["access_token"]
    assert q.provider.state.is_refresh_token_active(refresh_token)
    resp = q.refresh()  # and it keeps working
    assert resp.status_code == 200 and resp.get_json()["refresh_token"] == refresh_token


# -- Salesforce ---------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", [7200, None])
def test_salesforce_no_expires_in_instance_url_and_no_rotation(
    quirky: MakeQuirky, lifetime: int | None
) -> None:
    q = quirky(
        "salesforce",
        provider_kw={"scope": "read write refresh_token"},
        token_endpoint_auth_method="client_secret_post",
        offline_scopes="refresh_token",
        default_token_lifetime=lifetime,
        metadata_from_token=["instance_url", "id"],
        api_base_url="{{metadata.instance_url}}",
    )
    conn = q.connect(allow_offline_access=True)

    assert q.authorize_query["scope"] == "read write refresh_token"
    answer = q.call("authorization_code")["answer"]
    assert "expires_in" not in answer and answer["instance_url"] == q.provider.url
    assert conn["refresh_token"] == answer["refresh_token"]
    if lifetime is None:
        assert conn["token_expiry"] is None
    else:
        assert_in_about(conn["token_expiry"], lifetime)
    metadata = {
        "instance_url": q.provider.url,
        "id": f"https://login.salesforce.com{SALESFORCE_ID_PATH}",
    }
    assert conn["metadata"] == metadata

    resp = q.refresh()
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    call = q.call("refresh_token")
    assert "refresh_token" not in call["answer"] and "expires_in" not in call["answer"]
    assert refreshed["access_token"] == call["answer"]["access_token"] != conn["access_token"]
    assert refreshed["refresh_token"] == conn["refresh_token"]
    assert q.provider.state.is_refresh_token_active(conn["refresh_token"])
    if lifetime is None:
        assert refreshed["token_expiry"] is None
    else:
        assert_in_about(refreshed["token_expiry"], lifetime)
    assert refreshed["metadata"] == metadata


def test_salesforce_refresh_token_needs_the_refresh_token_scope(quirky: MakeQuirky) -> None:
    q = quirky(
        "salesforce",
        provider_kw={"scope": "read write refresh_token"},
        token_endpoint_auth_method="client_secret_post",
        default_token_lifetime=7200,
    )
    conn = q.connect(allow_offline_access=True)
    assert q.authorize_query["scope"] == "read write"
    # No refresh token, so no assumed lifetime either: the token is used until it fails.
    assert conn["refresh_token"] is None and conn["token_expiry"] is None


# -- Zendesk ------------------------------------------------------------------------------


@pytest.mark.parametrize("token_params", [{"expires_in": "7200"}, {}], ids=["lifetime-asked", "not-asked"])
def test_zendesk_token_and_refresh_params_on_the_accounts_host(
    quirky: MakeQuirky, token_params: dict[str, str]
) -> None:
    refresh_params = {"expires_in": "3600", "refresh_token_expires_in": "2592000"}
    q = quirky(
        "zendesk",
        per_account=True,
        token_endpoint_auth_method="client_secret_post",
        token_params=token_params,
        refresh_params=refresh_params,
    )
    conn = q.connect(allow_offline_access=True, oauth_url_subdomain="acme")

    assert [c["tenant"] for c in q.provider.state.authorize_calls] == ["acme", "acme"]
    exchange = q.call("authorization_code")
    assert exchange["tenant"] == "acme"
    assert exchange["extra_params"] == token_params  # and no refresh_params
    if token_params:
        assert exchange["answer"]["expires_in"] == 7200
        assert_in_about(conn["token_expiry"], 7200)
    else:
        assert "expires_in" not in exchange["answer"]
        assert conn["token_expiry"] is None
    assert conn["refresh_token_expiry"] is None
    assert conn["oauth_url_subdomain"] == "acme"

    resp = q.refresh()
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    call = q.call("refresh_token")
    assert call["tenant"] == "acme"
    assert call["extra_params"] == refresh_params  # and no token_params
    assert call["answer"]["expires_in"] == 3600
    assert refreshed["access_token"] == call["answer"]["access_token"]
    assert_in_about(refreshed["token_expiry"], 3600)
    assert_in_about(refreshed["refresh_token_expiry"], 2592000)


def test_zendesk_answers_only_on_the_accounts_host(quirky: MakeQuirky) -> None:
    """A client pointed at the bare host (no account) gets Zendesk's 404 page."""
    q = quirky("zendesk", token_endpoint_auth_method="client_secret_post")
    browser = q.app.test_client()
    resp = start(browser, q.headers)
    provider_url = redirect_to_provider(browser, resp.get_json()["redirect_url"])
    with pytest.raises(AssertionError, match="404"):
        q.provider.approve(provider_url)


# -- QuickBooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("mapped", [True, False], ids=["x-field-mapped", "not-mapped"])
def test_quickbooks_realm_id_from_the_callback_and_refresh_token_expiry(
    quirky: MakeQuirky, mapped: bool
) -> None:
    fields = {"refresh_token_expires_in": "x_refresh_token_expires_in"} if mapped else {}
    q = quirky("quickbooks", token_response_fields=fields, metadata_from_callback=["realmId"])
    browser = q.app.test_client()
    conn = connect(q.app, q.provider, q.headers, browser=browser, allow_offline_access=True)

    assert f"realmId={QUICKBOOKS_REALM_ID}" in q.provider.state.authorize_calls[-1]["location"]
    answer = q.call("authorization_code")["answer"]
    assert answer["expires_in"] == "3600"  # a numeric string
    assert answer["x_refresh_token_expires_in"] == QUICKBOOKS_REFRESH_TOKEN_LIFETIME
    assert conn["metadata"] == {"realmId": QUICKBOOKS_REALM_ID}
    assert f"realmId={QUICKBOOKS_REALM_ID}" in conn["raw_callback_params"]
    assert_in_about(conn["token_expiry"], 3600)
    if mapped:
        assert_in_about(conn["refresh_token_expiry"], QUICKBOOKS_REFRESH_TOKEN_LIFETIME)
    else:
        assert conn["refresh_token_expiry"] is None

    resp = q.refresh()
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    call = q.call("refresh_token")
    assert call["auth_method"] == "client_secret_basic"
    assert refreshed["refresh_token"] == call["answer"]["refresh_token"] != conn["refresh_token"]
    assert refreshed["metadata"] == {"realmId": QUICKBOOKS_REALM_ID}  # kept: not in a refresh
    assert_in_about(refreshed["token_expiry"], 3600)
    if mapped:
        assert_in_about(refreshed["refresh_token_expiry"], QUICKBOOKS_REFRESH_TOKEN_LIFETIME)
    else:
        assert refreshed["refresh_token_expiry"] is None


# -- GitHub (form-encoded answers) --------------------------------------------------------


def test_form_encoded_answers_are_stored_like_json(quirky: MakeQuirky) -> None:
    q = quirky("github-form", token_endpoint_auth_method="client_secret_post")
    conn = q.connect(allow_offline_access=True)

    exchange = q.call("authorization_code")
    assert exchange["content_type"] == "application/x-www-form-urlencoded"
    answer = exchange["answer"]
    assert conn["access_token"] == answer["access_token"]
    assert conn["refresh_token"] == answer["refresh_token"]
    assert conn["token_type"] == "bearer"
    assert scope_names(conn["permission_scope"]) == {"read", "write"}
    assert_in_about(conn["token_expiry"], 3600)  # "3600" in a form body
    assert_in_about(conn["refresh_token_expiry"], GITHUB_REFRESH_TOKEN_LIFETIME)
    assert conn["oauth_access_token_response_body"].startswith("access_token=")

    resp = q.refresh()
    assert resp.status_code == 200, resp.get_json()
    refreshed = resp.get_json()
    call = q.call("refresh_token")
    assert call["content_type"] == "application/x-www-form-urlencoded"
    assert refreshed["access_token"] == call["answer"]["access_token"] != conn["access_token"]
    assert refreshed["refresh_token"] == call["answer"]["refresh_token"]
    assert_in_about(refreshed["token_expiry"], 3600)


def test_form_encoded_http_200_error_at_the_callback_stores_nothing(quirky: MakeQuirky) -> None:
    q = quirky("github-form", token_endpoint_auth_method="client_secret_post")
    q.provider.state.inject_token_fault("invalid_grant")
    location = q.callback_location()

    [exchange] = q.calls
    assert exchange["status"] == 200
    assert exchange["answer"] == {"error": "bad_verification_code"}
    got = query(location)
    assert location.startswith(ORIGIN_URL)
    assert got["error"] == ["bad_verification_code"] and "verification_code" not in got
    assert q.record() is None


# -- scope separator on the token request -------------------------------------------------


def test_comma_separated_scopes_on_client_credentials_requests(quirky: MakeQuirky) -> None:
    q = quirky("linear", token_endpoint_auth_method="client_secret_post", scope_separator=",")
    resp = start(q.app.test_client(), q.headers, grant_type="client_credentials")
    assert resp.status_code == 200, resp.get_json()

    [call] = q.calls
    assert call["grant_type"] == "client_credentials" and call["status"] == 200
    assert call["scope"] == "read,write"
    rec = q.record()
    assert rec is not None and rec.permission_scope == "read write"

    refreshed = q.refresh()
    assert refreshed.status_code == 200, refreshed.get_json()
    assert [c["scope"] for c in q.calls] == ["read,write", "read,write"]


# -- invalid options over HTTP ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"scope_separator": ";"}, "scope_separator"),
        ({"scope_separator": ", "}, "scope_separator"),
        ({"token_params": {"grant_type": "password"}}, "token_params"),
        ({"token_params": {"code_verifier": "x"}}, "token_params"),
        ({"token_params": {"expires_in": 7200}}, "token_params"),
        ({"refresh_params": {"refresh_token": "stolen"}}, "refresh_params"),
        ({"metadata_from_callback": ["code"]}, "metadata_from_callback"),
        ({"metadata_from_callback": ["state"]}, "metadata_from_callback"),
        ({"metadata_from_callback": "realmId"}, "metadata_from_callback"),
        ({"metadata_from_token": ["a..b"]}, "metadata_from_token"),
        ({"api_base_url": "http://api.acme.test"}, "api_base_url"),
        ({"api_base_url": "{{metadata.instance_url"}, "api_base_url"),
        ({"token_response_fields": {"password": "x"}}, "token_response_fields"),
        ({"token_response_fields": {"access_token": "a b"}}, "token_response_fields"),
        ({"ok_field": "o k"}, "ok_field"),
        ({"default_token_lifetime": 0}, "default_token_lifetime"),
        ({"default_token_lifetime": "7200"}, "default_token_lifetime"),
        ({"allowed_domains": ["not a host"]}, "allowed_domains"),
        ({"provider": "nosuchprovider"}, "provider"),
    ],
)
def test_invalid_quirk_options_over_http_are_422_naming_the_field(
    make_app: Callable[..., Flask], options: dict[str, Any], field: str
) -> None:
    app = make_app(ZIS_ALLOW_INSECURE_HTTP=False)
    resp = app.test_client().post(
        f"{PREFIX}/connections/oauth/clients/acme", json=client_body(**options), headers=auth_header(app)
    )
    assert_envelope(resp, 422, "1303", field)
    assert app.test_client().get(
        f"{PREFIX}/connections/oauth/clients/acme", headers=auth_header(app)
    ).get_json() == {"clients": []}


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_valid_quirk_options_over_http_are_stored_and_shown(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_ALLOW_INSECURE_HTTP=False)
    options: dict[str, Any] = {
        "scope_separator": ",",
        "offline_scopes": "offline_access",
        "token_params": {"expires_in": "7200"},
        "refresh_params": {"expires_in": "3600"},
        "default_token_lifetime": 7200,
        "api_base_url": "https://api.acme.test",
        "allowed_domains": ["files.acme.test"],
        "token_response_fields": {"access_token": "authed_user.access_token"},
        "ok_field": "ok",
        "metadata_from_token": ["team.id"],
        "metadata_from_callback": ["realmId"],
    }
    resp = app.test_client().post(
        f"{PREFIX}/connections/oauth/clients/acme", json=client_body(**options), headers=auth_header(app)
    )
    assert resp.status_code == 201, resp.get_json()
    shown = resp.get_json()
    assert {key: shown[key] for key in options} == options
    assert "client_secret" not in shown
