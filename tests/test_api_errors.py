"""Every error under the prefix is the service's envelope; the host's routes keep theirs."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from .helpers import PREFIX, assert_envelope, client_body


def test_unknown_path_under_prefix_is_an_enveloped_404(client: FlaskClient) -> None:
    assert_envelope(client.get(f"{PREFIX}/nope/at/all"), 404, "1302")
    assert_envelope(client.get(PREFIX), 404, "1302")


def test_wrong_method_is_an_enveloped_405_with_allow(client: FlaskClient) -> None:
    resp = client.put(f"{PREFIX}/connections/oauth/start/acme")
    assert_envelope(resp, 405, "1301")
    assert "POST" in resp.headers["Allow"]


def test_host_routes_keep_host_error_handling(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.errorhandler(404)
    def host_404(_: Exception) -> tuple[str, int]:
        return "host page not found", 404

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("host bug")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    c = app.test_client()
    resp = c.get("/missing")
    assert resp.status_code == 404 and resp.get_data(as_text=True) == "host page not found"
    resp = c.get("/boom")
    assert resp.status_code == 500 and resp.get_json() is None


def test_oversized_body_is_413(client: FlaskClient, bearer: dict[str, str]) -> None:
    big = {"name": "x" * (70 * 1024)}
    resp = client.post(f"{PREFIX}/connections/oauth/clients/acme", json=big, headers=bearer)
    assert_envelope(resp, 413, "1301")


def test_non_json_body_is_415_and_malformed_json_400(client: FlaskClient, bearer: dict[str, str]) -> None:
    url = f"{PREFIX}/connections/oauth/clients/acme"
    resp = client.post(url, data="name=x", headers=bearer, content_type="application/x-www-form-urlencoded")
    assert_envelope(resp, 415, "1301")
    resp = client.post(url, data="{not json", headers=bearer, content_type="application/json")
    assert_envelope(resp, 400, "1301", "not valid JSON")
    resp = client.post(url, json=["a", "list"], headers=bearer)
    assert_envelope(resp, 400, "1301", "JSON object")


def test_unexpected_exception_is_a_500_envelope_without_trace(
    make_app: Callable[..., Flask], bearer: dict[str, str]
) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    storage = app.extensions["zis_connections"].storage

    def explode(*_: object, **__: object) -> None:
        raise RuntimeError("secret-internal-detail")

    storage.list_clients = explode  # type: ignore[method-assign]
    from flask_zis_connections import ZISConnections

    zis: ZISConnections = app.extensions["zis_connections"].ext
    with app.app_context():
        token = zis.issue_access_token("acme")
    resp = app.test_client().get(
        f"{PREFIX}/connections/oauth/clients/acme", headers={"Authorization": f"Bearer {token}"}
    )
    err = assert_envelope(resp, 500, "1307")
    assert "secret-internal-detail" not in resp.get_data(as_text=True)
    assert "RuntimeError" not in err["detail"]


def test_invalid_integration_name_is_422(client: FlaskClient, app: Flask) -> None:
    zis = app.extensions["zis_connections"].ext
    with app.app_context():
        # A token can only be issued for a valid name, so use one and hit a bad path.
        token = zis.issue_access_token("acme")
    resp = client.get(
        f"{PREFIX}/connections/oauth/clients/ACME!", headers={"Authorization": f"Bearer {token}"}
    )
    # Another integration's token: forbidden before anything else is looked at.
    assert_envelope(resp, 403, "1200")


def test_unknown_fields_and_wrong_types_name_the_field(client: FlaskClient, bearer: dict[str, str]) -> None:
    url = f"{PREFIX}/connections/oauth/clients/acme"
    assert_envelope(client.post(url, json=client_body(colour="blue"), headers=bearer), 422, "1303", "colour")
    assert_envelope(client.post(url, json=client_body(pkce="yes"), headers=bearer), 422, "1303", "pkce")
    assert_envelope(client.post(url, json=client_body(client_id=5), headers=bearer), 422, "1303", "client_id")
    body = client_body()
    del body["token_url"]
    assert_envelope(client.post(url, json=body, headers=bearer), 422, "1303", "token_url")
