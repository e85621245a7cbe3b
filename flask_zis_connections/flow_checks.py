"""What the OAuth flow checks about URLs and authorization responses.

Kept apart from the flow's steps because each check is a defence with its own reason:
where the browser may be sent back to (no open redirector, RFC 9700 §4.11), and whether
an authorization response really belongs to the flow's provider (mix-up, §4.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import validation as v
from .domain import OAuthClient, PendingFlow
from .errors import InvalidRequest, InvalidValue
from .provider_client import interpolate

_URL_FORBIDDEN_CHARS = frozenset("\\ \t\r\n\x00")


def check_redirect_origin(url: object, allowed_origins: list[str], allow_insecure: bool) -> str:
    """``origin_oauth_redirect_url`` must be absolute, clean and on an allowed origin."""
    field = "origin_oauth_redirect_url"
    text = v.string(url, field)
    if any(c in _URL_FORBIDDEN_CHARS for c in text):
        raise InvalidValue(field, "must not contain spaces or backslashes")
    origin = v.origin_of(text)
    parts = urlsplit(text)
    if origin is None or parts.username is not None or parts.password is not None:
        raise InvalidValue(field, "must be an absolute http(s) URL")
    if parts.scheme == "http" and not allow_insecure:
        raise InvalidValue(field, "must use https")
    allowed = {o for o in (v.origin_of(x) for x in allowed_origins) if o}
    if origin not in allowed:
        raise InvalidValue(field, "its origin is not allowed; add it to ZIS_ALLOWED_REDIRECT_ORIGINS")
    return text


def check_mix_up(
    client: OAuthClient, flow: PendingFlow, iss: str | None, path_client_uuid: str | None
) -> None:
    """Refuse an authorization response meant for another provider (RFC 9700 §4.4).

    In a mix-up attack, a client the attacker registered in the same integration
    (its ``auth_url`` on the attacker's server) starts the flow, and the attacker
    bounces the admin to an honest provider; the honest code then arrives with the
    attacker-client's state and would be sent to the attacker's ``token_url``.

    * RFC 9207: the ``iss`` sent must be the client's ``issuer`` when one is set,
      and a missing one is refused then.  Without ``issuer``, an ``iss`` that is
      sent must share the origin of the client's ``auth_url``: an honest provider
      that names itself then gives the bounce away.
    * Distinct redirect URIs (§4.4.2): a client with ``per_client_callback`` gets
      ``.../callback/<its uuid>``, so a response the honest provider delivers to
      its own client's URI never matches the attacker-client's flow.
    """
    if client.issuer is not None:
        if iss != client.issuer:
            raise InvalidRequest(
                "The authorization response is not from the expected issuer (RFC 9207). "
                "Start the OAuth flow again."
            )
    elif iss is not None and client.auth_url is not None:
        expected = v.origin_of(interpolate(client.auth_url, flow.oauth_url_subdomain))
        if v.origin_of(iss) != expected:
            raise InvalidRequest(
                "The authorization response names another issuer than the OAuth client's "
                "provider (RFC 9207). Start the OAuth flow again."
            )
    if (client.per_client_callback or path_client_uuid is not None) and path_client_uuid != client.uuid:
        raise InvalidRequest(
            "The authorization response arrived at another OAuth client's callback URL. "
            "Start the OAuth flow again."
        )


def per_client_callback_url(callback_url: str, client_uuid: str) -> str:
    """``.../callback/<client uuid>``: the redirect URI of a ``per_client_callback`` client."""
    parts = urlsplit(callback_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + client_uuid))


def add_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
