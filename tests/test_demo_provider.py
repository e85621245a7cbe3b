"""The demo provider is the yardstick for the extension's OAuth tests, so prove it first.

Everything here goes over real HTTP to a :class:`LiveProvider`, the way the extension will.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from .live_provider import DEFAULT_REDIRECT_URI, LiveProvider
from .support.instrumented_provider import FAULT_KINDS

# The ``provider`` and ``provider_factory`` fixtures come from provider_fixtures.py, which
# tests/conftest.py star-imports.

CLIENT = ("demo-client", "demo-secret")
Factory = Callable[..., LiveProvider]


# --------------------------------------------------------------------------- helpers


def make_pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def authorize_url(live: LiveProvider, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": CLIENT[0],
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "scope": "read",
        "state": "state-123",
        **params,
    }
    return f"{live.auth_url}?{urlencode(query)}"


def callback_params(location: str) -> dict[str, str]:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == DEFAULT_REDIRECT_URI
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def get_code(live: LiveProvider, challenge: str | None = None, **params: str) -> str:
    if challenge is not None:
        params = {"code_challenge": challenge, "code_challenge_method": "S256", **params}
    result = callback_params(live.approve(authorize_url(live, **params)))
    assert result["state"] == params.get("state", "state-123")
    return result["code"]


def post_token(
    live: LiveProvider,
    data: dict[str, str],
    *,
    auth: tuple[str, str] | None = CLIENT,
    timeout: float = 10,
) -> requests.Response:
    return requests.post(live.token_url, data=data, auth=auth, timeout=timeout)


def exchange(live: LiveProvider, code: str, verifier: str | None = None) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": DEFAULT_REDIRECT_URI}
    if verifier is not None:
        data["code_verifier"] = verifier
    return post_token(live, data)


def refresh(live: LiveProvider, refresh_token: str) -> requests.Response:
    return post_token(live, {"grant_type": "refresh_token", "refresh_token": refresh_token})


def client_credentials(live: LiveProvider, **kw: Any) -> requests.Response:
    return post_token(live, {"grant_type": "client_credentials"}, **kw)


def full_tokens(live: LiveProvider) -> dict[str, Any]:
    verifier, challenge = make_pkce()
    response = exchange(live, get_code(live, challenge), verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def me(live: LiveProvider, access_token: str) -> requests.Response:
    return requests.get(live.api_url, headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def error_of(response: requests.Response) -> str:
    return str(response.json()["error"])


# --------------------------------------------------------------------------- auth code


def test_authorization_code_with_pkce_s256(provider: LiveProvider) -> None:
    provider.register_client()
    verifier, challenge = make_pkce()
    code = get_code(provider, challenge)

    response = exchange(provider, code, verifier)

    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["access_token"]
    assert token["refresh_token"]
    assert token["expires_in"] == 3600
    assert token["scope"] == "read"
    assert me(provider, token["access_token"]).json() == {
        "sub": "demo-user",
        "user_id": "demo-user",
        "client_id": "demo-client",
        "scope": "read",
    }
    [call] = provider.state.token_calls
    assert call["grant_type"] == "authorization_code"
    assert call["client_id"] == "demo-client"
    assert call["auth_method"] == "client_secret_basic"
    assert call["has_code_verifier"] is True
    assert call["status"] == 200
    [seen] = provider.state.authorize_requests
    assert seen["code_challenge_method"] == "S256"
    assert seen["code_challenge"] == challenge


def test_consent_page_escapes_what_it_shows(provider: LiveProvider) -> None:
    provider.register_client(client_id="<b>evil</b>")
    url = authorize_url(provider, client_id="<b>evil</b>")
    page = requests.get(url, timeout=10)
    assert page.status_code == 200
    assert "<b>evil</b>" not in page.text
    assert "&lt;b&gt;evil&lt;/b&gt;" in page.text
    assert 'name="confirm" value="yes"' in page.text


def test_scope_is_what_was_asked_and_allowed(provider: LiveProvider) -> None:
    provider.register_client(scope="read write")
    verifier, challenge = make_pkce()
    code = get_code(provider, challenge, scope="write admin")
    assert exchange(provider, code, verifier).json()["scope"] == "write"

    location = provider.approve(authorize_url(provider, scope="admin"))
    assert callback_params(location)["error"] == "invalid_scope"


def test_no_scope_requested_grants_the_client_scope(provider: LiveProvider) -> None:
    provider.register_client(scope="read write")
    url = f"{provider.auth_url}?" + urlencode(
        {"response_type": "code", "client_id": CLIENT[0], "redirect_uri": DEFAULT_REDIRECT_URI}
    )
    code = callback_params(provider.approve(url))["code"]
    assert exchange(provider, code).json()["scope"] == "read write"


def test_wrong_code_verifier_is_invalid_grant(provider: LiveProvider) -> None:
    provider.register_client()
    _verifier, challenge = make_pkce()
    wrong, _ = make_pkce()
    response = exchange(provider, get_code(provider, challenge), wrong)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_missing_code_verifier_is_refused(provider: LiveProvider) -> None:
    provider.register_client()
    _verifier, challenge = make_pkce()
    response = exchange(provider, get_code(provider, challenge))
    assert response.status_code == 400
    assert error_of(response) == "invalid_request"


def test_code_is_single_use(provider: LiveProvider) -> None:
    provider.register_client()
    verifier, challenge = make_pkce()
    code = get_code(provider, challenge)
    assert exchange(provider, code, verifier).status_code == 200
    again = exchange(provider, code, verifier)
    assert again.status_code == 400
    assert error_of(again) == "invalid_grant"
    assert provider.state.code_exchange_count == 2


def test_concurrent_exchanges_of_one_code_yield_one_token(provider: LiveProvider) -> None:
    provider.register_client()
    verifier, challenge = make_pkce()
    code = get_code(provider, challenge)
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: exchange(provider, code, verifier).status_code, range(8)))
    assert statuses == [200] + [400] * 7


def test_redirect_uri_must_match_exactly(provider: LiveProvider) -> None:
    provider.register_client()
    page = requests.get(authorize_url(provider, redirect_uri=DEFAULT_REDIRECT_URI + "/extra"), timeout=10)
    # Never redirect to an unregistered URI: the error is shown, not sent.
    assert page.status_code == 400
    assert "Location" not in page.headers
    assert error_of(page) == "invalid_request"


def test_token_redirect_uri_must_match_the_authorization_request(provider: LiveProvider) -> None:
    provider.register_client(redirect_uris=[DEFAULT_REDIRECT_URI, "http://localhost/other"])
    verifier, challenge = make_pkce()
    code = get_code(provider, challenge)
    response = post_token(
        provider,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://localhost/other",
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_require_pkce_client_without_challenge_is_refused(provider: LiveProvider) -> None:
    provider.register_client(require_pkce=True)
    result = callback_params(provider.approve(authorize_url(provider)))
    assert result["error"] == "invalid_request"
    assert result["state"] == "state-123"
    assert "code" not in result


def test_deny_redirects_with_access_denied(provider: LiveProvider) -> None:
    provider.register_client()
    _verifier, challenge = make_pkce()
    location = provider.approve(
        authorize_url(provider, code_challenge=challenge, code_challenge_method="S256"),
        confirm=False,
    )
    result = callback_params(location)
    assert result["error"] == "access_denied"
    assert result["state"] == "state-123"
    assert "code" not in result
    assert "iss" not in result


# --------------------------------------------------------------------------- client auth


def test_client_secret_basic_and_post(provider: LiveProvider) -> None:
    provider.register_client()
    provider.register_client("post-client", "post-secret", token_endpoint_auth_method="client_secret_post")

    basic = client_credentials(provider)
    post = requests.post(
        provider.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "post-client",
            "client_secret": "post-secret",
        },
        timeout=10,
    )

    assert basic.status_code == 200, basic.text
    assert post.status_code == 200, post.text
    assert [c["auth_method"] for c in provider.state.token_calls] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert [c["client_id"] for c in provider.state.token_calls] == ["demo-client", "post-client"]


def test_wrong_secret_is_invalid_client(provider: LiveProvider) -> None:
    provider.register_client()
    response = client_credentials(provider, auth=("demo-client", "nope"))
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"


def test_registered_auth_method_is_enforced(provider: LiveProvider) -> None:
    provider.register_client()  # client_secret_basic
    response = requests.post(
        provider.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT[0],
            "client_secret": CLIENT[1],
        },
        timeout=10,
    )
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"


# --------------------------------------------------------------------------- refresh


def test_refresh_rotates_and_the_old_token_dies(provider: LiveProvider) -> None:
    provider.register_client()
    first = full_tokens(provider)

    second = refresh(provider, first["refresh_token"])

    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["access_token"] != first["access_token"]
    assert rotated["scope"] == "read"
    assert rotated["expires_in"] == 3600
    assert not provider.state.is_refresh_token_active(first["refresh_token"])

    replay = refresh(provider, first["refresh_token"])
    assert replay.status_code == 400
    assert error_of(replay) == "invalid_grant"
    assert refresh(provider, rotated["refresh_token"]).status_code == 200

    calls = [c for c in provider.state.token_calls if c["grant_type"] == "refresh_token"]
    assert [c["refresh_token"] for c in calls] == [
        first["refresh_token"],
        first["refresh_token"],
        rotated["refresh_token"],
    ]
    assert [c["status"] for c in calls] == [200, 400, 200]
    assert provider.state.refresh_call_count == 3


def test_concurrent_refreshes_with_one_token_yield_one_success(provider: LiveProvider) -> None:
    provider.register_client()
    old = full_tokens(provider)["refresh_token"]
    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: refresh(provider, old).status_code, range(8)))
    assert statuses == [200] + [400] * 7


def test_refresh_may_narrow_scope_but_not_widen_it(provider: LiveProvider) -> None:
    provider.register_client()
    verifier, challenge = make_pkce()
    token = exchange(provider, get_code(provider, challenge, scope="read write"), verifier).json()
    narrowed = post_token(
        provider,
        {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "scope": "read"},
    )
    assert narrowed.json()["scope"] == "read"
    widened = post_token(
        provider,
        {
            "grant_type": "refresh_token",
            "refresh_token": narrowed.json()["refresh_token"],
            "scope": "read write",
        },
    )
    assert error_of(widened) == "invalid_scope"


def test_state_can_revoke_a_refresh_token_or_a_client(provider: LiveProvider) -> None:
    provider.register_client()
    tokens = full_tokens(provider)

    provider.state.revoke_refresh_token(tokens["refresh_token"])
    response = refresh(provider, tokens["refresh_token"])
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"

    provider.state.revoke_client("demo-client")
    response = client_credentials(provider)
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"

    with pytest.raises(KeyError, match="register_client"):
        provider.state.revoke_client("nobody")


# --------------------------------------------------------------------------- other grants


def test_client_credentials(provider: LiveProvider) -> None:
    provider.register_client()
    response = client_credentials(provider)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["scope"] == "read write"
    assert "refresh_token" not in token
    assert me(provider, token["access_token"]).json()["user_id"] is None
    assert provider.state.client_credentials_call_count == 1


def test_client_without_a_grant_type_is_refused_it(provider: LiveProvider) -> None:
    provider.register_client(grant_types=["authorization_code"])
    response = client_credentials(provider)
    assert response.status_code == 400
    assert error_of(response) == "unauthorized_client"


def test_token_lifetime_is_configurable(provider_factory: Factory) -> None:
    live = provider_factory(ACCESS_TOKEN_EXPIRES_IN=0)
    live.register_client()
    token = client_credentials(live).json()
    assert token["expires_in"] == 0
    assert me(live, token["access_token"]).status_code == 401

    forever = provider_factory(ACCESS_TOKEN_EXPIRES_IN=None)
    forever.register_client()
    assert "expires_in" not in client_credentials(forever).json()


def test_api_me_needs_a_valid_token(provider: LiveProvider) -> None:
    assert requests.get(provider.api_url, timeout=10).status_code == 401
    assert me(provider, "not-a-token").status_code == 401


# --------------------------------------------------------------------------- RFC 9207


def test_issuer_is_added_to_authorization_responses(provider_factory: Factory) -> None:
    live = provider_factory(ISSUER="https://issuer.example")
    live.register_client()
    _verifier, challenge = make_pkce()
    params = {"code_challenge": challenge, "code_challenge_method": "S256"}

    approved = callback_params(live.approve(authorize_url(live, **params)))
    denied = callback_params(live.approve(authorize_url(live, **params), confirm=False))
    bad_scope = callback_params(live.approve(authorize_url(live, scope="admin")))

    assert approved["iss"] == "https://issuer.example"
    assert approved["code"]
    assert denied["iss"] == "https://issuer.example"
    assert denied["error"] == "access_denied"
    assert bad_scope["iss"] == "https://issuer.example"


def test_no_issuer_by_default(provider: LiveProvider) -> None:
    provider.register_client()
    _verifier, challenge = make_pkce()
    location = provider.approve(
        authorize_url(provider, code_challenge=challenge, code_challenge_method="S256")
    )
    assert "iss" not in callback_params(location)


# --------------------------------------------------------------------------- revocation


def test_revoking_a_refresh_token(provider: LiveProvider) -> None:
    provider.register_client()
    tokens = full_tokens(provider)

    response = requests.post(
        provider.revocation_url,
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=CLIENT,
        timeout=10,
    )

    assert response.status_code == 200
    assert provider.state.revocations == [
        {
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": "demo-client",
            "status": 200,
        }
    ]
    assert error_of(refresh(provider, tokens["refresh_token"])) == "invalid_grant"
    assert me(provider, tokens["access_token"]).status_code == 401


def test_revoking_an_access_token_keeps_the_refresh_token(provider: LiveProvider) -> None:
    provider.register_client()
    tokens = full_tokens(provider)
    response = requests.post(
        provider.revocation_url, data={"token": tokens["access_token"]}, auth=CLIENT, timeout=10
    )
    assert response.status_code == 200
    assert me(provider, tokens["access_token"]).status_code == 401
    assert refresh(provider, tokens["refresh_token"]).status_code == 200


def test_revoking_an_unknown_token_is_fine_and_recorded(provider: LiveProvider) -> None:
    provider.register_client()
    response = requests.post(provider.revocation_url, data={"token": "unknown"}, auth=CLIENT, timeout=10)
    assert response.status_code == 200
    assert [r["token"] for r in provider.state.revocations] == ["unknown"]


# --------------------------------------------------------------------------- faults


def test_unknown_fault_is_refused(provider: LiveProvider) -> None:
    canned = {"http500", "html200", "no_access_token", "invalid_grant", "invalid_client"}
    assert canned | {"timeout", "slow", "omit_refresh_token"} == FAULT_KINDS, "untested fault"
    with pytest.raises(ValueError, match="Unknown fault"):
        provider.state.inject_token_fault("explode")


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("http500", 500, lambda r: r.headers["Content-Type"].startswith("text/plain")),
        (
            "html200",
            200,
            lambda r: r.headers["Content-Type"].startswith("text/html") and r.text == "<html>oops</html>",
        ),
        ("no_access_token", 200, lambda r: r.json() == {"token_type": "bearer"}),
        ("invalid_grant", 400, lambda r: r.json() == {"error": "invalid_grant"}),
        ("invalid_client", 401, lambda r: r.json() == {"error": "invalid_client"}),
    ],
)
def test_canned_faults_answer_once(
    provider: LiveProvider, kind: str, status: int, check: Callable[[requests.Response], bool]
) -> None:
    provider.register_client()
    provider.state.inject_token_fault(kind)

    faulty = client_credentials(provider)
    normal = client_credentials(provider)

    assert faulty.status_code == status
    assert check(faulty)
    assert normal.status_code == 200
    assert "access_token" in normal.json()
    assert provider.state.token_call_count == 2
    assert [c["fault"] for c in provider.state.token_calls] == [kind, None]
    assert provider.state.pending_faults == []


def test_faults_are_consumed_in_order_and_times(provider: LiveProvider) -> None:
    provider.register_client()
    provider.state.inject_token_fault("http500", times=2)
    provider.state.inject_token_fault("invalid_grant")
    statuses = [client_credentials(provider).status_code for _ in range(4)]
    assert statuses == [500, 500, 400, 200]


def test_a_canned_fault_does_not_consume_the_refresh_token(provider: LiveProvider) -> None:
    provider.register_client()
    tokens = full_tokens(provider)
    provider.state.inject_token_fault("http500")
    assert refresh(provider, tokens["refresh_token"]).status_code == 500
    assert refresh(provider, tokens["refresh_token"]).status_code == 200


def test_omit_refresh_token_keeps_the_old_one(provider: LiveProvider) -> None:
    provider.register_client()
    tokens = full_tokens(provider)
    provider.state.inject_token_fault("omit_refresh_token")

    response = refresh(provider, tokens["refresh_token"])

    assert response.status_code == 200
    body = response.json()
    assert "refresh_token" not in body
    assert body["access_token"] != tokens["access_token"]
    assert me(provider, body["access_token"]).status_code == 200
    assert provider.state.is_refresh_token_active(tokens["refresh_token"])
    rotated = refresh(provider, tokens["refresh_token"])
    assert rotated.status_code == 200
    assert "refresh_token" in rotated.json()


def test_omit_refresh_token_on_code_exchange(provider: LiveProvider) -> None:
    provider.register_client()
    provider.state.inject_token_fault("omit_refresh_token")
    token = full_tokens(provider)
    assert "refresh_token" not in token
    assert token["access_token"]


def test_timeout_fault_sleeps_then_answers(provider_factory: Factory) -> None:
    live = provider_factory(FAULT_SLEEP=0.4)
    live.register_client()
    live.state.inject_token_fault("timeout", times=2)

    with pytest.raises(requests.exceptions.ReadTimeout):
        client_credentials(live, timeout=0.1)
    started = time.monotonic()
    patient = client_credentials(live)
    waited = time.monotonic() - started
    quick = client_credentials(live, timeout=0.3)

    assert patient.status_code == 200
    assert waited >= 0.4
    assert quick.status_code == 200
    assert live.state.token_call_count == 3


def test_slow_fault_delays_a_normal_answer(provider_factory: Factory) -> None:
    live = provider_factory(SLOW_SLEEP=0.2)
    live.register_client()
    live.state.inject_token_fault("slow")
    started = time.monotonic()
    response = client_credentials(live)
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert live.state.token_calls[0]["fault"] == "slow"


# --------------------------------------------------------------------------- counters


def test_counters_count_failures_and_reset(provider: LiveProvider) -> None:
    provider.register_client()
    client_credentials(provider)
    client_credentials(provider, auth=("demo-client", "wrong"))
    refresh(provider, "unknown")
    post_token(provider, {"grant_type": "authorization_code", "code": "nope"})

    state = provider.state
    assert state.token_call_count == 4
    assert state.refresh_call_count == 1
    assert state.code_exchange_count == 1
    assert [c["status"] for c in state.token_calls] == [200, 401, 400, 400]

    state.reset_counters()
    assert state.token_call_count == 0
    assert state.token_calls == []


def test_twenty_concurrent_token_requests(provider: LiveProvider) -> None:
    provider.register_client()
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: client_credentials(provider), range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.json()["access_token"] for r in responses}) == 20
    assert provider.state.token_call_count == 20


# --------------------------------------------------------------------------- harness


def test_stop_does_not_wait_for_an_idle_keep_alive_connection() -> None:
    live = LiveProvider().start()
    live.register_client()
    with requests.Session() as session:
        assert (
            session.post(
                live.token_url, data={"grant_type": "client_credentials"}, auth=CLIENT, timeout=10
            ).status_code
            == 200
        )
        started = time.monotonic()
        live.stop()
        assert time.monotonic() - started < 2
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(live.api_url, timeout=1)


def test_approve_rejects_a_foreign_url(provider: LiveProvider) -> None:
    with pytest.raises(AssertionError, match="authorize endpoint"):
        provider.approve("http://127.0.0.1:1/oauth/authorize?client_id=x")
