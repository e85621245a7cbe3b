"""OAuth clients: Python API, REST API, start-up config and CLI."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_zis_connections import ZISConnections
from flask_zis_connections.errors import Conflict, InvalidValue

from .helpers import PREFIX, assert_envelope, client_body

URL = f"{PREFIX}/connections/oauth/clients/acme"


def test_create_list_update_delete_over_rest(client: FlaskClient, bearer: dict[str, str]) -> None:
    resp = client.post(URL, json=client_body(), headers=bearer)
    assert resp.status_code == 201
    created = resp.get_json()
    assert created["name"] == "acme" and created["has_client_secret"] is True
    assert "client_secret" not in created
    assert created["created_by"].startswith("api-token:")
    assert "s3cr3t" not in resp.get_data(as_text=True)

    listed = client.get(URL, headers=bearer).get_json()["clients"]
    assert [c["uuid"] for c in listed] == [created["uuid"]]
    assert "s3cr3t" not in client.get(URL, headers=bearer).get_data(as_text=True)

    resp = client.patch(f"{URL}/{created['uuid']}", json={"default_scopes": "read"}, headers=bearer)
    assert resp.status_code == 200
    assert resp.get_json()["default_scopes"] == "read"
    assert resp.get_json()["client_id"] == "cid-123"
    assert resp.get_json()["created_by"] == created["created_by"]  # set once, kept on update

    assert client.delete(f"{URL}/{created['uuid']}", headers=bearer).status_code == 200
    assert client.get(URL, headers=bearer).get_json()["clients"] == []
    assert_envelope(client.delete(f"{URL}/{created['uuid']}", headers=bearer), 404, "1302")


def test_duplicate_name_is_409_and_changes_nothing(client: FlaskClient, bearer: dict[str, str]) -> None:
    assert client.post(URL, json=client_body(), headers=bearer).status_code == 201
    assert_envelope(
        client.post(URL, json=client_body(client_id="other"), headers=bearer), 409, "1304", "acme"
    )
    listed = client.get(URL, headers=bearer).get_json()["clients"]
    assert [c["client_id"] for c in listed] == ["cid-123"]


def test_rename_onto_existing_name_is_409(client: FlaskClient, bearer: dict[str, str]) -> None:
    client.post(URL, json=client_body(), headers=bearer)
    second = client.post(URL, json=client_body(name="second"), headers=bearer).get_json()
    resp = client.patch(f"{URL}/{second['uuid']}", json={"name": "acme"}, headers=bearer)
    assert_envelope(resp, 409, "1304")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"token_url": "ftp://acme.test/token"}, "token_url"),
        ({"token_url": "not a url"}, "token_url"),
        ({"auth_url": "https://user:pw@acme.test/a"}, "auth_url"),
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
        ({"grant_type": "password"}, "grant_type"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method"),
        ({"authorize_params": {"state": "x"}}, "authorize_params"),
        ({"authorize_params": ["x"]}, "authorize_params"),
        ({"default_scopes": 'read "quoted"'}, "default_scopes"),
        ({"revocation_url": 5}, "revocation_url"),
    ],
)
def test_invalid_values_are_422_naming_the_field(
    client: FlaskClient, bearer: dict[str, str], override: dict[str, object], field: str
) -> None:
    assert_envelope(client.post(URL, json=client_body(**override), headers=bearer), 422, "1303", field)
    assert client.get(URL, headers=bearer).get_json()["clients"] == []


def test_https_required_unless_insecure_allowed(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_ALLOW_INSECURE_HTTP=False)
    zis: ZISConnections = app.extensions["zis_connections"].ext
    with app.app_context():
        with pytest.raises(InvalidValue, match=r"token_url.*https"):
            zis.create_oauth_client("acme", **client_body("http://acme.test"))
        created = zis.create_oauth_client("acme", **client_body("https://acme.test"))
        assert created.name == "acme" and created.uuid


def test_python_api_duplicate_and_subdomain_placeholder(app: Flask, zis: ZISConnections) -> None:
    with app.app_context():
        c = zis.create_oauth_client(
            "acme",
            name="acme",
            client_id="x",
            client_secret="y",
            auth_url="https://{{subdomain}}.acme.test/oauth/authorize",
            token_url="https://{{subdomain}}.acme.test/oauth/token",
            default_scopes="read write",
        )
        assert c.auth_url == "https://{{subdomain}}.acme.test/oauth/authorize"
        with pytest.raises(Conflict):
            zis.create_oauth_client("acme", **client_body())
        assert [x.uuid for x in zis.list_oauth_clients("acme")] == [c.uuid]


def test_config_clients_are_upserted_at_start(make_app: Callable[..., Flask], tmp_path: object) -> None:
    conf = {"acme": [client_body(), client_body(name="b", grant_type="client_credentials", auth_url=None)]}
    app = make_app(ZIS_OAUTH_CLIENTS=conf)
    zis: ZISConnections = app.extensions["zis_connections"].ext
    with app.app_context():
        names = sorted(c.name for c in zis.list_oauth_clients("acme"))
        assert names == ["acme", "b"]


def test_config_client_invalid_fails_start(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(InvalidValue, match="token_url"):
        make_app(ZIS_OAUTH_CLIENTS={"acme": [client_body(token_url="ftp://x")]})


def test_cli_clients_create_list_delete(app: Flask) -> None:
    runner = app.test_cli_runner()
    create = "zis clients create acme --name acme --client-id cid"
    urls = "--auth-url https://acme.test/a --token-url https://acme.test/t"
    result = runner.invoke(args=f"{create} {urls}".split(), env={"ZIS_CLIENT_SECRET": "cli-secret-value"})
    assert result.exit_code == 0, result.output
    listing = runner.invoke(args=["zis", "clients", "list", "acme"]).output
    assert "acme" in listing and "cli-secret-value" not in listing
    uuid = listing.split("\t")[2]
    assert runner.invoke(args=["zis", "clients", "delete", "acme", uuid]).exit_code == 0
    assert runner.invoke(args=["zis", "clients", "list", "acme"]).output == ""
    bad = runner.invoke(args=f"{create} --token-url ftp://x".split())
    assert bad.exit_code != 0 and "token_url" in bad.output
