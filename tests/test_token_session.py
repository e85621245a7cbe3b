"""Token calls prepared by :class:`TokenSession` put the same bytes on the wire as
requests' own preparation.

The session prepares Authlib's form posts itself (requests' protocol checks cost about
a third of a token call's CPU on Python 3.11).  Each token operation, with each way of
authenticating the client, runs against a real loopback server twice - once as the
extension sends it, once through requests' ``Session.prepare_request`` - and the two
requests the server received must be identical: method, path, every header, body.
The first run must not have fallen back to requests (else the comparison proves
nothing); requests this session does not prepare itself must still go through requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session

from flask_zis_connections.domain import OAuthClient, ProviderQuirks
from flask_zis_connections.outbound import OutboundPolicy
from flask_zis_connections.provider_client import ProviderClient, TokenSession
from tests.hostile_server import HostileHandler, HostileServer

POLICY = OutboundPolicy(timeout=5.0, max_response_bytes=1 << 20, allow_private=True)
TOKEN = b'{"access_token":"at","refresh_token":"rt","token_type":"Bearer","expires_in":3600}'
#: A secret and values that need form-encoding: spaces, '&', '=', '+', non-ASCII.
SECRET = "s3cr&t=+ü"

Operation = Callable[[ProviderClient], object]

OPERATIONS: dict[str, Operation] = {
    "refresh": lambda c: c.refresh("rt/+= ü"),
    "code exchange": lambda c: c.exchange_code(
        "code&1", redirect_uri="https://app.example/cb?x=1", code_verifier="v" * 43
    ),
    "client credentials": lambda c: c.client_credentials("read write:all"),
    "revocation": lambda c: c.revoke("at=1&2", "access_token"),
}


def _answer(handler: HostileHandler) -> None:
    if handler.path.startswith("/revoke"):
        handler.answer(200)
    else:
        handler.json(TOKEN)


def _client(url: str, method: str) -> ProviderClient:
    client = OAuthClient(
        uuid="00000000-0000-0000-0000-000000000001",
        integration="acme",
        name="acme",
        client_id="client id/1",
        client_secret_enc=None,
        auth_url=f"{url}/authorize",
        token_url=f"{url}/token",
        revocation_url=f"{url}/revoke",
        token_endpoint_auth_method=method,  # type: ignore[arg-type]
        quirks=ProviderQuirks(token_params={"audience": "api ü"}, refresh_params={"scope": "a b"}),
    )
    return ProviderClient(client, SECRET, policy=POLICY)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_a_token_call_sends_what_requests_would(
    name: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    operation = OPERATIONS[name]
    through_requests = 0
    base = OAuth2Session.prepare_request

    def counted(self: OAuth2Session, request: requests.Request) -> requests.PreparedRequest:
        nonlocal through_requests
        through_requests += 1
        return base(self, request)  # type: ignore[no-any-return]

    monkeypatch.setattr(OAuth2Session, "prepare_request", counted)
    with HostileServer(_answer) as server:
        operation(_client(server.url, method))
        assert through_requests == 0  # prepared by TokenSession itself
        monkeypatch.setattr(TokenSession, "prepare_request", base)
        monkeypatch.setattr(
            TokenSession, "merge_environment_settings", requests.Session.merge_environment_settings
        )
        operation(_client(server.url, method))
        assert through_requests == 0  # ``base`` is the unwrapped original
    ours, theirs = server.seen
    assert ours.method == theirs.method == "POST"
    assert ours.path == theirs.path
    assert ours.headers == theirs.headers
    assert ours.body == theirs.body
    assert ours.body  # a form was sent, not an empty body


def _session() -> TokenSession:
    session = TokenSession(client_id="c", client_secret="s")
    session.trust_env = False
    return session


@pytest.mark.parametrize(
    "kwargs",
    [
        # Prepared by TokenSession: a form of strings.
        {"data": {"a": "1 2", "b": "ü&="}, "headers": {"Accept": "application/json"}},
        # No Content-Type given: the form's own is added, as requests adds it.
        {"data": {"a": "1"}},
        # A header set to None is dropped, also one the session sets.
        {"data": {"a": "1"}, "headers": {"User-Agent": None, "X-Test": "y"}},
        # Not a form of strings: prepared by requests.
        {"data": {"a": ["1", "2"]}},
        {"data": {"a": 1}},
        {"data": "a=1"},
        {"data": {}},
        {"json": {"a": "1"}},
        {"data": {"a": "1"}, "params": {"q": "1"}},
        {"data": {"a": "1"}, "cookies": {"c": "1"}},
    ],
)
def test_prepare_request_matches_requests_for_every_shape(kwargs: dict[str, Any]) -> None:
    request = requests.Request("POST", "https://provider.example/token?x=1", **kwargs)
    ours = _session().prepare_request(request)
    theirs = OAuth2Session.prepare_request(_session(), request)
    assert (ours.method, ours.url, dict(ours.headers), ours.body) == (
        theirs.method,
        theirs.url,
        dict(theirs.headers),
        theirs.body,
    )


def test_a_session_with_state_of_its_own_is_prepared_by_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cookies, query parameters, proxies or environment trust on the session itself:
    requests merges them, not this session."""
    seen: list[str] = []
    base = OAuth2Session.prepare_request

    def counted(self: OAuth2Session, request: requests.Request) -> requests.PreparedRequest:
        seen.append("requests")
        return base(self, request)  # type: ignore[no-any-return]

    monkeypatch.setattr(OAuth2Session, "prepare_request", counted)
    request = requests.Request("POST", "https://provider.example/token", data={"a": "1"})
    _session().prepare_request(request)
    assert seen == []
    for change in (
        lambda s: s.cookies.set("c", "1"),
        lambda s: s.params.update({"q": "1"}),
        lambda s: setattr(s, "trust_env", True),
        lambda s: s.hooks["response"].append(lambda r, **k: r),
    ):
        session = _session()
        change(session)
        prepared = session.prepare_request(request)
        assert seen.pop() == "requests"
        assert prepared.body == "a=1"
    session = _session()
    session.proxies["https"] = "http://proxy.example:3128"
    settings = session.merge_environment_settings(request.url, {}, None, None, None)
    assert settings["proxies"] == {"https": "http://proxy.example:3128"}
    assert _session().merge_environment_settings(request.url, {}, None, "/ca.pem", None) == {
        "proxies": {},
        "stream": False,
        "verify": "/ca.pem",
        "cert": None,
    }
