"""Validating a client's provider quirks: one set of rules for presets, the host and the API.

Every option of :class:`~flask_zis_connections.domain.ProviderQuirks` is checked here
before anything is stored, each failure naming the field (the API answers 422 with it).
Parameters the flow or the token request set themselves cannot be overridden: a quirk
may add to a request, never take over its security-relevant parts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import validation as v
from .domain import TOKEN_ANSWER_FIELDS, ProviderQuirks
from .errors import InvalidValue

#: Every quirk option a client accepts: the fields of ``ProviderQuirks`` (``provider``
#: is set by ``provider=``, not as an option of its own).
QUIRK_FIELDS = tuple(f.name for f in dataclasses.fields(ProviderQuirks) if f.name != "provider")
SCOPE_SEPARATORS = (" ", ",", "+")
#: Form fields the token request sets itself (RFC 6749 §4.1.3, §6, RFC 7636 §4.5).
_RESERVED_TOKEN_PARAMS = frozenset(
    {"grant_type", "code", "redirect_uri", "client_id", "client_secret", "code_verifier", "refresh_token"}
)
#: Callback parameters the flow reads itself (and that carry secrets).
_RESERVED_CALLBACK_PARAMS = frozenset({"code", "state", "iss", "error", "error_description"})
_PATH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,4}")
_PARAM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_METADATA_URL_RE = re.compile(r"\{\{metadata\.([A-Za-z0-9_.-]{1,64})\}\}(/[\x21-\x7e]*)?")
_MAX_ITEMS = 20
_MAX_LIFETIME = 10 * 365 * 86400


def build_quirks(merged: Mapping[str, Any], *, allow_insecure: bool) -> ProviderQuirks:
    """The validated quirks among ``merged`` (the client's fields after any preset)."""
    separator = merged.get("scope_separator", " ")
    if separator not in SCOPE_SEPARATORS:
        raise InvalidValue("scope_separator", "must be one of ' ', ',' or '+'")
    lifetime = merged.get("default_token_lifetime")
    if lifetime is not None and (
        isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 0 < lifetime < _MAX_LIFETIME
    ):
        raise InvalidValue("default_token_lifetime", "must be a positive number of seconds")
    fields = v.str_mapping(merged.get("token_response_fields", {}), "token_response_fields")
    unknown = sorted(set(fields) - set(TOKEN_ANSWER_FIELDS))
    if unknown or not all(_PATH_RE.fullmatch(p) for p in fields.values()):
        raise InvalidValue(
            "token_response_fields",
            "maps " + ", ".join(TOKEN_ANSWER_FIELDS) + " to dotted paths in the answer",
        )
    ok_field = merged.get("ok_field")
    if ok_field is not None and not (isinstance(ok_field, str) and _PARAM_RE.fullmatch(ok_field)):
        raise InvalidValue("ok_field", "must be the name of a field of the token answer")
    callback_params = _names(merged.get("metadata_from_callback", ()), "metadata_from_callback", _PARAM_RE)
    if _RESERVED_CALLBACK_PARAMS & set(callback_params):
        raise InvalidValue("metadata_from_callback", "must not name code, state, iss or error parameters")
    provider = merged.get("provider")
    return ProviderQuirks(
        provider=None if provider is None else v.string(provider, "provider", max_len=64),
        scope_separator=separator,
        offline_scopes=v.scopes(merged.get("offline_scopes", ""), "offline_scopes"),
        token_params=_params(merged.get("token_params", {}), "token_params"),
        refresh_params=_params(merged.get("refresh_params", {}), "refresh_params"),
        default_token_lifetime=lifetime,
        api_base_url=_api_base_url(merged.get("api_base_url"), allow_insecure),
        allowed_domains=_names(merged.get("allowed_domains", ()), "allowed_domains", _HOST_RE, lower=True),
        token_response_fields=fields,
        ok_field=ok_field,
        metadata_from_token=_names(merged.get("metadata_from_token", ()), "metadata_from_token", _PATH_RE),
        metadata_from_callback=callback_params,
        reauth_errors=_names(merged.get("reauth_errors", ()), "reauth_errors", _PARAM_RE),
        api_token_header=_token_header(merged.get("api_token_header")),
        default_refresh_token_lifetime=_lifetime(
            merged.get("default_refresh_token_lifetime"), "default_refresh_token_lifetime"
        ),
    )


_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
#: Headers that must not carry a token: the request's framing, routing and cookies.
_FORBIDDEN_HEADERS = frozenset(
    {"host", "content-length", "content-type", "cookie", "transfer-encoding", "connection"}
)


def _token_header(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEADER_RE.fullmatch(value) or value.lower() in _FORBIDDEN_HEADERS:
        raise InvalidValue("api_token_header", "must be an HTTP header name (RFC 9110 token)")
    return value


def _lifetime(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _MAX_LIFETIME:
        raise InvalidValue(field, "must be a positive number of seconds")
    return value


def _params(value: object, field: str) -> dict[str, str]:
    params = v.str_mapping(value, field)
    clash = sorted(_RESERVED_TOKEN_PARAMS & set(params))
    if clash:
        raise InvalidValue(field, f"must not set {clash[0]!r}: the token request sets it itself")
    return params


def _names(value: object, field: str, pattern: re.Pattern[str], *, lower: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) > _MAX_ITEMS:
        raise InvalidValue(field, f"must be a list of at most {_MAX_ITEMS} names")
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise InvalidValue(field, "contains an invalid name")
    return tuple(item.lower() if lower else item for item in value)


def _api_base_url(value: object, allow_insecure: bool) -> str | None:
    """An https URL (``{{subdomain}}`` allowed), or ``{{metadata.key}}`` followed by a
    path: the base a provider tells each connection (Salesforce's ``instance_url``)."""
    if value is None:
        return None
    text = v.string(value, "api_base_url")
    if text.startswith("{{metadata."):
        if not _METADATA_URL_RE.fullmatch(text):
            raise InvalidValue("api_base_url", "must be a URL or {{metadata.<key>}} followed by a path")
        return text
    return v.provider_url(text, "api_base_url", allow_insecure=allow_insecure)
