"""Input validation shared by the HTTP API, the Python API and the CLI.

Every check raises :class:`~flask_zis_connections.errors.InvalidValue` naming the
field, so a caller learns exactly what to fix; nothing is stored before all checks
have passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidRequest, InvalidValue

INTEGRATION_RE = re.compile(r"[a-z0-9_-]{1,64}")
CONNECTION_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: One DNS label: what ``{{subdomain}}`` may be replaced with.
DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
SCOPE_RE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+(?: [\x21\x23-\x5B\x5D-\x7E]+)*")
GRANT_TYPES = ("authorization_code", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
SUBDOMAIN_PLACEHOLDER = "{{subdomain}}"


def integration_name(value: object) -> str:
    if not isinstance(value, str) or not INTEGRATION_RE.fullmatch(value):
        raise InvalidValue("integration", "must match [a-z0-9_-]{1,64}")
    return value


def connection_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not CONNECTION_NAME_RE.fullmatch(value):
        raise InvalidValue(field, "must match [A-Za-z0-9_.-]{1,128}")
    return value


def client_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not CLIENT_NAME_RE.fullmatch(value):
        raise InvalidValue(field, "must match [A-Za-z0-9_.-]{1,128}")
    return value


def uuid_value(value: object, field: str = "uuid") -> str:
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        raise InvalidValue(field, "must be a UUID")
    return value.lower()


def string(value: object, field: str, *, max_len: int = 2048, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidValue(field, "must be a string")
    if not allow_empty and not value.strip():
        raise InvalidValue(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidValue(field, f"must be at most {max_len} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidValue(field, "must not contain control characters")
    return value


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(field, "must be true or false")
    return value


def scopes(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidValue(field, "must be a space-delimited string of scopes")
    value = " ".join(value.split())
    if value and not SCOPE_RE.fullmatch(value):
        raise InvalidValue(field, "contains characters not allowed in an OAuth scope")
    return value


def choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidValue(field, "must be one of " + ", ".join(choices))
    return value


def str_mapping(value: object, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidValue(field, "must be an object of string values")
    if len(value) > 32:
        raise InvalidValue(field, "must have at most 32 entries")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str) or not key:
            raise InvalidValue(field, "must be an object of string values")
        # Sent as query parameters to the provider: no control characters (a CR/LF or
        # NUL could split or truncate what the provider or a proxy sees).
        string(key, field, max_len=128)
        string(item, field, max_len=2048, allow_empty=True)
        out[key] = item
    return out


def provider_url(value: object, field: str, *, allow_insecure: bool, allow_placeholder: bool = True) -> str:
    """An absolute provider URL, https unless insecure http is allowed.

    ``{{subdomain}}`` may appear in the host; it is replaced by a validated DNS label
    at flow time, so it is checked here with a stand-in label.
    """
    text = string(value, field)
    probe = text.replace(SUBDOMAIN_PLACEHOLDER, "sub") if allow_placeholder else text
    try:
        parts = urlsplit(probe)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidValue(field, "is not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidValue(field, "must be an absolute https URL")
    if parts.scheme == "http" and not allow_insecure:
        raise InvalidValue(field, "must use https (set ZIS_ALLOW_INSECURE_HTTP for local development)")
    if parts.username or parts.password:
        raise InvalidValue(field, "must not contain credentials")
    if parts.fragment:
        raise InvalidValue(field, "must not contain a fragment")
    return text


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, or None when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def json_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def reject_unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidValue(unknown[0], "is not a known field; allowed: " + ", ".join(sorted(allowed)))
