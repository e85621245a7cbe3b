"""Validation of token endpoint answers (pure function; the HTTP cases run against the
live provider in test_flow and test_lifecycle)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flask_zis_connections import ProviderError
from flask_zis_connections.errors import InvalidValue
from flask_zis_connections.provider_client import TokenRequestRejected, interpolate, parse_token_response


def _parse(**fields: Any) -> Any:
    return parse_token_response(json.dumps({"access_token": "at", **fields}))


@pytest.mark.parametrize(
    ("raw", "expected"), [(3600, 3600.0), ("3600", 3600.0), (None, None), ("", None), (59.5, 59.5), (0, 0.0)]
)
def test_expires_in_as_number_string_or_absent(raw: Any, expected: float | None) -> None:
    fields = {} if raw is None else {"expires_in": raw}
    assert _parse(**fields).expires_in == expected


@pytest.mark.parametrize("raw", ["soon", -1, True, [1], {"s": 1}, 1e12, "nan", "inf"])
def test_nonsense_expires_in_is_a_provider_error(raw: Any) -> None:
    with pytest.raises(ProviderError, match="expires_in"):
        _parse(expires_in=raw)


@pytest.mark.parametrize(
    ("raw", "expected"), [("Bearer", "bearer"), ("BEARER", "bearer"), ("bearer", "bearer"), ("MAC", "mac")]
)
def test_token_type_is_case_insensitive(raw: str, expected: str) -> None:
    assert _parse(token_type=raw).token_type == expected


def test_missing_token_type_defaults_to_bearer_and_scope_list_is_joined() -> None:
    parsed = _parse(scope=["read", "write"], refresh_token="rt")
    assert parsed.token_type == "bearer"
    assert parsed.scope == "read write"
    assert parsed.refresh_token == "rt"


@pytest.mark.parametrize(
    "body",
    [
        "<html>oops</html>",
        "[]",
        '"text"',
        "{}",
        '{"access_token": ""}',
        '{"access_token": 5}',
        '{"access_token": "a", "token_type": 7}',
        '{"access_token": "a", "refresh_token": ""}',
    ],
)
def test_unusable_bodies_are_provider_errors_without_the_body(body: str) -> None:
    with pytest.raises(ProviderError) as info:
        parse_token_response(body)
    assert "oops" not in info.value.message


def test_error_body_becomes_a_rejection_with_a_safe_code() -> None:
    with pytest.raises(TokenRequestRejected) as info:
        parse_token_response('{"error": "invalid_grant", "error_description": "secret-ish"}')
    assert info.value.error == "invalid_grant" and "secret-ish" not in info.value.message
    with pytest.raises(TokenRequestRejected) as info:
        parse_token_response('{"error": "<script>alert(1)</script>"}')
    assert info.value.error == "invalid_response"


@pytest.mark.parametrize("sub", [None, "a.b", "../x", "x y", "-x", "x" * 64, ""])
def test_subdomain_must_be_one_dns_label(sub: str | None) -> None:
    with pytest.raises(InvalidValue, match="oauth_url_subdomain"):
        interpolate("https://{{subdomain}}.acme.test/t", sub)
    assert interpolate("https://acme.test/t", sub) == "https://acme.test/t"


def test_subdomain_is_interpolated_lowercase() -> None:
    assert interpolate("https://{{subdomain}}.acme.test/t", "EU-1") == "https://eu-1.acme.test/t"
