"""The pieces every part of the document is built from: schema shorthands, the error
envelope of each status, the shared parameters and the operation object.

Written once here so that every operation documents its errors the same way (each
status with its envelope schema and the service's example) and every pattern is the
validation module's own regex, anchored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from ... import errors as e
from ... import validation as v

JSON: Final = "application/json"


# -- small schema helpers -------------------------------------------------------------------
def anchored(pattern: re.Pattern[str] | str) -> str:
    """A ``fullmatch`` regex as a JSON Schema pattern (which matches anywhere unless anchored)."""
    text = pattern if isinstance(pattern, str) else pattern.pattern
    return f"^{text}$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def string(description: str = "", *, nullable: bool = False, **limits: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"] if nullable else "string", **limits}
    if description:
        schema["description"] = description
    return schema


def boolean(description: str, *, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["boolean", "null"] if nullable else "boolean", "description": description}


def enum(values: Sequence[str], description: str, *, nullable: bool = False) -> dict[str, Any]:
    return {
        "type": ["string", "null"] if nullable else "string",
        "enum": [*values, None] if nullable else list(values),
        "description": description,
    }


def obj(
    properties: Mapping[str, Any],
    *,
    required: Iterable[str] = (),
    description: str = "",
    closed: bool = False,
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    needed = list(required)
    if needed:
        schema["required"] = needed
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


TIME = string("`YYYY-MM-DDThh:mm:ssZ`, UTC.", pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NULLABLE_TIME = {**TIME, "type": ["string", "null"]}


# -- the error envelope ---------------------------------------------------------------------
#: Every status an operation may answer with the envelope, and the codes it carries.
ERROR_CODES: Final[Mapping[int, tuple[str, ...]]] = {
    400: (e.CODE_INVALID_REQUEST,),
    401: (e.CODE_UNAUTHORIZED,),
    403: (e.CODE_UNAUTHORIZED,),
    404: (e.CODE_NOT_FOUND,),
    409: (e.CODE_CONFLICT,),
    413: (e.CODE_INVALID_REQUEST,),
    415: (e.CODE_INVALID_REQUEST,),
    422: (e.CODE_INVALID_VALUE,),
    429: (e.CODE_TOO_MANY_REQUESTS,),
    500: (e.CODE_INTERNAL,),
    502: (e.CODE_PROVIDER_ERROR,),
    503: (e.CODE_STORAGE_UNAVAILABLE, e.CODE_NOT_CONFIGURED),
}
_ERROR_TEXT: Final[Mapping[int, str]] = {
    400: "Invalid request: the request is malformed (a missing query parameter, a body that is not "
    "JSON or not a JSON object, an expired or used flow token, state or verification code).",
    401: "Unauthorized: no bearer token, or an unknown or revoked one.",
    403: "Forbidden: the token belongs to another integration, or a browser-session write came from "
    "an untrusted origin.",
    404: "Not found: no such integration resource (connection, OAuth client), or no such path.",
    409: "Conflict: the name is taken (by a connection of any type, or another client), or the "
    "resource changed since it was read (`If-Match`).",
    413: "The request body is larger than `ZIS_MAX_BODY_BYTES`.",
    415: "The body is not `application/json`.",
    422: "Invalid value: `detail` is `Invalid value for: <field>. Desc: <what>`; also a connection "
    "that needs re-authorization.",
    429: "Too many requests: a rate limit is spent; `Retry-After` says when to try again.",
    500: "Internal error (logged by type and place; never a trace, token or secret).",
    502: "The provider (or the host's token endpoint) failed, timed out or answered nonsense; "
    "nothing stored changed. `Retry-After` is sent while a connection backs off after failed "
    "refreshes.",
    503: "Storage is unavailable (code 1306), or the endpoint is not configured on this host "
    "(code 1308: the token proxy without `ZIS_HOST_TOKEN_URL`).",
}
#: The examples of 400, 401, 403, 404, 422 and 429 are the service's API reference's own.
_ERROR_EXAMPLE_DETAIL: Final[Mapping[int, str]] = {
    400: "Invalid request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict: a connection named 'main' already exists in integration 'acme'.",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid value for: Integration. Desc: Integration cannot be nil",
    429: "Too many requests",
    500: "Internal server error. The error was logged; try again.",
    502: "The provider's token endpoint failed (HTTP 500).",
    503: "The database is unavailable. Try again shortly.",
}
_RETRY_AFTER: Final = {
    "description": "When the request may succeed: seconds (or an HTTP date).",
    "schema": {"type": "string"},
}


def error_schema(status: int) -> dict[str, Any]:
    """The envelope, narrowed to one status and its codes."""
    codes = ERROR_CODES[status]
    return {
        "allOf": [
            ref("ErrorEnvelope"),
            {
                "type": "object",
                "properties": {
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "code": {"enum": list(codes)},
                                "status": {"const": str(status)},
                            },
                        },
                    }
                },
            },
        ]
    }


def error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TEXT[status],
        "content": {
            JSON: {
                "schema": ref(f"Error{status}"),
                "example": {
                    "errors": [
                        {
                            "code": ERROR_CODES[status][0],
                            "detail": _ERROR_EXAMPLE_DETAIL[status],
                            "status": str(status),
                        }
                    ]
                },
            }
        },
    }
    if status == 429:
        response["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": True}}
    elif status in (502, 503):
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response


# -- parameters -----------------------------------------------------------------------------
def path_param(name: str, description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def query_param(
    name: str, description: str, schema: Mapping[str, Any], *, required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


INTEGRATION = path_param(
    "integration",
    "Name of the integration.",
    string(pattern=anchored(v.INTEGRATION_RE), examples=["my_integration"]),
)
CONNECTION_LOOKUP = [
    query_param(
        "name",
        'Name of connection. Specify either "uuid" or "name" (both only when they name the same one).',
        string(pattern=anchored(v.CONNECTION_NAME_RE), examples=["my_oauth_connection"]),
    ),
    query_param(
        "uuid",
        'UUID of connection. Specify either "uuid" or "name".',
        string(pattern=anchored(v.UUID_RE), examples=["9c865cd6-858e-42c6-b14d-2cc43f3b4ac4"]),
    ),
]


# -- operations -----------------------------------------------------------------------------
COMMON_ERRORS: Final = (429, 500, 503)
AUTH_ERRORS: Final = (401, 403, 404, 422, *COMMON_ERRORS)
BODY_ERRORS: Final = (400, 413, 415, 422)


def json_answer(description: str, schema: str, example: Any = None, **extra: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": ref(schema)}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {JSON: content}, **extra}


def redirect_answer(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
    }


def operation(
    operation_id: str,
    summary: str,
    description: str,
    *,
    tag: str,
    answers: Mapping[int, Mapping[str, Any]],
    errors: Iterable[int],
    parameters: Sequence[Mapping[str, Any]] = (),
    body: str | None = None,
    body_example: Any = None,
    public: bool = False,
    endpoint: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
    }
    if endpoint is not None:
        op["x-endpoint"] = endpoint
    if public:
        op["security"] = []
    if parameters:
        op["parameters"] = [dict(p) for p in parameters]
    if body is not None:
        content: dict[str, Any] = {"schema": ref(body)}
        if body_example is not None:
            content["example"] = body_example
        op["requestBody"] = {"required": True, "content": {JSON: content}}
    responses: dict[str, Any] = {str(status): dict(answer) for status, answer in answers.items()}
    for status in sorted(set(errors)):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/Error{status}"})
    op["responses"] = dict(sorted(responses.items()))
    return op


# Examples of the service's API reference.
