"""The served OpenAPI 3.1 document, and the request validation built from it.

The document is the contract clients read and the source the request checks are
compiled from, so these tests hold it to three things: it is valid OpenAPI 3.1; it
and the URL map describe the same operations, both ways; and what it says about
bodies and parameters is what the API enforces (bad bodies derived from each schema
are refused naming the field, with nothing stored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flask_zis_connections import ZISConnections
from flask_zis_connections.api import openapi
from flask_zis_connections.api.token_proxy import _PROXY_FIELDS
from flask_zis_connections.clients import CLIENT_FIELDS
from flask_zis_connections.credentials import TYPE_FIELDS
from flask_zis_connections.flow import START_FIELDS

from .flow_driver import connect, register
from .helpers import PREFIX, assert_envelope, client_body
from .live_provider import LiveProvider

DOC_URL = f"{PREFIX}/openapi.json"
START_BODY = {
    "name": "main",
    "oauth_client_name": "acme",
    "origin_oauth_redirect_url": "https://client.int/cb",
}
METHODS = ("get", "post", "patch", "put", "delete")


@pytest.fixture
def backend() -> str:
    """The document and the checks built from it run before storage is touched: one
    backend is enough (the storage contract tests cover the others)."""
    return "memory"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The token proxy configured (to a port nothing listens on: no valid body is sent),
    so its bad bodies meet the validation rather than the 503 of an unconfigured host."""
    return make_app(ZIS_HOST_TOKEN_URL="http://127.0.0.1:9/token")


@pytest.fixture
def served(client: FlaskClient) -> dict[str, Any]:
    resp = client.get(DOC_URL)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc: dict[str, Any] = resp.get_json()
    return doc


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


# -- the document -----------------------------------------------------------------------------------------
def test_the_served_document_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator

    assert served["openapi"].startswith("3.1.")
    errors = [str(error) for error in OpenAPIV31SpecValidator(served).iter_errors()]
    assert errors == []
    # Every schema in it is a valid 2020-12 schema (what the request checks compile).
    for schema in served["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_the_document_needs_no_credentials_and_names_where_it_was_found(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    c = app.test_client()
    resp = c.get(DOC_URL)
    assert resp.status_code == 200
    assert resp.get_json()["servers"][0]["url"] == PREFIX
    assert resp.headers["Cache-Control"] == "no-store"
    # Like the other routes without credentials, it is limited per client address.
    assert c.get(DOC_URL).status_code == 200
    assert_envelope(c.get(DOC_URL), 429, "1300")


def test_the_document_follows_the_blueprint_to_another_prefix(make_app: Callable[..., Flask]) -> None:
    from flask_zis_connections.api import bp

    app = make_app()
    app.register_blueprint(bp, url_prefix="/elsewhere/zis", name="zis_elsewhere")
    resp = app.test_client().get("/elsewhere/zis/openapi.json")
    assert resp.status_code == 200
    assert resp.get_json()["servers"][0]["url"] == "/elsewhere/zis"


_RULE_PART = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


def _documented_forms(rule: str) -> list[str]:
    """A Flask rule as the document's paths: ``<x>`` is ``{x}``, and an ``any(a, b)``
    segment is one documented path per value (each value has its own body schema)."""
    forms = [""]
    pos = 0
    for match in _RULE_PART.finditer(rule):
        literal = rule[pos : match.start()]
        if match["converter"] == "any":
            values = [a.strip().strip("'\"") for a in (match["args"] or "").split(",")]
            forms = [f + literal + value for f in forms for value in values]
        else:
            forms = [f + literal + "{" + match["name"] + "}" for f in forms]
        pos = match.end()
    return [f + rule[pos:] for f in forms]


def test_every_route_is_documented_and_every_documented_operation_exists(
    app: Flask, served: dict[str, Any]
) -> None:
    routed: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/"):
            continue
        for path in _documented_forms(rule.rule.removeprefix(PREFIX)):
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                routed.add((method, path))
    documented = {(method.upper(), path) for path, method, _ in _operations(served)}
    assert routed - documented == set(), "routes missing from the document"
    assert documented - routed == set(), "documented operations without a route"


def test_operation_ids_name_the_views_that_serve_them(app: Flask, served: dict[str, Any]) -> None:
    endpoints = {rule.endpoint.rpartition(".")[2] for rule in app.url_map.iter_rules()}
    ids = [op["operationId"] for _, _, op in _operations(served)]
    assert len(ids) == len(set(ids))
    for _, _, op in _operations(served):
        assert op.get("x-endpoint", op["operationId"]) in endpoints, op["operationId"]


def test_every_documented_error_status_has_the_envelope(served: dict[str, Any]) -> None:
    envelope_ref = "#/components/schemas/ErrorEnvelope"
    for path, method, op in _operations(served):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            schema = _resolve(served, response)["content"]["application/json"]["schema"]
            alternatives = schema.get("oneOf", [schema])
            enveloped = [_resolve(served, alt) for alt in alternatives if "Error" in alt.get("$ref", "")]
            assert enveloped, (method, path, status)
            for error_schema in enveloped:
                assert error_schema["allOf"][0] == {"$ref": envelope_ref}, (method, path, status)
                narrowed = error_schema["allOf"][1]["properties"]["errors"]["items"]["properties"]
                assert narrowed["status"] == {"const": status}
        assert "429" in op["responses"] and "500" in op["responses"], (method, path)
    codes = {
        status: _resolve(served, {"$ref": f"#/components/schemas/Error{status}"})["allOf"][1]["properties"][
            "errors"
        ]["items"]["properties"]["code"]["enum"]
        for status in ("400", "401", "403", "404", "409", "413", "415", "422", "429", "500", "502", "503")
    }
    assert codes == {
        "400": ["1301"],
        "401": ["1200"],
        "403": ["1200"],
        "404": ["1302"],
        "409": ["1304"],
        "413": ["1301"],
        "415": ["1301"],
        "422": ["1303"],
        "429": ["1300"],
        "500": ["1307"],
        "502": ["1305"],
        "503": ["1306", "1308"],
    }
    assert served["components"]["responses"]["Error429"]["headers"]["Retry-After"]["required"] is True


def test_every_example_fits_its_schema(served: dict[str, Any]) -> None:
    checked = 0
    for _, _, op in _operations(served):
        places = [op["requestBody"]] if "requestBody" in op else []
        places += [_resolve(served, r) for r in op["responses"].values()]
        for place in places:
            media = place.get("content", {}).get("application/json", {})
            if "example" in media:
                _schema_validator(served, media["schema"]).validate(media["example"])
                checked += 1
    assert checked >= 20


def _schema_validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    uri = "urn:test:openapi"
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    schema = {"$ref": uri + schema["$ref"]} if "$ref" in schema else {"$id": uri, **schema}
    return Draft202012Validator(schema, registry=registry)


def test_the_body_schemas_list_exactly_the_fields_the_code_takes(served: dict[str, Any]) -> None:
    """The Python API shares the views' rules; a field one of them learns must be
    documented (and so allowed over HTTP), and the other way round."""
    schemas = served["components"]["schemas"]

    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    assert fields("StartRequest") == set(START_FIELDS)
    assert fields("OAuthClientCreate") == set(CLIENT_FIELDS) == fields("OAuthClientUpdate")
    assert fields("TokenRequest") == set(_PROXY_FIELDS)
    for kind, title in {
        "bearer_token": "BearerTokenConnection",
        "basic_auth": "BasicAuthConnection",
        "api_key": "ApiKeyConnection",
    }.items():
        assert fields(f"{title}Create") == {"name", "allowed_domain", *TYPE_FIELDS[kind]}
        assert fields(f"{title}Update") == fields(f"{title}Create")
    for _, _, op in _operations(served):
        if "requestBody" in op:
            body = _resolve(served, op["requestBody"]["content"]["application/json"]["schema"])
            assert body["additionalProperties"] is False, op["operationId"]


def test_the_answer_schemas_list_exactly_the_fields_the_views_send(served: dict[str, Any]) -> None:
    from flask_zis_connections.api.serializers import client_json, connection_summary_json, event_json
    from flask_zis_connections.domain import ConnectionRecord, Event, OAuthClient
    from flask_zis_connections.events import KINDS
    from flask_zis_connections.providers._preset import PUBLIC_FIELDS

    schemas = served["components"]["schemas"]
    client = OAuthClient(
        uuid="u",
        integration="acme",
        name="n",
        client_id="c",
        client_secret_enc=None,
        auth_url=None,
        token_url="https://t.test",
    )
    assert set(schemas["OAuthClient"]["properties"]) == set(client_json(client))
    record = ConnectionRecord(
        uuid="u", integration="acme", name="n", oauth_client_uuid=None, access_token_enc="x"
    )
    assert set(schemas["OAuthConnectionSummary"]["properties"]) == set(connection_summary_json(record))
    assert set(schemas["ProviderPreset"]["properties"]) == set(PUBLIC_FIELDS)
    event = Event(integration="acme", kind="client.created", actor="cli", id=1)
    assert set(schemas["Event"]["properties"]) == set(event_json(event))
    assert schemas["Event"]["properties"]["kind"]["enum"] == list(KINDS)


# -- validation built from the document --------------------------------------------------------------------
_WRONG_VALUES: list[Any] = [12345, "text", True, ["a"], {"a": "b"}]
_JSON_TYPES = {int: "integer", str: "string", bool: "boolean", list: "array", dict: "object"}


def _wrong_value(schema: dict[str, Any]) -> Any:
    """A JSON value of none of the schema's types."""
    allowed = schema.get("type")
    types = {allowed} if isinstance(allowed, str) else set(allowed or ())
    if not types and "enum" in schema:
        types = {_JSON_TYPES[type(v)] for v in schema["enum"] if v is not None}
    if "integer" in types:
        types.add("number")
    for value in _WRONG_VALUES:
        if _JSON_TYPES[type(value)] not in types:
            return value
    raise AssertionError(f"no wrong value for {schema}")


def _body_cases() -> Iterator[Any]:
    doc = openapi.document()
    for path, method, op in _operations(dict(doc)):
        if "requestBody" not in op:
            continue
        media = op["requestBody"]["content"]["application/json"]
        schema = _resolve(dict(doc), media["schema"])
        base = media["example"]
        for field, field_schema in sorted(schema["properties"].items()):
            bad = _wrong_value(_resolve(dict(doc), field_schema))
            yield pytest.param(method, path, {**base, field: bad}, field, id=f"{op['operationId']}-{field}")
        yield pytest.param(
            method, path, {**base, "zz_unknown": 1}, "zz_unknown", id=f"{op['operationId']}-unknown"
        )


@pytest.fixture
def resources(app: Flask, zis: ZISConnections, client: FlaskClient, bearer: dict[str, str]) -> dict[str, str]:
    """An OAuth client and one connection of each credential type to aim updates at."""
    made = client.post(f"{PREFIX}/connections/oauth/clients/acme", json=client_body(), headers=bearer)
    assert made.status_code == 201, made.get_json()
    names: dict[str, str] = {"uuid": made.get_json()["uuid"]}
    for kind, example in (
        ("bearer_token", {"token": "t0ken"}),
        ("basic_auth", {"username": "u", "password": "p"}),
        ("api_key", {"api_key": "k3y", "header_name": "X-Api-Key"}),
    ):
        body = {"name": f"my_{kind}", "allowed_domain": "api.example.com", **example}
        resp = client.post(f"{PREFIX}/integrations/acme/connections/{kind}", json=body, headers=bearer)
        assert resp.status_code == 201, resp.get_json()
    return names


def _stored(app: Flask) -> Any:
    storage = app.extensions["zis_connections"].storage
    clients = sorted((c.uuid, c.version) for c in storage.list_clients())
    connections = sorted((r.uuid, r.version) for r in storage.list_connections("acme", limit=100).items)
    return clients, connections


@pytest.mark.parametrize(("method", "path", "body", "field"), list(_body_cases()))
def test_a_bad_body_is_refused_naming_the_field_and_nothing_is_stored(
    app: Flask,
    client: FlaskClient,
    bearer: dict[str, str],
    resources: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    kind = next((k for k in TYPE_FIELDS if f"/{k}" in path), "")
    url = PREFIX + path.format(integration="acme", uuid=resources["uuid"], name=f"my_{kind}")
    before = _stored(app)
    resp = client.open(url, method=method.upper(), json=body, headers=bearer)
    err = assert_envelope(resp, 422, "1303", f"Invalid value for: {field}. Desc: ")
    assert "Traceback" not in err["detail"]
    assert _stored(app) == before
    storage = app.extensions["zis_connections"].storage
    assert storage.purge_expired(datetime.now(UTC) + timedelta(days=3650)) == 0  # no flow recorded


def test_the_failure_reported_first_is_an_unknown_field_then_a_missing_one(
    client: FlaskClient, bearer: dict[str, str]
) -> None:
    url = f"{PREFIX}/connections/oauth/clients/acme"
    resp = client.post(url, json={"zeta": 1, "alpha": 2, "pkce": "no"}, headers=bearer)
    err = assert_envelope(resp, 422, "1303", "Invalid value for: alpha. Desc: is not a known field")
    assert "client_id" in err["detail"]  # the allowed fields are listed
    resp = client.post(url, json={"pkce": "no"}, headers=bearer)
    assert_envelope(resp, 422, "1303", "Invalid value for: client_id. Desc: is required")
    resp = client.post(url, json=client_body(name=None), headers=bearer)
    assert_envelope(resp, 422, "1303", "Invalid value for: name. Desc: is required")
    resp = client.post(url, json=client_body(client_id="x" * 513), headers=bearer)
    assert_envelope(resp, 422, "1303", "Invalid value for: client_id. Desc: must be at most 512 characters")
    resp = client.post(url, json=client_body(name="has space"), headers=bearer)
    assert_envelope(resp, 422, "1303", "Invalid value for: name. Desc: must match the pattern ^")
    resp = client.post(url, json=client_body(authorize_params={"a": 5}), headers=bearer)
    assert_envelope(resp, 422, "1303", 'Invalid value for: authorize_params. Desc: the value of "a": must be')
    resp = client.post(url, json=client_body(allowed_domains=["ok.test", 7]), headers=bearer)
    assert_envelope(resp, 422, "1303", "Invalid value for: allowed_domains. Desc: item 1: must be a string")
    resp = client.post(url, json=client_body(token_response_fields={"nope": "a"}), headers=bearer)
    assert_envelope(resp, 422, "1303", 'Invalid value for: token_response_fields. Desc: key "nope"')


def test_the_body_must_be_a_json_object_in_json(client: FlaskClient, bearer: dict[str, str]) -> None:
    url = f"{PREFIX}/integrations/acme/connections/bearer_token"
    assert_envelope(client.post(url, json=["a"], headers=bearer), 400, "1301", "JSON object")
    resp = client.post(url, data="null", content_type="application/json", headers=bearer)
    assert_envelope(resp, 400, "1301")
    resp = client.post(url, data="{nope", content_type="application/json", headers=bearer)
    assert_envelope(resp, 400, "1301", "not valid JSON")
    resp = client.post(url, data="name=x", content_type="application/x-www-form-urlencoded", headers=bearer)
    assert_envelope(resp, 415, "1301")


def test_credentials_come_before_the_shape_of_the_request(client: FlaskClient, app: Flask) -> None:
    """A stranger learns nothing about what a body should look like."""
    url = f"{PREFIX}/connections/oauth/clients/acme"
    assert_envelope(client.post(url, json={"colour": "blue"}), 401, "1200")
    assert_envelope(client.post(url, data="x", content_type="text/plain"), 401, "1200")
    with app.app_context():
        token = app.extensions["zis_connections"].ext.issue_access_token("other")
    other = {"Authorization": f"Bearer {token}"}
    assert_envelope(client.post(url, json={"colour": "blue"}, headers=other), 403, "1200")
    assert_envelope(client.get(f"{PREFIX}/connections/acme?uuid=nope"), 401, "1200")


def test_an_unconfigured_endpoint_says_so_whatever_the_request(make_app: Callable[..., Flask]) -> None:
    c = make_app().test_client()
    for body in ({}, {"colour": 1}, {"client_id": 5}):
        resp = c.post(f"{PREFIX}/connections/oauth/tokens/acme", json=body)
        assert_envelope(resp, 503, "1308", "ZIS_HOST_TOKEN_URL")


def test_parameters_are_checked_against_the_document(client: FlaskClient, bearer: dict[str, str]) -> None:
    listing = f"{PREFIX}/integrations/acme/connections/all"
    for size, desc in (
        ("0", "must be at least 1"),
        ("101", "must be at most 100"),
        ("x", "must be an integer"),
    ):
        resp = client.get(listing, query_string={"page[size]": size}, headers=bearer)
        assert_envelope(resp, 422, "1303", f"Invalid value for: page[size]. Desc: {desc}")
    assert client.get(listing, query_string={"page[size]": "100"}, headers=bearer).status_code == 200
    resp = client.get(f"{PREFIX}/connections/acme", query_string={"uuid": "nope"}, headers=bearer)
    assert_envelope(resp, 422, "1303", "Invalid value for: uuid.")
    # A required query parameter that is missing is a malformed request, as the service says.
    resp = client.get(f"{PREFIX}/connections/oauth/access_codes/acme", headers=bearer)
    assert_envelope(resp, 400, "1301", "verification_code is required")
    assert_envelope(client.get(f"{PREFIX}/connections/oauth/start_redirect"), 400, "1301", "flow_token")
    # A path parameter out of its pattern, on a route without credentials.
    resp = client.post(f"{PREFIX}/connections/oauth/tokens/BAD!", json={"grant_type": "x", "client_id": "y"})
    assert_envelope(resp, 422, "1303", "Invalid value for: integration.")


def test_every_operation_is_checked_by_the_hook(app: Flask) -> None:
    """Each documented operation is found from its route: none escapes validation."""
    ops = openapi.operations()
    found = {op.operation_id for candidates in ops.values() for op in candidates}
    assert found == {op["operationId"] for _, _, op in _operations(dict(openapi.document()))}
    with app.test_request_context(f"{PREFIX}/integrations/acme/connections/api_key/k", method="PATCH"):
        from flask import request

        op = openapi.operation_for(request.endpoint, "PATCH", request.view_args)
        assert op is not None and op.operation_id == "update_api_key"
    with app.test_request_context(f"{PREFIX}/connections/oauth/callback/abc", method="GET"):
        from flask import request

        op = openapi.operation_for(request.endpoint, "HEAD", request.view_args)
        assert op is not None and op.operation_id == "callback_per_client"


def test_the_document_is_plain_json_built_once() -> None:
    text = json.dumps(openapi.document(), sort_keys=True, allow_nan=False)
    assert json.loads(text) == openapi.document()
    assert openapi.document() is openapi.document()


# -- answers the fuzzer found off the document (each kept as a regression test) ----------------------------
def assert_fits_document(resp: Any, method: str, path: str) -> None:
    """The answer's status is documented for the operation and its body fits the schema."""
    doc = dict(openapi.document())
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(resp.status_code) in responses, (resp.status_code, resp.get_data(as_text=True))
    response = _resolve(doc, responses[str(resp.status_code)])
    media = response.get("content", {}).get("application/json")
    if media is not None:
        assert resp.mimetype == "application/json"
        _schema_validator(doc, media["schema"]).validate(resp.get_json())


def test_deleting_a_connection_without_revocation_fits_the_document(
    app: Flask, provider: LiveProvider, bearer: dict[str, str]
) -> None:
    """``revoked`` is null when the client has no revocation endpoint to call."""
    register(app, provider)
    connect(app, provider, bearer)
    resp = app.test_client().delete(
        f"{PREFIX}/connections/acme", query_string={"name": "main"}, headers=bearer
    )
    assert resp.status_code == 200 and resp.get_json()["revoked"] is None
    assert_fits_document(resp, "DELETE", "/connections/{integration}")


def test_every_success_answer_fits_the_document(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    """The whole API walked once, each answer checked against the document: the
    answers the fuzzer rarely reaches (the flow's redirects, a fresh code) included."""
    provider.register_client("host-client", "host-secret", token_endpoint_auth_method="client_secret_post")
    app = make_app(ZIS_HOST_TOKEN_URL=provider.token_url, ZIS_ACCOUNT_ID=123456)
    register(app, provider)
    with app.app_context():
        token = app.extensions["zis_connections"].ext.issue_access_token("acme")
    headers = {"Authorization": f"Bearer {token}"}
    browser = app.test_client()

    def call(method: str, path: str, expected: int, *, url: str | None = None, **kw: Any) -> Any:
        target = url or PREFIX + path.replace("{integration}", "acme")
        resp = browser.open(target, method=method, headers={**headers, **kw.pop("headers", {})}, **kw)
        assert resp.status_code == expected, resp.get_data(as_text=True)
        assert_fits_document(resp, method, path)
        return resp

    started = call("POST", "/connections/oauth/start/{integration}", 200, json=START_BODY)
    redirect_url = started.get_json()["redirect_url"]
    to_provider = call(
        "GET", "/connections/oauth/start_redirect", 307, url=redirect_url.removeprefix("http://localhost")
    )
    back_url = provider.approve(to_provider.headers["Location"]).removeprefix("http://localhost")
    back = call("GET", "/connections/oauth/callback", 302, url=back_url)
    code = back.headers["Location"].split("verification_code=")[1].split("&")[0]
    call(
        "GET",
        "/connections/oauth/access_codes/{integration}",
        200,
        query_string={"verification_code": code},
    )
    lookup = {"query_string": {"name": "main"}}
    call("GET", "/connections/{integration}", 200, **lookup)
    call("GET", "/connections/refresh/{integration}", 200, **lookup)
    for kind, fields in {
        "bearer_token": {"token": "t0ken"},
        "basic_auth": {"username": "u", "password": "p"},
        "api_key": {"api_key": "k3y", "header_name": "X-Api-Key"},
    }.items():
        body = {"name": f"my_{kind}", "allowed_domain": "api.example.com", **fields}
        call("POST", f"/integrations/{{integration}}/connections/{kind}", 201, json=body)
        one = f"/integrations/{{integration}}/connections/{kind}/{{name}}"
        url = f"{PREFIX}/integrations/acme/connections/{kind}/my_{kind}"
        call("GET", one, 200, url=url)
        secret = {"bearer_token": "token", "basic_auth": "password", "api_key": "api_key"}[kind]
        moved = {"allowed_domain": "api2.example.com", secret: fields[secret]}  # a move needs the secret
        call("PATCH", one, 200, url=url, json=moved)
    listed = call("GET", "/integrations/{integration}/connections/all", 200, query_string={"page[size]": 2})
    assert listed.get_json()["meta"]["has_more"] is True
    call("GET", "/integrations/{integration}/connections/all", 200)
    for kind in TYPE_FIELDS:
        one = f"/integrations/{{integration}}/connections/{kind}/{{name}}"
        call("DELETE", one, 200, url=f"{PREFIX}/integrations/acme/connections/{kind}/my_{kind}")
    call("DELETE", "/connections/{integration}", 200, **lookup)
    clients = "/connections/oauth/clients/{integration}"
    call("GET", clients, 200)
    made = call("POST", clients, 201, json=client_body(name="second")).get_json()
    one_client = f"{PREFIX}/connections/oauth/clients/acme/{made['uuid']}"
    call("PATCH", clients + "/{uuid}", 200, url=one_client, json={"default_scopes": "read"})
    call("DELETE", clients + "/{uuid}", 200, url=one_client)
    events = call("GET", "/integrations/{integration}/events", 200, query_string={"page[size]": 3})
    assert events.get_json()["events"] and events.get_json()["meta"]["has_more"] is True
    call("GET", "/connections/oauth/providers", 200)
    call("GET", "/health", 200)
    call("GET", "/openapi.json", 200)
    proxied = {"client_id": "host-client", "client_secret": "host-secret", "grant_type": "client_credentials"}
    call("POST", "/connections/oauth/tokens/{integration}", 200, json=proxied)


def test_a_client_credentials_start_the_provider_refuses_is_the_callers_error(
    app: Flask, provider: LiveProvider, bearer: dict[str, str]
) -> None:
    """Found by the fuzzer (a start with ``grant_type: client_credentials`` and a scope
    the provider does not grant).  The provider did not fail: it refused what the caller
    asked for (RFC 6749 section 5.2 ``invalid_scope``), so the answer is a 422 naming
    ``permission_scopes`` that the caller can act on - not a 502 "provider error" logged
    at ERROR level - and nothing is stored."""
    register(app, provider, grant_type="client_credentials")
    body = {"name": "cc", "oauth_client_name": "acme", "permission_scopes": "no-such-scope"}
    resp = app.test_client().post(f"{PREFIX}/connections/oauth/start/acme", json=body, headers=bearer)
    assert provider.state.token_calls, "the provider was asked"
    assert_envelope(resp, 422, "1303", "Invalid value for: permission_scopes.")
    assert "invalid_scope" in resp.get_json()["errors"][0]["detail"]
    storage = app.extensions["zis_connections"].storage
    assert storage.list_connections("acme", limit=10).items == []
