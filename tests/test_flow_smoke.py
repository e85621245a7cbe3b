"""The whole flow once, end to end, on every backend (the detailed cases are in test_flow)."""

from __future__ import annotations

from flask import Flask

from flask_zis_connections import get_token

from .flow_driver import auth_header, connect, register
from .live_provider import LiveProvider


def test_flow_end_to_end_then_get_token(app: Flask, provider: LiveProvider) -> None:
    register(app, provider)
    headers = auth_header(app)
    conn = connect(app, provider, headers, allow_offline_access=True)
    assert conn["name"] == "main" and conn["integration"] == "acme"
    assert conn["access_token"] and conn["refresh_token"]
    assert conn["permission_scope"] == "read write"
    assert conn["origin_oauth_redirect_url"] == "https://client.int/callback?keep=1"
    assert "code=" in conn["raw_callback_params"]
    assert provider.state.code_exchange_count == 1
    with app.app_context():
        assert get_token("acme", "main") == conn["access_token"]
    assert provider.state.is_access_token_active(conn["access_token"])
