"""Checking one preset file before it becomes part of the catalog.

A wrong preset would silently send a client secret to the wrong host or break every
flow with that provider, so a bad file fails the catalog load loudly, naming the file
and the key: unknown keys (a typo would otherwise be ignored), wrong types, non-https
or unparseable URLs, parameters the flow sets itself, a name that differs from the
file's.  The client validator checks the same options again when a client is created;
this catches mistakes in the shipped data at load time, in CI, not at a user's first flow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..validation import AUTH_METHODS, SCOPE_RE, SUBDOMAIN_PLACEHOLDER
from ._preset import DESCRIPTIVE_FIELDS, OPTION_FIELDS, ProviderPreset

NAME_RE = re.compile(r"[a-z0-9_]{1,64}")
SCOPE_SEPARATORS = (" ", ",", "+")
TOKEN_ANSWER_FIELDS = (
    "access_token",
    "token_type",
    "refresh_token",
    "expires_in",
    "refresh_token_expires_in",
    "scope",
)
REQUIRED = ("name", "display_name", "docs", "auth_url", "token_url", "quirks")
#: Authorize parameters the flow sets itself (RFC 6749 §4.1.1, RFC 7636 §4.3).
RESERVED_AUTHORIZE = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
    }
)
#: Form fields the token request sets itself (RFC 6749 §4.1.3, §6, RFC 7636 §4.5).
RESERVED_TOKEN = frozenset(
    {"grant_type", "code", "redirect_uri", "client_id", "client_secret", "code_verifier", "refresh_token"}
)
#: Callback parameters the flow reads itself (and that carry secrets).
RESERVED_CALLBACK = frozenset({"code", "state", "iss", "error", "error_description"})

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")
_PATH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,4}")
_PARAM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_METADATA_RE = re.compile(r"\{\{metadata\.[A-Za-z0-9_.-]{1,64}\}\}")
#: Stand-in for a URL a connection's metadata supplies (Salesforce's instance_url).
_METADATA_STAND_IN = "https://metadata.invalid"


class _Problem(Exception):
    """A value is wrong; the caller adds the file and the key to the message."""


def parse_preset(stem: str, source: str, data: Mapping[str, Any]) -> ProviderPreset:
    """The preset in ``data`` (a parsed TOML file named ``source``, stem ``stem``)."""
    unknown = sorted(set(data) - set(DESCRIPTIVE_FIELDS) - set(OPTION_FIELDS))
    if unknown:
        raise _error(source, unknown[0], "is not a preset key")
    for key in REQUIRED:
        if key not in data:
            raise _error(source, key, "is required")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        try:
            values[key] = _CHECKS[key](raw)
        except _Problem as exc:
            raise _error(source, key, str(exc)) from None
    if values["name"] != stem:
        raise _error(source, "name", f"must be the file's name {stem!r}")
    return ProviderPreset(**values)


def _error(source: str, key: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"Provider preset {source}: key {key!r} {problem}.")


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem("must be a non-empty string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _Problem("must not contain control characters")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _Problem("must match [a-z0-9_]+")
    return value


def _url(value: object, *, metadata_ok: bool = False) -> str:
    """An https URL that parses once its placeholders are filled in."""
    text = _text(value)
    probe = text.replace(SUBDOMAIN_PLACEHOLDER, "sub")
    if metadata_ok and _METADATA_RE.match(probe):
        probe = _METADATA_RE.sub(_METADATA_STAND_IN, probe, count=1)
    if "{{" in probe or "}}" in probe or any(c.isspace() for c in probe):
        raise _Problem("has an unknown placeholder or a space")
    try:
        parts = urlsplit(probe)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise _Problem("is not a parseable URL") from None
    if parts.scheme != "https":
        raise _Problem("must be an https URL")
    if not parts.hostname or not _HOST_RE.fullmatch(parts.hostname):
        raise _Problem("must name a host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise _Problem("must not carry credentials or a fragment")
    return text


def _api_url(value: object) -> str:
    return _url(value, metadata_ok=True)


def _docs(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Problem("must be a non-empty list of https URLs")
    return tuple(_url(item) for item in value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Problem("must be true or false")
    return value


def _lifetime(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Problem("must be a positive number of seconds")
    return value


def _auth_method(value: object) -> str:
    if value not in AUTH_METHODS:
        raise _Problem("must be one of " + ", ".join(AUTH_METHODS))
    return str(value)


def _separator(value: object) -> str:
    if value not in SCOPE_SEPARATORS:
        raise _Problem("must be one of ' ', ',' or '+'")
    return str(value)


def _scopes(value: object) -> str:
    if not isinstance(value, str) or not SCOPE_RE.fullmatch(value):
        raise _Problem("must be scope names separated by single spaces")
    return value


def _params(reserved: frozenset[str]) -> Callable[[object], Mapping[str, str]]:
    def check(value: object) -> Mapping[str, str]:
        if not isinstance(value, dict):
            raise _Problem("must be a table of string values")
        for key, item in value.items():
            if not _PARAM_RE.fullmatch(key) or not isinstance(item, str):
                raise _Problem("must be a table of string values")
            if key in reserved:
                raise _Problem(f"must not set {key!r}: the flow sets it itself")
        return MappingProxyType(dict(value))

    return check


def _names(
    pattern: re.Pattern[str], reserved: frozenset[str] = frozenset()
) -> Callable[[object], tuple[str, ...]]:
    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(i, str) and pattern.fullmatch(i) for i in value):
            raise _Problem("must be a list of names")
        clash = sorted(reserved & set(value))
        if clash:
            raise _Problem(f"must not name {clash[0]!r}: the flow reads it itself")
        return tuple(value)

    return check


def _answer_fields(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict) or not value:
        raise _Problem("must be a table")
    for key, path in value.items():
        if key not in TOKEN_ANSWER_FIELDS:
            raise _Problem(f"may only map {', '.join(TOKEN_ANSWER_FIELDS)}, not {key!r}")
        if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
            raise _Problem("must map to dotted paths in the token answer")
    return MappingProxyType(dict(value))


def _field_name(value: object) -> str:
    if not isinstance(value, str) or not _PARAM_RE.fullmatch(value):
        raise _Problem("must be the name of a field of the token answer")
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "display_name": _text,
    "docs": _docs,
    "quirks": _text,
    "auth_url": _url,
    "token_url": _url,
    "revocation_url": _url,
    "token_endpoint_auth_method": _auth_method,
    "pkce": _boolean,
    "scope_separator": _separator,
    "default_scopes": _scopes,
    "authorize_params": _params(RESERVED_AUTHORIZE),
    "offline_access_params": _params(RESERVED_AUTHORIZE),
    "offline_scopes": _scopes,
    "token_params": _params(RESERVED_TOKEN),
    "refresh_params": _params(RESERVED_TOKEN),
    "default_token_lifetime": _lifetime,
    "api_base_url": _api_url,
    "allowed_domains": _names(_HOST_RE),
    "token_response_fields": _answer_fields,
    "ok_field": _field_name,
    "metadata_from_token": _names(_PATH_RE),
    "metadata_from_callback": _names(_PARAM_RE, RESERVED_CALLBACK),
    "reauth_errors": _names(_PARAM_RE),
    "api_token_header": _field_name,
    "default_refresh_token_lifetime": _lifetime,
    "issuer": _url,
}
