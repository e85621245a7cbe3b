"""Input validation shared by the HTTP API, the Python API and the CLI.

Every check raises :class:`~flask_zis_connections.errors.InvalidValue` naming the
field, so a caller learns exactly what to fix; nothing is stored before all checks
have passed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidRequest, InvalidValue
from .outbound.policy import is_public_address

INTEGRATION_RE = re.compile(r"[a-z0-9_-]{1,64}")
CONNECTION_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: The service's rule for connection names, which the credential types follow; OAuth
#: connections keep accepting ``.`` too (see :func:`connection_name`).
SERVICE_CONNECTION_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: RFC 9110 ``token``: what a header field name may be made of.
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
#: Visible ASCII, single spaces inside: a token or key that fits a header value as is.
HEADER_VALUE_RE = re.compile(r"[\x21-\x7E]+(?: [\x21-\x7E]+)*")
#: One DNS label of a host name (RFC 1123: letters, digits, inner hyphens).
HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Header names an API key may not be sent in: the Fetch standard's forbidden request
#: headers (framing, routing, cookies, hop-by-hop; ``Proxy-*`` and ``Sec-*`` below) and
#: the two that say how the body reads.  ``Authorization`` is allowed: some APIs take a
#: raw key there.
FORBIDDEN_HEADER_NAMES = frozenset(
    {
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "referer",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
    }
)
#: Special-use names that never lead to a public host (RFC 6761, 6762, 8375, ICANN's
#: ``.internal``): refused as ``allowed_domain`` like loopback and private addresses.
LOCAL_NAME_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")
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
    """An OAuth connection's name: the service's rule plus ``.``, which names made
    before the other types existed may contain (lookups of any type accept it too)."""
    if not isinstance(value, str) or not CONNECTION_NAME_RE.fullmatch(value):
        raise InvalidValue(field, "must match [A-Za-z0-9_.-]{1,128}")
    return value


def service_connection_name(value: object, field: str = "name") -> str:
    """A new credential connection's name: letters, digits, ``_`` and ``-`` only."""
    if not isinstance(value, str) or not SERVICE_CONNECTION_NAME_RE.fullmatch(value):
        raise InvalidValue(field, "must be 1 to 128 letters, digits, '_' or '-'")
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


#: Metadata is for small values a later API call needs, not a document store.
METADATA_MAX_BYTES = 16 * 1024


def metadata_changes(changes: object) -> dict[str, Any]:
    """Validate a metadata update: string keys, JSON values (``None`` deletes)."""
    if not isinstance(changes, Mapping):
        raise InvalidValue("metadata", "must be an object")
    for key, value in changes.items():
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise InvalidValue("metadata", "keys must be strings of 1 to 128 characters")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidValue("metadata", f"the value of {key!r} is not JSON") from None
    return dict(changes)


# -- credential connections ------------------------------------------------------------------
def header_value(value: object, field: str, *, max_len: int) -> str:
    """A bearer token or API key: sent as a header value as it is, so visible ASCII with
    single inner spaces (no CR/LF can split the request), 1 to ``max_len`` characters."""
    if not isinstance(value, str):
        raise InvalidValue(field, "must be a string")
    if not value:
        raise InvalidValue(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidValue(field, f"must be at most {max_len} characters")
    if not HEADER_VALUE_RE.fullmatch(value):
        raise InvalidValue(
            field, "must be visible ASCII characters (single spaces inside allowed), no control characters"
        )
    return value


def basic_auth_username(value: object, field: str = "username") -> str:
    """RFC 7617: the user-id may not contain a colon (it ends at the first one)."""
    text = string(value, field, max_len=256)
    if ":" in text:
        raise InvalidValue(field, "must not contain ':' (Basic authentication ends the user name there)")
    return text


def basic_auth_password(value: object, field: str = "password") -> str:
    """Any text without control characters, up to 4096; empty is allowed (APIs that
    take a key as the user name and no password)."""
    return string(value, field, max_len=4096, allow_empty=True)


def header_name(value: object, field: str = "header_name") -> str:
    if not isinstance(value, str) or not HEADER_NAME_RE.fullmatch(value):
        raise InvalidValue(field, "must be an HTTP header name (RFC 9110 token characters, 1 to 128)")
    lowered = value.lower()
    if lowered in FORBIDDEN_HEADER_NAMES or lowered.startswith(("proxy-", "sec-")):
        raise InvalidValue(field, f"{value!r} is a header the HTTP client controls; choose another")
    return value


def allowed_domain(value: object, field: str, *, may_be_private: Callable[[str], bool]) -> str:
    """A host name or IP address, lower-cased, without scheme, port, path or brackets.

    ``may_be_private(host)`` says whether a host that cannot be public (a loopback,
    private or link-local address, ``localhost``, a single-label or special-use name)
    is allowed all the same (``ZIS_ALLOW_INSECURE_HTTP``, ``ZIS_ALLOWED_PRIVATE_HOSTS``).
    A name of a public host may still resolve to a private address: the outbound guard
    refuses that when a request is sent.
    """
    if not isinstance(value, str):
        raise InvalidValue(field, "must be a string")
    text = value.strip().lower()
    if not text:
        raise InvalidValue(field, "must not be empty")
    if "://" in text or any(c in text for c in "/?#@\\ \t") or len(text) > 255:
        raise InvalidValue(field, "must be a host name or IP address only: no scheme, path or credentials")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        return _ip_domain(text, field, may_be_private)
    text = text.removesuffix(".")
    labels = text.split(".")
    if labels[-1].isdigit() or all(part.isdigit() for part in labels):
        return _ip_domain(text, field, may_be_private)
    if len(text) > 253 or not all(HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidValue(
            field, "must be a host name (letters, digits and '-' in dot-separated labels) or an IP address"
        )
    local = len(labels) == 1 or text.endswith(LOCAL_NAME_SUFFIXES)
    if local and not may_be_private(text):
        raise InvalidValue(
            field,
            f"{text!r} is not a public host name; local names are allowed only with "
            "ZIS_ALLOW_INSECURE_HTTP or ZIS_ALLOWED_PRIVATE_HOSTS",
        )
    return text


def _ip_domain(text: str, field: str, may_be_private: Callable[[str], bool]) -> str:
    if "%" in text:
        raise InvalidValue(field, "must not carry an IPv6 zone id")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidValue(
            field, "must be a host name or IP address without a port (a port goes in the request URL)"
        ) from None
    host = address.compressed
    if not is_public_address(address) and not may_be_private(host):
        raise InvalidValue(
            field,
            f"{host} is a loopback, private, link-local or reserved address; allowed only with "
            "ZIS_ALLOW_INSECURE_HTTP or ZIS_ALLOWED_PRIVATE_HOSTS",
        )
    return host
