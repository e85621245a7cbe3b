"""Bearer token, basic auth and API key connections, and the listing of every type.

Exercised over HTTP where the service's Connections API defines them (create, show,
change, delete, list), through the Python API where it is the host's (``get_token``,
``zis.session``), against real databases, a real OAuth provider for the OAuth
connections they share names and listings with, and loopback servers that record what
reached them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from flask import Flask
from werkzeug.test import TestResponse

from flask_zis_connections import ConnectionNotFound, ZISConnections, connection_created
from flask_zis_connections.errors import Conflict, InvalidValue, WrongConnectionType
from flask_zis_connections.session import ForbiddenDestination

from .flow_driver import auth_header, callback, connect, redirect_to_provider, register, start, zis_of
from .helpers import PREFIX, assert_envelope
from .hostile_server import HostileHandler, HostileServer
from .live_provider import LiveProvider

MEMORY = pytest.mark.parametrize("backend", ["memory"], indirect=True)
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
BASE = f"{PREFIX}/integrations/acme/connections"

#: A valid body of each type; its secret is unmistakable in a file or a log.
BODIES: dict[str, dict[str, Any]] = {
    "bearer_token": {"name": "bearer", "token": "tok-SEKRIT-bearer", "allowed_domain": "api.example.com"},
    "basic_auth": {
        "name": "basic",
        "username": "robot-user",
        "password": "pw-SEKRIT-basic",
        "allowed_domain": "api.example.com",
    },
    "api_key": {
        "name": "key",
        "api_key": "key-SEKRIT-api",
        "header_name": "X-Api-Key",
        "allowed_domain": "api.example.com",
    },
}
SECRET_FIELD = {"bearer_token": "token", "basic_auth": "password", "api_key": "api_key"}
TYPES = list(BODIES)


class Api:
    """The integration ``acme``'s view of the HTTP API, with a valid bearer token."""

    def __init__(self, app: Flask, integration: str = "acme") -> None:
        self.app = app
        self.headers = auth_header(app, integration)
        self.client = app.test_client()
        self.base = f"{PREFIX}/integrations/{integration}/connections"

    def post(self, kind: str, body: Any) -> TestResponse:
        return self.client.post(f"{self.base}/{kind}", json=body, headers=self.headers)

    def get(self, path: str, **query: str) -> TestResponse:
        return self.client.get(f"{self.base}/{path}", query_string=query, headers=self.headers)

    def patch(self, kind: str, name: str, body: Any) -> TestResponse:
        return self.client.patch(f"{self.base}/{kind}/{name}", json=body, headers=self.headers)

    def delete(self, kind: str, name: str) -> TestResponse:
        return self.client.delete(f"{self.base}/{kind}/{name}", headers=self.headers)

    def names(self) -> list[str]:
        body = self.get("all").get_json()
        return sorted(
            item["name"] for kind in ("api_key", "basic_auth", "bearer_token", "oauth") for item in body[kind]
        )


@pytest.fixture
def api(app: Flask) -> Api:
    return Api(app)


def _expected(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in body.items() if k != SECRET_FIELD[kind]}
    return {**shown, SECRET_FIELD[kind]: "*****"}


# -- create, show, change, delete ------------------------------------------------------------
@pytest.mark.parametrize("kind", TYPES)
def test_create_show_change_delete(api: Api, kind: str) -> None:
    body = BODIES[kind]
    name = body["name"]
    created = api.post(kind, body)
    assert created.status_code == 201, created.get_json()
    obj = created.get_json()[kind]
    assert set(created.get_json()) == {kind}
    assert {k: v for k, v in obj.items() if k not in ("created_at", "updated_at")} == _expected(kind, body)
    assert TIME_RE.fullmatch(obj["created_at"]) and TIME_RE.fullmatch(obj["updated_at"])
    assert api.get(f"{kind}/{name}").get_json() == {kind: obj}

    secret_field = SECRET_FIELD[kind]
    changed = api.patch(kind, name, {secret_field: "new-SEKRIT", "allowed_domain": "Other.Example.com."})
    assert changed.status_code == 200, changed.get_json()
    after = changed.get_json()[kind]
    assert after["allowed_domain"] == "other.example.com"
    assert after[secret_field] == "*****" and after["created_at"] == obj["created_at"]
    assert api.get(f"{kind}/{name}").get_json() == {kind: after}
    with api.app.app_context():
        conn = zis_of(api.app).get_connection("acme", name)
    assert (conn.type, conn.access_token, conn.allowed_domain) == (kind, "new-SEKRIT", "other.example.com")
    assert conn.oauth_client_uuid is None and conn.token_expiry is None

    deleted = api.delete(kind, name)
    assert deleted.status_code == 200 and deleted.get_json() == {"deleted": True, "type": kind, "name": name}
    assert_envelope(api.get(f"{kind}/{name}"), 404, "1302", "Not found")
    assert_envelope(api.delete(kind, name), 404, "1302")
    assert api.names() == []


@MEMORY
def test_patch_changes_only_what_it_names(api: Api) -> None:
    assert api.post("basic_auth", BODIES["basic_auth"]).status_code == 201
    assert api.patch("basic_auth", "basic", {"username": "someone-else", "name": "basic"}).status_code == 200
    with api.app.app_context():
        conn = zis_of(api.app).get_connection("acme", "basic")
    assert (conn.username, conn.password, conn.allowed_domain) == (
        "someone-else",
        "pw-SEKRIT-basic",
        "api.example.com",
    )
    assert api.post("api_key", BODIES["api_key"]).status_code == 201
    # Moving the key to another header needs the key again (it is write-only over HTTP).
    moved = {"header_name": "Authorization", "api_key": BODIES["api_key"]["api_key"]}
    assert api.patch("api_key", "key", moved).get_json()["api_key"]["header_name"] == "Authorization"


def test_a_type_is_reached_only_under_its_own_path(api: Api) -> None:
    assert api.post("bearer_token", BODIES["bearer_token"]).status_code == 201
    assert_envelope(api.get("basic_auth/bearer"), 404, "1302")
    assert_envelope(api.patch("api_key", "bearer", {"api_key": "x"}), 404, "1302")
    assert_envelope(api.delete("basic_auth", "bearer"), 404, "1302")
    assert_envelope(api.get("oauth/bearer"), 404, "1302")
    assert_envelope(api.post("carrier_pigeon", BODIES["bearer_token"]), 404, "1302")
    assert_envelope(api.client.post(f"{BASE}/all", json={}, headers=api.headers), 405, "1301")
    assert api.names() == ["bearer"]


# -- nothing secret leaves or rests in clear -------------------------------------------------------
@SQLITE
def test_secrets_are_masked_encrypted_and_never_logged(
    api: Api, tmp_path: Path, all_logs: pytest.LogCaptureFixture, servers: Servers
) -> None:
    answers: list[str] = []
    for kind, body in BODIES.items():
        answers.append(api.post(kind, {**body, "allowed_domain": "127.0.0.1"}).get_data(as_text=True))
        answers.append(api.get(f"{kind}/{body['name']}").get_data(as_text=True))
        answers.append(
            api.patch(kind, body["name"], {SECRET_FIELD[kind]: f"{kind}-SEKRIT-2"}).get_data(as_text=True)
        )
    answers.append(api.get("all").get_data(as_text=True))
    answers.append(api.get("all", **{"page[size]": "1"}).get_data(as_text=True))
    srv = servers(lambda h: h.answer(401))
    with api.app.app_context():
        for name in ("bearer", "basic", "key"):
            with zis_of(api.app).session("acme", name) as s:
                assert s.get(f"{srv.url}/x").status_code == 401
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("zis.sqlite3*"))
    assert b"robot-user" in raw and b"X-Api-Key" in raw  # the file really holds the rows
    logs = "\n".join(f"{r.getMessage()} {r.args!r}" for r in all_logs.records)
    for secret in ("SEKRIT", base64.b64encode(b"robot-user:basic_auth-SEKRIT-2").decode()):
        assert secret.encode() not in raw
        assert not any(secret in text for text in answers)
        assert secret not in logs
    assert all('"*****"' in text for text in answers[:-2])


# -- bad bodies: each a clear 422, nothing stored --------------------------------------------------
_BAD_NAMES = ["a.b", "a b", "", "x" * 129, "ümlaut", "a/b", 5, None, ["a"]]
_BAD_DOMAINS = [
    "localhost",
    "LOCALHOST.",
    "127.0.0.1",
    "169.254.169.254",
    "10.0.0.1",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",
    "fe80::1%eth0",
    "intranet",
    "printer.local",
    "metadata.google.internal",
    "http://x.example.com",
    "x.example.com/y",
    "x/y",
    "x.example.com:80",
    "x:80",
    "user@x.example.com",
    "a..b.com",
    "-a.example.com",
    "1.2.3",
    "999.1.1.1",
    "bücher.example",
    "x.example.com?q=1",
    "",
    " ",
    "a" * 64 + ".com",
    7,
    None,
]
_BAD_HEADER_NAMES = [
    "X Key",
    "X:Key",
    "",
    "x" * 129,
    "Host",
    "content-length",
    "Cookie",
    "Transfer-Encoding",
    "Proxy-Authorization",
    "Sec-Fetch-Mode",
    "X-Key\r\nInjected",
    1,
]


def _bad_cases() -> Iterator[tuple[str, dict[str, Any], str]]:
    for kind, body in BODIES.items():
        for field in body:
            yield kind, {k: v for k, v in body.items() if k != field}, field  # missing
            yield kind, {**body, field: None}, field  # null is missing
            yield kind, {**body, field: 12}, field  # wrong type
            yield kind, {**body, field: {"a": 1}}, field
        yield kind, {**body, "extra": "x"}, "extra"
        yield kind, {**body, "type": kind}, "type"
        for bad in _BAD_NAMES:
            yield kind, {**body, "name": bad}, "name"
        for bad in _BAD_DOMAINS:
            yield kind, {**body, "allowed_domain": bad}, "allowed_domain"
    for field in ("token", "api_key", "password"):
        kind = next(k for k, f in SECRET_FIELD.items() if f == field)
        yield kind, {**BODIES[kind], field: "x" * 4097}, field  # oversized
    for field in ("token", "api_key"):
        kind = next(k for k, f in SECRET_FIELD.items() if f == field)
        for bad in ("", "a\r\nX-Evil: 1", "tab\there", "ünï", "two  spaces", " lead"):
            yield kind, {**BODIES[kind], field: bad}, field
    yield "basic_auth", {**BODIES["basic_auth"], "username": "u" * 257}, "username"
    yield "basic_auth", {**BODIES["basic_auth"], "username": "a:b"}, "username"
    yield "basic_auth", {**BODIES["basic_auth"], "username": ""}, "username"
    yield "basic_auth", {**BODIES["basic_auth"], "password": "line\nbreak"}, "password"
    for bad in _BAD_HEADER_NAMES:
        yield "api_key", {**BODIES["api_key"], "header_name": bad}, "header_name"


@MEMORY
def test_bad_bodies_are_422_naming_the_field_and_store_nothing(make_app: Callable[..., Flask]) -> None:
    api = Api(make_app(ZIS_ALLOW_INSECURE_HTTP=False))
    checked = 0
    for kind, body, field in _bad_cases():
        resp = api.post(kind, body)
        assert_envelope(resp, 422, "1303", f"Invalid value for: {field}.")
        checked += 1
    assert checked > 180
    assert api.names() == []
    # The same values through PATCH: refused, and the stored connection unchanged.
    for kind, body in BODIES.items():
        assert api.post(kind, body).status_code == 201
    before = api.get("all").get_json()
    for kind, body, field in _bad_cases():
        if field in ("name", "type", "extra") or body.get(field, "missing") == "missing":
            continue
        resp = api.patch(kind, BODIES[kind]["name"], {field: body[field]})
        assert_envelope(resp, 422, "1303", f"Invalid value for: {field}.")
    assert api.get("all").get_json() == before
    assert_envelope(api.patch("bearer_token", "bearer", {"name": "renamed"}), 422, "1303", "name")
    assert_envelope(api.patch("bearer_token", "bearer", {"username": "x"}), 422, "1303", "username")
    assert_envelope(api.patch("bearer_token", "bearer", {}), 400, "1301", "at least one field")
    assert_envelope(api.patch("bearer_token", "bearer", {"name": "bearer"}), 400, "1301")
    assert api.get("all").get_json() == before


@MEMORY
def test_bodies_that_are_not_json_objects(api: Api) -> None:
    for kind in TYPES:
        assert_envelope(api.post(kind, ["a", "list"]), 400, "1301")
        resp = api.client.post(f"{BASE}/{kind}", data="token=x", headers=api.headers)
        assert_envelope(resp, 415, "1301")
        resp = api.client.post(
            f"{BASE}/{kind}", data="{nope", content_type="application/json", headers=api.headers
        )
        assert_envelope(resp, 400, "1301")
    assert api.names() == []


@MEMORY
@pytest.mark.parametrize(
    ("config", "domain", "stored"),
    [
        ({"ZIS_ALLOW_INSECURE_HTTP": True}, "127.0.0.1", "127.0.0.1"),
        ({"ZIS_ALLOW_INSECURE_HTTP": True}, "localhost", "localhost"),
        ({"ZIS_ALLOW_INSECURE_HTTP": True}, "[::1]", "::1"),
        ({"ZIS_ALLOW_INSECURE_HTTP": True}, "0:0::1", "::1"),
        ({"ZIS_ALLOWED_PRIVATE_HOSTS": ["10.0.0.0/8"]}, "10.1.2.3", "10.1.2.3"),
        ({"ZIS_ALLOWED_PRIVATE_HOSTS": ["billing.internal"]}, "Billing.Internal", "billing.internal"),
        ({}, "api.example.com", "api.example.com"),
        ({}, "8.8.8.8", "8.8.8.8"),
        ({}, "2001:4860:4860::8888", "2001:4860:4860::8888"),
        ({}, "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_allowed_domains_that_are_accepted(
    make_app: Callable[..., Flask], config: dict[str, Any], domain: str, stored: str
) -> None:
    api = Api(make_app(**{"ZIS_ALLOW_INSECURE_HTTP": False, **config}))
    resp = api.post("bearer_token", {**BODIES["bearer_token"], "allowed_domain": domain})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["bearer_token"]["allowed_domain"] == stored


# -- names ---------------------------------------------------------------------------------------
@pytest.fixture
def oauth_app(make_app: Callable[..., Flask], provider: LiveProvider) -> Flask:
    app = make_app()
    register(app, provider)
    return app


def test_names_are_unique_across_types_both_ways(oauth_app: Flask, provider: LiveProvider) -> None:
    api = Api(oauth_app)
    connect(oauth_app, provider, api.headers, name="main")
    for kind in TYPES:
        body = {**BODIES[kind], "name": "main"}
        assert_envelope(api.post(kind, body), 409, "1304", "oauth connection named 'main'")
    assert api.post("basic_auth", BODIES["basic_auth"]).status_code == 201
    for kind in TYPES:
        assert_envelope(
            api.post(kind, {**BODIES[kind], "name": "basic"}), 409, "1304", "basic_auth connection"
        )
    # An OAuth flow may not take (or re-authorize) a name another type holds.
    resp = start(oauth_app.test_client(), api.headers, name="basic")
    assert_envelope(resp, 409, "1304", "basic_auth connection named 'basic'")
    with oauth_app.app_context():
        zis = zis_of(oauth_app)
        with pytest.raises(Conflict):
            zis.create_connection(
                "acme", "main", type="api_key", allowed_domain="a.example.com", api_key="k", header_name="X-K"
            )
        assert zis.get_connection("acme", "basic").password == "pw-SEKRIT-basic"
        assert zis.get_connection("acme", "main").type == "oauth"
    # Names of OAuth connections keep their '.', the new types follow the service's rule.
    dotted = connect(oauth_app, provider, api.headers, name="v1.main")
    assert dotted["name"] == "v1.main"
    assert_envelope(
        api.post("bearer_token", {**BODIES["bearer_token"], "name": "v1.other"}), 422, "1303", "name"
    )
    assert api.names() == ["basic", "main", "v1.main"]


def test_a_name_taken_during_a_flow_is_not_overwritten(oauth_app: Flask, provider: LiveProvider) -> None:
    api = Api(oauth_app)
    browser = oauth_app.test_client()
    started = start(browser, api.headers, name="late")
    assert started.status_code == 200, started.get_json()
    at_provider = redirect_to_provider(browser, started.get_json()["redirect_url"])
    assert api.post("bearer_token", {**BODIES["bearer_token"], "name": "late"}).status_code == 201
    back = callback(browser, provider.approve(at_provider))
    assert back.status_code == 302
    location = back.headers["Location"]
    assert "error=connection_name_taken" in location and "verification_code" not in location
    with oauth_app.app_context():
        kept = zis_of(oauth_app).get_connection("acme", "late")
    assert (kept.type, kept.access_token) == ("bearer_token", "tok-SEKRIT-bearer")


# -- who may -------------------------------------------------------------------------------------------
@MEMORY
def test_another_integrations_token_is_forbidden(api: Api) -> None:
    assert api.post("api_key", BODIES["api_key"]).status_code == 201
    other = auth_header(api.app, "other")
    c = api.client
    calls: list[Callable[[dict[str, str]], TestResponse]] = [
        lambda h: c.post(f"{BASE}/api_key", json={**BODIES["api_key"], "name": "k2"}, headers=h),
        lambda h: c.get(f"{BASE}/api_key/key", headers=h),
        lambda h: c.patch(f"{BASE}/api_key/key", json={"api_key": "stolen"}, headers=h),
        lambda h: c.delete(f"{BASE}/api_key/key", headers=h),
        lambda h: c.get(f"{BASE}/all", headers=h),
    ]
    for call in calls:
        assert_envelope(call(other), 403, "1200", "Forbidden")
        assert_envelope(call({}), 401, "1200", "Unauthorized")
        assert_envelope(call({"Authorization": "Bearer nope"}), 401, "1200")
    assert api.names() == ["key"]
    with api.app.app_context():
        assert zis_of(api.app).get_token("acme", "key") == "key-SEKRIT-api"


# -- the Python API ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", "postgres"], indirect=True)
def test_python_api_for_every_type(app: Flask, zis: ZISConnections) -> None:
    created: list[dict[str, Any]] = []

    def on_created(sender: Flask, **payload: Any) -> None:
        created.append(payload)

    with app.app_context(), connection_created.connected_to(on_created, sender=app):
        bearer = zis.create_connection(
            "acme", "bearer", type="bearer_token", allowed_domain="a.example.com", token="t-1"
        )
        basic = zis.create_connection(
            "acme", "basic", type="basic_auth", allowed_domain="a.example.com", username="u", password=""
        )
        key = zis.create_connection(
            "acme",
            "key",
            type="api_key",
            allowed_domain="a.example.com",
            api_key="k-1",
            header_name="X-K",
            created_by="ops",
        )
        assert (bearer.type, bearer.access_token, bearer.password) == ("bearer_token", "t-1", None)
        assert (basic.username, basic.password) == ("u", "")
        assert (key.header_name, key.created_by) == ("X-K", "ops")
        assert zis.get_token("acme", "bearer") == "t-1"
        assert zis.get_token("acme", "key") == "k-1"
        with pytest.raises(WrongConnectionType, match=r"zis\.session"):
            zis.get_token("acme", "basic")
        for name in ("bearer", "basic", "key"):
            with pytest.raises(WrongConnectionType, match="only OAuth connections"):
                zis.refresh("acme", name)
        assert zis.update_connection("acme", "key", type="api_key", api_key="k-2").access_token == "k-2"
        with pytest.raises(ConnectionNotFound):
            zis.update_connection("acme", "key", type="bearer_token", token="x")
        with pytest.raises(InvalidValue, match="OAuth flow"):
            zis.create_connection("acme", "o", type="oauth", allowed_domain="a.example.com")
        with pytest.raises(InvalidValue, match="token"):
            zis.create_connection("acme", "t2", type="bearer_token", allowed_domain="a.example.com")
        assert zis.delete_connection("acme", "bearer") is None
        with pytest.raises(ConnectionNotFound):
            zis.get_connection("acme", "bearer")
        page = zis.list_connections("acme")
        assert [r.name for r in page["connections"]] == ["basic", "key"]
    assert [p["name"] for p in created] == ["bearer", "basic", "key"]
    headers = auth_header(app)
    for endpoint in ("connections", "connections/refresh"):
        resp = app.test_client().get(
            f"{PREFIX}/{endpoint}/acme", query_string={"name": "key"}, headers=headers
        )
        err = assert_envelope(resp, 422, "1303", "Invalid value for: type.")
        assert "k-2" not in resp.get_data(as_text=True) and "/connections/api_key/key" in err["detail"]
    # The old delete endpoint deletes any type by name.
    resp = app.test_client().delete(
        f"{PREFIX}/connections/acme", query_string={"name": "key"}, headers=headers
    )
    assert resp.status_code == 200 and resp.get_json()["revoked"] is None


# -- key rotation --------------------------------------------------------------------------------------
def _sqlite_app(tmp_path: Path, keys: list[str]) -> Flask:
    app = Flask("rotating_host", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="x", ZIS_ENCRYPTION_KEYS=keys)
    ZISConnections(app)
    return app


def test_rotate_keys_re_encrypts_credential_secrets(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    app = _sqlite_app(tmp_path, [old])
    with app.app_context():
        zis = zis_of(app)
        for kind, body in BODIES.items():
            zis.create_connection("acme", **body, type=kind)
    app.extensions["zis_connections"].storage.close()
    rotating = _sqlite_app(tmp_path, [new, old])
    result = rotating.test_cli_runner().invoke(args=["zis", "rotate-keys"])
    assert result.exit_code == 0 and "Re-encrypted 3 rows" in result.output, result.output
    rotating.extensions["zis_connections"].storage.close()
    only_new = _sqlite_app(tmp_path, [new])
    with only_new.app_context():
        zis = zis_of(only_new)
        assert zis.get_token("acme", "bearer") == "tok-SEKRIT-bearer"
        assert zis.get_token("acme", "key") == "key-SEKRIT-api"
        assert zis.get_connection("acme", "basic").password == "pw-SEKRIT-basic"
    only_new.extensions["zis_connections"].storage.close()


# -- zis.session -------------------------------------------------------------------------------------
Servers = Callable[[Callable[[HostileHandler], None]], HostileServer]


@pytest.fixture
def servers() -> Iterator[Servers]:
    started: list[HostileServer] = []

    def start_server(behave: Callable[[HostileHandler], None]) -> HostileServer:
        srv = HostileServer(behave).__enter__()
        started.append(srv)
        return srv

    yield start_server
    for srv in reversed(started):
        srv.__exit__(None, None, None)


def _ok(handler: HostileHandler) -> None:
    handler.json(b'{"ok": true}')


_EXPECTED_HEADER = {
    "bearer": ("Authorization", "Bearer tok-SEKRIT-bearer"),
    "basic": ("Authorization", "Basic " + base64.b64encode(b"robot-user:pw-SEKRIT-basic").decode()),
    "key": ("X-Api-Key", "key-SEKRIT-api"),
}


@pytest.mark.parametrize("name", list(_EXPECTED_HEADER))
def test_session_sends_each_credential_only_to_its_allowed_domain(
    app: Flask, api: Api, servers: Servers, name: str
) -> None:
    for kind, body in BODIES.items():
        assert api.post(kind, {**body, "allowed_domain": "127.0.0.1"}).status_code == 201
    home, second_port, elsewhere = servers(_ok), servers(_ok), servers(_ok)
    header, value = _EXPECTED_HEADER[name]
    with app.app_context():
        session = zis_of(app).session("acme", name)
    with session as s:
        assert s.get(f"{home.url}/v1/things?x=1").json() == {"ok": True}
        assert s.get(f"{second_port.url}/other").status_code == 200  # any port of the host
        for url in (
            f"http://localhost:{elsewhere.port}/x",
            f"http://127.0.0.2:{elsewhere.port}/x",
            f"http://[::1]:{elsewhere.port}/x",
            f"http://127.0.0.1:{home.port}@localhost:{elsewhere.port}/x",
        ):
            with pytest.raises(ForbiddenDestination, match="allowed_domain") as caught:
                s.get(url)
            assert value not in str(caught.value)
    assert elsewhere.seen == []
    assert [seen.path for seen in home.seen] == ["/v1/things?x=1"]
    for seen in (*home.seen, *second_port.seen):
        assert seen.headers[header] == value
        if header != "Authorization":
            assert "Authorization" not in seen.headers


@MEMORY
def test_session_returns_a_401_without_refreshing_and_follows_no_redirect(api: Api, servers: Servers) -> None:
    assert (
        api.post("bearer_token", {**BODIES["bearer_token"], "allowed_domain": "127.0.0.1"}).status_code == 201
    )
    elsewhere = servers(_ok)
    refused = servers(lambda h: h.answer(401, b'{"error": "nope"}'))
    bouncing = servers(lambda h: h.redirect(302, f"{elsewhere.url}/steal"))
    with api.app.app_context():
        session = zis_of(api.app).session("acme", "bearer")
    with session as s:
        assert s.get(f"{refused.url}/x", json={"a": 1}).status_code == 401
        with pytest.raises(requests.RequestException):
            s.get(f"{bouncing.url}/x")
    assert len(refused.seen) == 1 and len(bouncing.seen) == 1 and elsewhere.seen == []


@MEMORY
def test_session_keeps_https_unless_insecure_and_joins_relative_urls(
    make_app: Callable[..., Flask], servers: Servers
) -> None:
    api = Api(make_app(ZIS_ALLOW_INSECURE_HTTP=False, ZIS_ALLOWED_PRIVATE_HOSTS=["127.0.0.1"]))
    assert api.post("api_key", {**BODIES["api_key"], "allowed_domain": "127.0.0.1"}).status_code == 201
    plain = servers(_ok)
    with api.app.app_context():
        session = zis_of(api.app).session("acme", "key")
    sent: list[requests.PreparedRequest] = []

    class Recorder(requests.adapters.BaseAdapter):
        def send(self, request: requests.PreparedRequest, *args: Any, **kw: Any) -> requests.Response:
            sent.append(request)
            resp = requests.Response()
            resp.status_code, resp.request, resp.url = 204, request, str(request.url)
            return resp

        def close(self) -> None:
            return None

    with session as s:
        with pytest.raises(ForbiddenDestination, match="plain http"):
            s.get(f"{plain.url}/x")
        s.mount("https://", Recorder())
        assert s.get("/v2/items?page=2").status_code == 204
    assert plain.seen == []
    assert [r.url for r in sent] == ["https://127.0.0.1/v2/items?page=2"]
    assert sent[0].headers["X-Api-Key"] == "key-SEKRIT-api"


# -- the listing ---------------------------------------------------------------------------------------
def test_listing_pages_every_type_both_ways_without_secrets(oauth_app: Flask, provider: LiveProvider) -> None:
    api = Api(oauth_app)
    order: list[tuple[str, str]] = []
    secrets: list[str] = []
    for i in range(3):
        conn = connect(oauth_app, provider, api.headers, name=f"oauth{i}", allow_offline_access=True)
        order.append(("oauth", conn["name"]))
        secrets += [conn["access_token"], conn["refresh_token"]]
        for kind, body in BODIES.items():
            name = f"{body['name']}{i}"
            assert api.post(kind, {**body, "name": name}).status_code == 201
            order.append((kind, name))
    secrets.append("SEKRIT")

    def page(**query: str) -> dict[str, Any]:
        resp = api.get("all", **query)
        assert resp.status_code == 200, resp.get_json()
        text = resp.get_data(as_text=True)
        assert not any(secret in text for secret in secrets)
        body = resp.get_json()
        assert set(body) == {"api_key", "basic_auth", "bearer_token", "oauth", "meta"}
        for item in body["oauth"]:
            assert not {"access_token", "refresh_token", "oauth_access_token_response_body"} & set(item)
        for kind in ("api_key", "basic_auth", "bearer_token"):
            assert all(item[SECRET_FIELD[kind]] == "*****" for item in body[kind])
        return body  # type: ignore[no-any-return]

    def items(body: dict[str, Any]) -> list[tuple[str, str]]:
        found = [
            (kind, item["name"])
            for kind in ("api_key", "basic_auth", "bearer_token", "oauth")
            for item in body[kind]
        ]
        return sorted(found, key=order.index)

    everything = page()
    assert items(everything) == order
    assert everything["meta"] == {"has_more": False, "after_cursor": None, "before_cursor": None}

    forward = [page(**{"page[size]": "5"})]
    while forward[-1]["meta"]["has_more"]:
        forward.append(page(**{"page[size]": "5", "page[after]": forward[-1]["meta"]["after_cursor"]}))
    assert [items(p) for p in forward] == [order[0:5], order[5:10], order[10:]]
    assert forward[0]["meta"]["before_cursor"] is None
    assert forward[-1]["meta"]["after_cursor"] is None
    assert all(p["meta"]["before_cursor"] for p in forward[1:])

    backward = [forward[-1]]
    while backward[-1]["meta"]["before_cursor"]:
        backward.append(page(**{"page[size]": "5", "page[before]": backward[-1]["meta"]["before_cursor"]}))
    assert [items(p) for p in backward] == [order[10:], order[5:10], order[0:5]]
    assert [p["meta"]["has_more"] for p in backward[1:]] == [True, False]
    assert backward[1] == forward[1]

    for bad in ("0", "101", "x", "-1", "", "1e2", "٣"):
        assert_envelope(api.get("all", **{"page[size]": bad}), 422, "1303", "page[size]")
    for param in ("page[after]", "page[before]"):
        for bad in ("garbage", "-1", "9" * 20, "٣"):
            assert_envelope(api.get("all", **{param: bad}), 422, "1303", param)
    assert_envelope(api.get("all", **{"page[after]": "1", "page[before]": "9"}), 422, "1303", "page[before]")
    assert_envelope(api.get("all", limit="3"), 422, "1303", "page[size]")
    other = Api(oauth_app, "other").get("all").get_json()
    assert other == {
        "api_key": [],
        "basic_auth": [],
        "bearer_token": [],
        "oauth": [],
        "meta": {"has_more": False, "after_cursor": None, "before_cursor": None},
    }


def test_listing_is_one_keyset_whatever_is_deleted(oauth_app: Flask) -> None:
    api = Api(oauth_app)
    for i in range(6):
        assert api.post("bearer_token", {**BODIES["bearer_token"], "name": f"b{i}"}).status_code == 201
    first = api.get("all", **{"page[size]": "2"}).get_json()
    api.delete("bearer_token", "b2")
    api.delete("bearer_token", "b3")
    second = api.get("all", **{"page[size]": "2", "page[after]": first["meta"]["after_cursor"]}).get_json()
    assert [i["name"] for i in second["bearer_token"]] == ["b4", "b5"]
    assert second["meta"]["has_more"] is False and second["meta"]["after_cursor"] is None
    back = api.get("all", **{"page[size]": "2", "page[before]": second["meta"]["before_cursor"]}).get_json()
    assert [i["name"] for i in back["bearer_token"]] == ["b0", "b1"]
