"""Where the service's API reference fixes a detail, clients may depend on it: we match it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_zis_connections.errors import ConfigurationError

from .flow_driver import auth_header, connect, register
from .helpers import PREFIX, assert_envelope
from .live_provider import LiveProvider

MEMORY = pytest.mark.parametrize("backend", ["memory"], indirect=True)


@MEMORY
@pytest.mark.parametrize(("configured", "shown"), [(123456, 123456), ("123456", 123456), (None, None)])
def test_zendesk_account_id_is_an_integer(
    make_app: Callable[..., Flask], provider: LiveProvider, configured: Any, shown: int | None
) -> None:
    app = make_app(ZIS_ACCOUNT_ID=configured)
    register(app, provider)
    conn = connect(app, provider, auth_header(app), name="main")
    assert conn["zendesk_account_id"] == shown
    assert type(conn["zendesk_account_id"]) is type(shown)


@MEMORY
@pytest.mark.parametrize("configured", ["acme", "12a", 1.5, True, [1]])
def test_a_non_numeric_account_id_fails_at_start(make_app: Callable[..., Flask], configured: Any) -> None:
    with pytest.raises(ConfigurationError, match="ZIS_ACCOUNT_ID"):
        make_app(ZIS_ACCOUNT_ID=configured)


@MEMORY
def test_details_start_with_the_reference_text(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    c = app.test_client()
    bearer = auth_header(app)
    cases = [
        (c.get(f"{PREFIX}/connections/acme?name=nope", headers=bearer), 404, "Not found"),
        (c.get(f"{PREFIX}/connections/acme", headers=bearer), 400, "Invalid request"),
        (c.get(f"{PREFIX}/connections/acme?name=x"), 401, "Unauthorized"),
        (c.get(f"{PREFIX}/connections/other?name=x", headers=bearer), 403, "Forbidden"),
        (c.get(f"{PREFIX}/no/such/route", headers=bearer), 404, "Not found"),
    ]
    for resp, status, text in cases:
        err = assert_envelope(resp, status, resp.get_json()["errors"][0]["code"])
        assert err["detail"].startswith(text), err["detail"]
    limited = make_app(ZIS_RATELIMIT="1 per minute")
    lc = limited.test_client()
    headers = auth_header(limited)
    lc.get(f"{PREFIX}/connections/oauth/clients/acme", headers=headers)
    err = assert_envelope(lc.get(f"{PREFIX}/connections/oauth/clients/acme", headers=headers), 429, "1300")
    assert err["detail"].startswith("Too many requests")


@MEMORY
def test_the_token_proxy_passes_the_refresh_grant_and_lifetimes(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    provider.register_client("host-client", "host-secret", token_endpoint_auth_method="client_secret_post")
    app = make_app(ZIS_HOST_TOKEN_URL=provider.token_url)
    c = app.test_client()
    url = f"{PREFIX}/connections/oauth/tokens/acme"
    first = c.post(
        url,
        json={
            "client_id": "host-client",
            "client_secret": "host-secret",
            "grant_type": "client_credentials",
            "expires_in": 600,
            "refresh_token_expires_in": 86400,
        },
    )
    assert first.status_code == 200, first.get_json()
    sent = provider.state.token_calls[-1]["form"]
    assert sent["expires_in"] == "600" and sent["refresh_token_expires_in"] == "86400"
    # The refresh grant goes through too (the provider refuses this unknown token: its
    # OAuth error comes back, which shows the request reached it as a refresh).
    refused = c.post(
        url,
        json={
            "client_id": "host-client",
            "client_secret": "host-secret",
            "grant_type": "refresh_token",
            "refresh_token": "not-a-real-one",
        },
    )
    assert_envelope(refused, 400, "1301", "invalid_grant")
    last = provider.state.token_calls[-1]
    assert last["grant_type"] == "refresh_token" and last["form"]["refresh_token"] == "not-a-real-one"
    for bad in ({"expires_in": "soon"}, {"expires_in": -1}, {"refresh_token_expires_in": True}):
        body = {"client_id": "host-client", "grant_type": "client_credentials", **bad}
        assert_envelope(c.post(url, json=body), 422, "1303", next(iter(bad)))


@MEMORY
def test_the_token_proxy_without_a_url_is_503(make_app: Callable[..., Flask]) -> None:
    resp = (
        make_app()
        .test_client()
        .post(
            f"{PREFIX}/connections/oauth/tokens/acme",
            json={"client_id": "c", "grant_type": "client_credentials"},
        )
    )
    assert_envelope(resp, 503, "1308", "ZIS_HOST_TOKEN_URL")
