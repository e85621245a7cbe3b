"""Request bodies: what each write takes, in the limits the code enforces.

Each field's pattern and length are the ones :mod:`~flask_zis_connections.validation`,
:mod:`~flask_zis_connections.quirks` and :mod:`~flask_zis_connections.credentials`
apply, so the document states the real limits; the views still check what a schema
cannot (URLs, origins, which client a name means).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from ... import validation as v
from ...credentials import MAX_SECRET, SECRET_FIELD
from ...domain import TOKEN_ANSWER_FIELDS
from ...providers import catalog
from ...quirks import _HOST_RE, _MAX_LIFETIME, _PARAM_RE, _PATH_RE, SCOPE_SEPARATORS
from .builders import anchored, boolean, enum, obj, string


def _string_map(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "maxProperties": 32,
        "propertyNames": {"minLength": 1, "maxLength": 128},
        "additionalProperties": {"type": "string", "maxLength": 2048},
    }


def _name_list(pattern: re.Pattern[str], description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": 20,
        "items": {"type": "string", "pattern": anchored(pattern)},
        "description": description,
    }


def start_request() -> dict[str, Any]:
    properties = {
        "name": string(
            "Name of the connection; an existing OAuth connection of that name is re-authorized "
            "(same uuid, new tokens).",
            nullable=True,
            pattern=anchored(v.CONNECTION_NAME_RE),
        ),
        "oauth_client_name": string(
            "The OAuth client, by name (this or `oauth_client_uuid`).",
            nullable=True,
            pattern=anchored(v.CLIENT_NAME_RE),
        ),
        "oauth_client_uuid": string("The OAuth client, by uuid.", nullable=True, pattern=anchored(v.UUID_RE)),
        "origin_oauth_redirect_url": string(
            "Where the browser returns with `verification_code`: an absolute URL on the host's own "
            "origin or one of `ZIS_ALLOWED_REDIRECT_ORIGINS`. Required for `authorization_code`.",
            nullable=True,
            maxLength=2048,
        ),
        "permission_scopes": string(
            "Space-delimited scopes (default: the client's `default_scopes`).",
            nullable=True,
            maxLength=2048,
        ),
        "allow_offline_access": boolean(
            "Ask for a refresh token (the client's offline-access parameters or scopes).", nullable=True
        ),
        "oauth_url_subdomain": string(
            "Replaces `{{subdomain}}` in the client's URLs: one DNS label.",
            nullable=True,
            maxLength=63,
            pattern=anchored(v.DNS_LABEL_RE),
        ),
        "grant_type": enum(v.GRANT_TYPES, "Default: the client's grant type.", nullable=True),
    }
    return obj(
        properties,
        required=["name"],
        closed=True,
        description='JSON `null` means "not given" for every field.',
    )


def client_properties() -> dict[str, Any]:
    url: dict[str, Any] = {"maxLength": 2048}
    return {
        "name": string("Unique within the integration.", pattern=anchored(v.CLIENT_NAME_RE)),
        "client_id": string("The client id at the provider.", minLength=1, maxLength=512),
        "client_secret": string(
            "Write-only: never answered (`has_client_secret` tells whether one is set). Required when "
            "an update moves `token_url`, `revocation_url` or `token_endpoint_auth_method`.",
            nullable=True,
            maxLength=4096,
        ),
        "auth_url": string(
            "Authorization endpoint (https; `{{subdomain}}` allowed in the host). Required for "
            "`authorization_code`.",
            nullable=True,
            **url,
        ),
        "token_url": string("Token endpoint (https; `{{subdomain}}` allowed in the host).", **url),
        "default_scopes": string("Space-delimited scopes a flow asks for by default.", maxLength=2048),
        "grant_type": enum(v.GRANT_TYPES, "Default `authorization_code`."),
        "token_endpoint_auth_method": enum(v.AUTH_METHODS, "Default `client_secret_basic`."),
        "pkce": boolean("PKCE with S256 (default true)."),
        "issuer": string("Expected `iss` on callbacks (RFC 9207).", nullable=True, **url),
        "authorize_params": _string_map("Extra query parameters of the authorization request."),
        "offline_access_params": _string_map("Parameters added when a flow asks for offline access."),
        "revocation_url": string("RFC 7009 endpoint, called on delete.", nullable=True, **url),
        "per_client_callback": boolean(
            "The provider redirects to `/connections/oauth/callback/{client uuid}` (mix-up defence)."
        ),
        "provider": enum(
            sorted(catalog()),
            "A preset of the catalog (`GET /connections/oauth/providers`) filling in the provider's "
            "URLs and quirks; explicit fields win.",
            nullable=True,
        ),
        "scope_separator": enum(SCOPE_SEPARATORS, "How scopes are joined (default a space)."),
        "offline_scopes": string("Scopes added when a flow asks for offline access.", maxLength=2048),
        "token_params": _string_map("Extra form fields of the code exchange."),
        "refresh_params": _string_map("Extra form fields of a refresh."),
        "default_token_lifetime": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": _MAX_LIFETIME - 1,
            "description": "Seconds assumed when a token answer has a refresh token but no `expires_in`.",
        },
        "api_base_url": string(
            "Where `zis.session` may send the connection's token (a URL, or `{{metadata.<key>}}` "
            "and a path).",
            nullable=True,
            maxLength=2048,
        ),
        "allowed_domains": _name_list(_HOST_RE, "More hosts `zis.session` may send the token to."),
        "token_response_fields": {
            "type": "object",
            "description": "Where a value sits in the token answer, e.g. "
            '`{"access_token": "authed_user.access_token"}`.',
            "propertyNames": {"enum": list(TOKEN_ANSWER_FIELDS)},
            "additionalProperties": {"type": "string", "pattern": anchored(_PATH_RE)},
        },
        "ok_field": string(
            "An answer whose field of this name is `false` is an error.",
            nullable=True,
            pattern=anchored(_PARAM_RE),
        ),
        "metadata_from_token": _name_list(_PATH_RE, "Dotted paths of the token answer kept as metadata."),
        "metadata_from_callback": _name_list(_PARAM_RE, "Callback query parameters kept as metadata."),
        "api_token_header": string(
            "The header `zis.session` sends the access token in, when the provider's API does not "
            "take `Authorization: Bearer` (e.g. `X-Shopify-Access-Token`).",
            nullable=True,
            pattern=anchored(v.HEADER_NAME_RE),
        ),
        "default_refresh_token_lifetime": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": _MAX_LIFETIME - 1,
            "description": "Seconds a new refresh token is assumed to live when the answer does not say.",
        },
        "reauth_errors": _name_list(
            _PARAM_RE,
            "The provider's own error codes meaning the refresh token or grant is dead (besides "
            "`invalid_grant`): they mark the connection as needing re-authorization.",
        ),
    }


def client_create() -> dict[str, Any]:
    return obj(client_properties(), required=["name", "client_id", "token_url"], closed=True)


def client_update() -> dict[str, Any]:
    return obj(
        client_properties(),
        closed=True,
        description="The fields to change; the others keep their values.",
    )


def token_request() -> dict[str, Any]:
    seconds = {"type": ["integer", "null"], "minimum": 1, "maximum": _MAX_LIFETIME - 1}
    text = functools.partial(string, nullable=True, maxLength=4096)
    return obj(
        {
            "client_id": text("The host OAuth client's id."),
            "client_secret": text(),
            "code": text("The authorization code (`authorization_code`)."),
            "grant_type": text("`authorization_code`, `refresh_token` or `client_credentials`."),
            "redirect_uri": text(),
            "scope": text(),
            "refresh_token": text("The refresh token (`refresh_token`)."),
            "expires_in": {**seconds, "description": "Requested access-token lifetime, seconds."},
            "refresh_token_expires_in": {**seconds, "description": "Requested refresh-token lifetime."},
        },
        required=["client_id", "grant_type"],
        closed=True,
    )


#: Each type's write-only field.
SECRET_FIELDS: Final = frozenset(SECRET_FIELD.values())
CREDENTIAL_FIELDS: Final[Mapping[str, Mapping[str, Any]]] = {
    "bearer_token": {
        "token": string(
            "The bearer token, sent as `Authorization: Bearer <token>`. Write-only (answered as `*****`).",
            minLength=1,
            maxLength=MAX_SECRET,
            pattern=anchored(v.HEADER_VALUE_RE),
        ),
    },
    "basic_auth": {
        "username": string("User name; no `:` (RFC 7617).", minLength=1, maxLength=256),
        "password": string("Password (may be empty). Write-only (answered as `*****`).", maxLength=4096),
    },
    "api_key": {
        "api_key": string(
            "The key, sent as the value of `header_name`. Write-only (answered as `*****`).",
            minLength=1,
            maxLength=MAX_SECRET,
            pattern=anchored(v.HEADER_VALUE_RE),
        ),
        "header_name": string(
            "The header carrying the key (e.g. `X-Api-Key`).", pattern=anchored(v.HEADER_NAME_RE)
        ),
    },
}
_ALLOWED_DOMAIN = string(
    "The one host (name or IP address, no scheme, port or path) the credential is sent to; loopback "
    "and private addresses only with `ZIS_ALLOW_INSECURE_HTTP` or `ZIS_ALLOWED_PRIVATE_HOSTS`.",
    minLength=1,
    maxLength=255,
)
_CREDENTIAL_NAME = string(
    "Unique across every connection type of the integration: letters, digits, `_` and `-`.",
    pattern=anchored(v.SERVICE_CONNECTION_NAME_RE),
)


def credential_create(kind: str) -> dict[str, Any]:
    fields = CREDENTIAL_FIELDS[kind]
    return obj(
        {"name": _CREDENTIAL_NAME, "allowed_domain": _ALLOWED_DOMAIN, **fields},
        required=["name", "allowed_domain", *fields],
        closed=True,
    )


def credential_update(kind: str) -> dict[str, Any]:
    return obj(
        {"name": _CREDENTIAL_NAME, "allowed_domain": _ALLOWED_DOMAIN, **CREDENTIAL_FIELDS[kind]},
        closed=True,
        description="The fields to change; `name` cannot change (it may be sent unchanged).",
    )
