"""The operations on stored things: connections of every type, OAuth clients, the
preset catalog, health and this document."""

from __future__ import annotations

from typing import Any

from ...credentials import MASK
from .answers import CREDENTIAL_TITLES
from .bodies import SECRET_FIELDS
from .builders import (
    AUTH_ERRORS,
    BODY_ERRORS,
    COMMON_ERRORS,
    CONNECTION_LOOKUP,
    INTEGRATION,
    JSON,
    json_answer,
    operation,
    path_param,
    query_param,
    ref,
    string,
)
from .examples import CONNECTION_EXAMPLE, CREDENTIAL_EXAMPLES


def resource_paths() -> dict[str, dict[str, Any]]:
    connection_ok = json_answer("The connection.", "Connection", CONNECTION_EXAMPLE)
    client_ok = json_answer(
        "The client; `ETag` is its version.",
        "OAuthClient",
        headers={"ETag": {"required": True, "schema": {"type": "string", "pattern": r'^"\d+"$'}}},
    )
    client_uuid = path_param("uuid", "The OAuth client's uuid.", string())
    paths: dict[str, dict[str, Any]] = {
        "/connections/refresh/{integration}": {
            "get": operation(
                "refresh",
                "Refresh OAuth token",
                "Refreshes now (the refresh token, or a new client-credentials token) and returns "
                "the connection. Changes state: a browser-session caller must pass the origin check.",
                tag="Connections",
                parameters=[*CONNECTION_LOOKUP, INTEGRATION],
                answers={200: connection_ok},
                errors=(400, *AUTH_ERRORS, 502),
            )
        },
        "/connections/{integration}": {
            "get": operation(
                "show",
                "Show OAuth connection",
                "The connection, refreshed first when it is due.",
                tag="Connections",
                parameters=[*CONNECTION_LOOKUP, INTEGRATION],
                answers={200: connection_ok},
                errors=(400, *AUTH_ERRORS, 502),
            ),
            "delete": operation(
                "delete",
                "Delete OAuth connection",
                "Deletes the connection, revoking its token at the provider when the client has a "
                "`revocation_url`.",
                tag="Connections",
                parameters=[*CONNECTION_LOOKUP, INTEGRATION],
                answers={200: json_answer("What was deleted.", "DeletedConnection")},
                errors=(400, *AUTH_ERRORS, 502),
            ),
        },
        "/connections/oauth/clients/{integration}": {
            "get": operation(
                "list_clients",
                "List OAuth clients",
                "The integration's OAuth clients (never a secret).",
                tag="OAuth clients",
                parameters=[INTEGRATION],
                answers={200: json_answer("The clients.", "OAuthClientList")},
                errors=AUTH_ERRORS,
            ),
            "post": operation(
                "create_client",
                "Create OAuth client",
                "Registers a client (`provider` fills in a preset's URLs and quirks).",
                tag="OAuth clients",
                parameters=[INTEGRATION],
                body="OAuthClientCreate",
                body_example={
                    "name": "acme",
                    "client_id": "my_client_id",
                    "client_secret": "my_client_secret",
                    "auth_url": "https://{{subdomain}}.acme.test/oauth/authorize",
                    "token_url": "https://{{subdomain}}.acme.test/oauth/token",
                    "default_scopes": "read write",
                },
                answers={201: {**client_ok, "description": "The new client; `ETag` is its version."}},
                errors=(*AUTH_ERRORS, *BODY_ERRORS, 409),
            ),
        },
        "/connections/oauth/clients/{integration}/{uuid}": {
            "patch": operation(
                "update_client",
                "Update OAuth client",
                "Changes the given fields. With `If-Match` the update applies only to that version "
                "(409 otherwise); two concurrent edits never silently undo each other. Moving "
                "`token_url`, `revocation_url` or `token_endpoint_auth_method` needs `client_secret`.",
                tag="OAuth clients",
                parameters=[
                    INTEGRATION,
                    client_uuid,
                    {
                        "name": "If-Match",
                        "in": "header",
                        "required": False,
                        "description": 'The version read, as answered in `ETag` (e.g. `"3"`).',
                        "schema": {"type": "string"},
                    },
                ],
                body="OAuthClientUpdate",
                body_example={"default_scopes": "read write admin"},
                answers={200: client_ok},
                errors=(*AUTH_ERRORS, *BODY_ERRORS, 409),
            ),
            "delete": operation(
                "delete_client",
                "Delete OAuth client",
                "Deletes the client and every connection made with it.",
                tag="OAuth clients",
                parameters=[INTEGRATION, client_uuid],
                answers={200: json_answer("What was deleted.", "DeletedClient")},
                errors=AUTH_ERRORS,
            ),
        },
        "/connections/oauth/providers": {
            "get": operation(
                "providers",
                "List provider presets",
                "The preset catalog: public knowledge from each provider's docs (no credentials; "
                "rate limited per address).",
                tag="OAuth clients",
                public=True,
                answers={200: json_answer("The catalog.", "ProviderCatalog")},
                errors=COMMON_ERRORS,
            )
        },
        "/integrations/{integration}/connections/all": {
            "get": operation(
                "list_connections",
                "List connections",
                "Every connection of the integration, grouped by type, cursor-paginated in creation "
                "order; never a secret or token value.",
                tag="Connections",
                parameters=[
                    INTEGRATION,
                    query_param(
                        "page[size]",
                        "Connections per page (all types together).",
                        {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
                    ),
                    query_param(
                        "page[after]", "`meta.after_cursor` of the page before.", string(maxLength=64)
                    ),
                    query_param(
                        "page[before]",
                        "`meta.before_cursor` of the page after (not with `page[after]`).",
                        string(maxLength=64),
                    ),
                ],
                answers={200: json_answer("One page.", "ConnectionList")},
                errors=(400, *AUTH_ERRORS),
            )
        },
        "/integrations/{integration}/events": {
            "get": operation(
                "list_events",
                "List events",
                "What happened to the integration's connections, OAuth clients and API tokens, who did "
                "it and when, newest first; never a token or secret.",
                tag="Connections",
                parameters=[
                    INTEGRATION,
                    query_param(
                        "page[size]",
                        "Events per page.",
                        {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                    ),
                    query_param(
                        "page[after]",
                        "`meta.after_cursor` of the page before (older events).",
                        string(maxLength=64),
                    ),
                ],
                answers={200: json_answer("One page, newest first.", "EventList")},
                errors=(400, *AUTH_ERRORS),
            )
        },
        "/health": {
            "get": operation(
                "health",
                "Health",
                "Whether storage and the encryption keys are usable (no credentials).",
                tag="Operations",
                public=True,
                answers={
                    200: json_answer("Usable.", "Health"),
                    503: {
                        "description": "Not usable: the report says what is wrong (or the envelope, "
                        "when the rate limit storage is down).",
                        "content": {JSON: {"schema": {"oneOf": [ref("Health"), ref("Error503")]}}},
                    },
                },
                errors=(429, 500),
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                "The OAS 3.1 document of the API (no credentials).",
                tag="Operations",
                public=True,
                answers={
                    200: {
                        "description": "The document.",
                        "content": {JSON: {"schema": {"type": "object", "required": ["openapi", "paths"]}}},
                    }
                },
                errors=COMMON_ERRORS,
            )
        },
    }
    for kind, title in CREDENTIAL_TITLES.items():
        paths.update(credential_paths(kind, title))
    return paths


def credential_paths(kind: str, title: str) -> dict[str, dict[str, Any]]:
    """One path per type (each has its own body), served by one view per method."""
    label = kind.replace("_", " ")
    example = CREDENTIAL_EXAMPLES[kind]
    masked = {key: (MASK if key in SECRET_FIELDS else value) for key, value in example.items()} | {
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
    }
    answer = json_answer(f"The {label} connection.", f"{title}Answer", {kind: masked})
    # Any name is looked up: one the naming rules refuse simply does not exist (404).
    name = path_param("name", "Name of the connection.", string(examples=[example["name"]]))
    return {
        f"/integrations/{{integration}}/connections/{kind}": {
            "post": operation(
                f"create_{kind}",
                f"Create {label} connection",
                f"Stores a {label} connection; the secret is encrypted at rest and never answered "
                "again. The name must be free across every type of the integration (409).",
                tag="Connections",
                endpoint="create_credential",
                parameters=[INTEGRATION],
                body=f"{title}Create",
                body_example=example,
                answers={201: {**answer, "description": f"The new {label} connection."}},
                errors=(*AUTH_ERRORS, *BODY_ERRORS, 409),
            )
        },
        f"/integrations/{{integration}}/connections/{kind}/{{name}}": {
            "get": operation(
                f"show_{kind}",
                f"Show {label} connection",
                "The connection, its secret masked.",
                tag="Connections",
                endpoint="show_credential",
                parameters=[INTEGRATION, name],
                answers={200: answer},
                errors=AUTH_ERRORS,
            ),
            "patch": operation(
                f"update_{kind}",
                f"Update {label} connection",
                "Changes `allowed_domain` and the type's fields (at least one); the name stays.",
                tag="Connections",
                endpoint="update_credential",
                parameters=[INTEGRATION, name],
                body=f"{title}Update",
                body_example={"allowed_domain": "api2.example.com"},
                answers={200: answer},
                errors=(*AUTH_ERRORS, *BODY_ERRORS, 409),
            ),
            "delete": operation(
                f"delete_{kind}",
                f"Delete {label} connection",
                "Forgets the connection (nothing is revoked: the credential is the admin's).",
                tag="Connections",
                endpoint="delete_credential",
                parameters=[INTEGRATION, name],
                answers={
                    200: json_answer(
                        "What was deleted.",
                        "DeletedCredential",
                        {"deleted": True, "type": kind, "name": example["name"]},
                    )
                },
                errors=AUTH_ERRORS,
            ),
        },
    }
