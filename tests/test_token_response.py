"""Validation of token endpoint answers (pure function; the HTTP cases run against the
live provider in test_flow and test_lifecycle)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flask_zis_connections import ProviderError
from flask_zis_connections.domain import ProviderQuirks
from flask_zis_connections.errors import InvalidValue
from flask_zis_connections.provider_client import interpolate
from flask_zis_connections.token_answer import TokenRequestRejected, parse_token_response


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


# -- providers' quirks ----------------------------------------------------------------------
def test_a_form_encoded_answer_reads_like_json() -> None:
    body = "access_token=at-1&token_type=bearer&scope=repo%2Cuser&expires_in=28800&refresh_token=rt-1"
    resp = parse_token_response(body, "application/x-www-form-urlencoded; charset=utf-8")
    assert (resp.access_token, resp.refresh_token, resp.expires_in) == ("at-1", "rt-1", 28800.0)
    assert resp.scope == "repo,user"  # the default separator is a space: kept as sent
    with_commas = parse_token_response(
        body, "application/x-www-form-urlencoded", ProviderQuirks(scope_separator=",")
    )
    assert with_commas.scope == "repo user"
    with pytest.raises(TokenRequestRejected) as info:
        parse_token_response(
            "error=bad_verification_code&error_description=x", "application/x-www-form-urlencoded"
        )
    assert info.value.error == "bad_verification_code"


def test_a_form_body_labelled_json_is_not_guessed() -> None:
    with pytest.raises(ProviderError, match="not JSON"):
        parse_token_response("access_token=at", "application/json")


def test_http_200_error_shapes_are_errors() -> None:
    quirks = ProviderQuirks(ok_field="ok")
    with pytest.raises(TokenRequestRejected) as info:
        parse_token_response('{"ok": false, "error": "invalid_code"}', "application/json", quirks)
    assert info.value.error == "invalid_code"
    with pytest.raises(TokenRequestRejected) as info:
        parse_token_response('{"ok": false}', "application/json", quirks)
    assert info.value.error == "invalid_response"
    ok = parse_token_response('{"ok": true, "access_token": "xoxb"}', "application/json", quirks)
    assert ok.access_token == "xoxb"


def test_tokens_nested_in_the_answer_and_renamed_fields() -> None:
    quirks = ProviderQuirks(
        token_response_fields={
            "access_token": "authed_user.access_token",
            "token_type": "authed_user.token_type",
            "scope": "authed_user.scope",
            "refresh_token_expires_in": "x_refresh_token_expires_in",
        },
        scope_separator=",",
    )
    answer = {
        "ok": True,
        "access_token": "xoxb-bot",
        "authed_user": {"id": "U1", "access_token": "xoxp-user", "token_type": "user", "scope": "a,b"},
        "team": {"id": "T1"},
        "x_refresh_token_expires_in": "8726400",
    }
    resp = parse_token_response(json.dumps(answer), "application/json", quirks)
    assert (resp.access_token, resp.token_type, resp.scope) == ("xoxp-user", "user", "a b")
    assert resp.refresh_token_expires_in == 8726400.0
    # Metadata reads dotted paths, skips what is missing, and never keeps a token.
    assert resp.metadata(("team.id", "authed_user.id", "missing.path", "authed_user.access_token")) == {
        "team.id": "T1",
        "authed_user.id": "U1",
    }
    # Missing where the quirk points, a value is read at its RFC 6749 place: Slack answers
    # the refresh of a user token at the top level.
    refreshed = parse_token_response('{"access_token": "top-level-only"}', "application/json", quirks)
    assert refreshed.access_token == "top-level-only"
    with pytest.raises(ProviderError, match="no access_token"):
        parse_token_response('{"authed_user": {}}', "application/json", quirks)


def test_default_token_lifetime_only_for_refreshable_tokens_without_expires_in() -> None:
    quirks = ProviderQuirks(default_token_lifetime=7200)
    refreshable = parse_token_response('{"access_token": "a", "refresh_token": "r"}', None, quirks)
    assert refreshable.expires_in == 7200.0
    stated = parse_token_response(
        '{"access_token": "a", "refresh_token": "r", "expires_in": 60}', None, quirks
    )
    assert stated.expires_in == 60.0
    # Without a refresh token nothing can renew it: no expiry is invented.
    assert parse_token_response('{"access_token": "a"}', None, quirks).expires_in is None


def test_a_documented_refresh_token_lifetime_fills_in_for_a_silent_provider() -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography.fernet import Fernet

    from flask_zis_connections.crypto import Encryptor

    now = datetime(2030, 1, 1, tzinfo=UTC)
    enc = Encryptor.from_config([Fernet.generate_key().decode()], None, None)
    silent = parse_token_response('{"access_token": "a", "refresh_token": "r", "expires_in": 1800}')
    fields = silent.stored_fields(
        enc, now, kept_refresh_token=None, kept_scope=None, default_refresh_lifetime=60
    )
    assert fields["refresh_token_expiry"] == now + timedelta(seconds=60)
    told = parse_token_response('{"access_token": "a", "refresh_token": "r", "refresh_token_expires_in": 5}')
    fields = told.stored_fields(
        enc, now, kept_refresh_token=None, kept_scope=None, default_refresh_lifetime=60
    )
    assert fields["refresh_token_expiry"] == now + timedelta(seconds=5)  # what the provider says wins
    kept = parse_token_response('{"access_token": "a", "expires_in": 1800}')
    fields = kept.stored_fields(
        enc, now, kept_refresh_token="old", kept_scope=None, default_refresh_lifetime=60
    )
    assert "refresh_token_expiry" not in fields  # a kept refresh token keeps its expiry
