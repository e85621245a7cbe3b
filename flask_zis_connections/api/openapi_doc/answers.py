"""Answers, and the ``components/schemas`` of the document (bodies included).

Answer schemas list every field a view sends and require the ones it always sends,
so Schemathesis's response checks catch an answer that changed shape.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from ... import validation as v
from ...credentials import MASK
from ...events import KINDS
from ...quirks import SCOPE_SEPARATORS
from .bodies import (
    CREDENTIAL_FIELDS,
    SECRET_FIELDS,
    client_create,
    client_properties,
    client_update,
    credential_create,
    credential_update,
    start_request,
    token_request,
)
from .builders import ERROR_CODES, NULLABLE_TIME, TIME, boolean, enum, error_schema, obj, ref, string


def _connection() -> dict[str, Any]:
    nullable = functools.partial(string, nullable=True)
    return obj(
        {
            "access_token": string("The OAuth access token."),
            "created_by": nullable("Who created the connection (an API token id or an admin)."),
            "integration": string("The name of the integration."),
            "name": string("Name used to uniquely identify the connection."),
            "oauth_access_token_response_body": nullable("The provider's answer to the token request."),
            "oauth_client_uuid": nullable("The OAuth client's uuid."),
            "oauth_url_subdomain": nullable("Interpolated into the client's `{{subdomain}}`."),
            "permission_scope": nullable("The scope the provider granted."),
            "refresh_token": nullable("The OAuth refresh token."),
            "token_expiry": NULLABLE_TIME,
            "token_type": nullable('The type of token, e.g. "bearer".'),
            "uuid": string("The UUID of the connection."),
            "zendesk_account_id": {"type": ["integer", "null"], "description": "`ZIS_ACCOUNT_ID`."},
            "metadata": {"type": "object", "description": "Provider values kept for later calls."},
            "refresh_token_expiry": NULLABLE_TIME,
        },
        required=[
            "access_token",
            "created_by",
            "integration",
            "name",
            "oauth_access_token_response_body",
            "oauth_client_uuid",
            "oauth_url_subdomain",
            "permission_scope",
            "refresh_token",
            "token_expiry",
            "token_type",
            "uuid",
            "zendesk_account_id",
        ],
    )


def _access_codes_answer() -> dict[str, Any]:
    return {
        "allOf": [
            ref("Connection"),
            obj(
                {
                    "origin_oauth_redirect_url": string("Where the flow returned to."),
                    "raw_callback_params": string("The provider's callback query string.", nullable=True),
                },
                required=["origin_oauth_redirect_url", "raw_callback_params"],
            ),
        ]
    }


def _client() -> dict[str, Any]:
    props = client_properties()
    del props["client_secret"]
    answer = {
        "uuid": string(),
        "integration": string(),
        "has_client_secret": boolean("Whether a secret is stored (it is never answered)."),
        **{key: _loosen(value) for key, value in props.items()},
        "version": {"type": "integer", "description": "Sent as `ETag`; send it back in `If-Match`."},
        "created_by": string(nullable=True),
        "created_at": TIME,
        "updated_at": TIME,
    }
    return obj(answer, required=list(answer))


def _loosen(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A request field's schema as an answer shows it: the type, not the input limits
    (a preset may hold values the request rules would not take from a caller)."""
    return {key: schema[key] for key in ("type", "description", "enum") if key in schema}


def _preset() -> dict[str, Any]:
    text = {"type": "string"}
    maybe_text = {"type": ["string", "null"]}
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    names = {"type": "array", "items": {"type": "string"}}
    fields: dict[str, Any] = {
        "name": text,
        "display_name": text,
        "docs": names,
        "auth_url": text,
        "token_url": text,
        "revocation_url": maybe_text,
        "token_endpoint_auth_method": {"type": ["string", "null"], "enum": [*v.AUTH_METHODS, None]},
        "pkce": {"type": ["boolean", "null"]},
        "scope_separator": {"enum": list(SCOPE_SEPARATORS)},
        "offline_access_params": strings,
        "offline_scopes": text,
        "token_params": strings,
        "refresh_params": strings,
        "default_token_lifetime": {"type": ["integer", "null"]},
        "api_base_url": maybe_text,
        "allowed_domains": names,
        "metadata_from_token": names,
        "metadata_from_callback": names,
        "quirks": {"type": "string", "description": "How the provider departs from plain OAuth."},
    }
    return obj(fields, required=list(fields))


def _credential_answer(kind: str) -> dict[str, Any]:
    secret = {"const": MASK, "description": "Always `*****`: the secret is write-only."}
    fields: dict[str, Any] = {
        "name": string(),
        "allowed_domain": string(),
        "created_at": TIME,
        "updated_at": TIME,
    }
    for field in CREDENTIAL_FIELDS[kind]:
        fields[field] = secret if field in SECRET_FIELDS else string()
    return obj(fields, required=list(fields))


def _oauth_summary() -> dict[str, Any]:
    nullable = functools.partial(string, nullable=True)
    fields = {
        "uuid": string(),
        "integration": string(),
        "name": string(),
        "oauth_client_uuid": nullable(),
        "oauth_url_subdomain": nullable(),
        "permission_scope": nullable(),
        "token_type": nullable(),
        "token_expiry": NULLABLE_TIME,
        "grant_type": enum(v.GRANT_TYPES, ""),
        "needs_reauth": boolean("A person must connect again (the provider refused the refresh)."),
        "metadata": {"type": "object"},
        "refresh_token_expiry": NULLABLE_TIME,
        "created_by": nullable(),
        "created_at": TIME,
        "updated_at": TIME,
    }
    return obj(fields, required=list(fields), description="An OAuth connection without token values.")


def _event() -> dict[str, Any]:
    nullable = functools.partial(string, nullable=True)
    fields = {
        "id": {"type": "integer", "description": "Increasing, never reused."},
        "kind": enum(KINDS, "What happened."),
        "connection_name": nullable(),
        "connection_uuid": nullable(),
        "oauth_client_uuid": nullable(),
        "actor": string("`api-token:<id>`, an admin id, `cli`, or `system` (the extension on its own)."),
        "detail": {
            "type": "object",
            "description": "Plain values only (a failure's OAuth error code, the names of the fields an "
            "edit changed); never a secret.",
        },
        "created_at": TIME,
    }
    return obj(fields, required=list(fields))


def _event_list() -> dict[str, Any]:
    return obj(
        {
            "events": {"type": "array", "items": ref("Event")},
            "meta": obj(
                {
                    "has_more": boolean("Older events follow."),
                    "after_cursor": string("Pass as `page[after]` for older events.", nullable=True),
                },
                required=["has_more", "after_cursor"],
            ),
        },
        required=["events", "meta"],
    )


def _listing() -> dict[str, Any]:
    summary = ref("OAuthConnectionSummary")
    cursor = string("Opaque; pass as `page[after]` / `page[before]`.", nullable=True)
    return obj(
        {
            "api_key": {"type": "array", "items": ref("ApiKeyConnection")},
            "basic_auth": {"type": "array", "items": ref("BasicAuthConnection")},
            "bearer_token": {"type": "array", "items": ref("BearerTokenConnection")},
            "oauth": {"type": "array", "items": summary},
            "meta": obj(
                {
                    "has_more": boolean("More connections lie in the direction paged."),
                    "after_cursor": cursor,
                    "before_cursor": cursor,
                },
                required=["has_more", "after_cursor", "before_cursor"],
            ),
        },
        required=["api_key", "basic_auth", "bearer_token", "oauth", "meta"],
    )


def schemas() -> dict[str, Any]:
    envelope = obj(
        {
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": obj(
                    {
                        "code": string("See the codes in the API's description.", pattern=r"^1[23]\d\d$"),
                        "detail": string(
                            "For 400, 401, 403, 404 and 429 it starts with the fixed text "
                            '("Invalid request", "Unauthorized", "Forbidden", "Not found", '
                            '"Too many requests"); an explanation may follow.'
                        ),
                        "status": string("The HTTP status, as a string.", pattern=r"^\d{3}$"),
                    },
                    required=["code", "detail", "status"],
                    closed=True,
                ),
            }
        },
        required=["errors"],
        closed=True,
        description="Every error under the prefix.",
    )
    schemas: dict[str, Any] = {
        "ErrorEnvelope": envelope,
        **{f"Error{status}": error_schema(status) for status in ERROR_CODES},
        "StartRequest": start_request(),
        "StartAnswer": obj(
            {"redirect_url": string("Open it in the admin's browser.")}, required=["redirect_url"]
        ),
        "TokenRequest": token_request(),
        "TokenAnswer": {
            "type": "object",
            "required": ["access_token"],
            "properties": {"access_token": string(), "token_type": string(), "scope": string()},
            "description": "The host token endpoint's answer, as it gave it.",
        },
        "Connection": _connection(),
        "AccessCodesAnswer": _access_codes_answer(),
        "DeletedConnection": obj(
            {
                "deleted": {"const": True},
                "uuid": string(),
                "revoked": boolean(
                    "Whether revoking at the provider worked; null when the client has no "
                    "`revocation_url` (nothing was tried).",
                    nullable=True,
                ),
            },
            required=["deleted", "uuid", "revoked"],
        ),
        "OAuthClient": _client(),
        "OAuthClientCreate": client_create(),
        "OAuthClientUpdate": client_update(),
        "OAuthClientList": obj(
            {"clients": {"type": "array", "items": ref("OAuthClient")}}, required=["clients"]
        ),
        "DeletedClient": obj({"deleted": {"const": True}, "uuid": string()}, required=["deleted", "uuid"]),
        "ProviderPreset": _preset(),
        "ProviderCatalog": obj(
            {"providers": {"type": "array", "items": ref("ProviderPreset")}}, required=["providers"]
        ),
        "Health": obj(
            {
                "ok": {"type": "boolean"},
                "storage": string('"ok", or what is wrong.'),
                "encryption": string('"ok", or what is wrong.'),
            },
            required=["ok", "storage", "encryption"],
        ),
        "ConnectionList": _listing(),
        "Event": _event(),
        "EventList": _event_list(),
        "OAuthConnectionSummary": _oauth_summary(),
        "DeletedCredential": obj(
            {"deleted": {"const": True}, "type": enum(list(CREDENTIAL_TITLES), ""), "name": string()},
            required=["deleted", "type", "name"],
        ),
    }
    for kind, title in CREDENTIAL_TITLES.items():
        schemas[f"{title}Create"] = credential_create(kind)
        schemas[f"{title}Update"] = credential_update(kind)
        schemas[title] = _credential_answer(kind)
        schemas[f"{title}Answer"] = obj({kind: ref(title)}, required=[kind])
    return schemas


CREDENTIAL_TITLES: Final[Mapping[str, str]] = {
    "bearer_token": "BearerTokenConnection",
    "basic_auth": "BasicAuthConnection",
    "api_key": "ApiKeyConnection",
}
