"""The HTTP API's OpenAPI 3.1 document served, and the request validation built from it.

``GET {prefix}/openapi.json`` serves :func:`~.openapi_doc.document` (built in
:mod:`.openapi_doc`): every operation with its parameters, request body, answers and
the error envelope of each status it can answer.  The same document is what requests
are checked against: :func:`_validate`, one ``before_request`` hook of the blueprint,
finds the operation of the matched endpoint (``operationId``) and checks its path and
query parameters and its JSON body against the operation's schemas before the view
runs.  So the document cannot drift from the behaviour: a field the document does not
list is refused, a limit it states is the limit enforced.  The views keep the checks a
schema cannot express (origins, URLs, secrets, which client a name refers to); the
schemas own the shape.

Why ``jsonschema``'s :class:`~jsonschema.Draft202012Validator`: OpenAPI 3.1's schema
objects *are* JSON Schema 2020-12 (its dialect only adds annotations such as
``example``; 3.0 had a variant of its own), so a 2020-12 validator reads the
document's schemas exactly as any client's tooling does,
``$ref``\\ s into ``components`` included (through ``referencing``).  ``jsonschema``
is the reference implementation of that draft, pure Python, maintained for over a
decade and already what the OpenAPI validators build on; generating the document
from Pydantic models instead would put a second model layer between the document
and the views and tie the request shapes to that library's rendering choices.

Failures leave as the existing envelopes: a body that is not JSON or not an object
400 (1301), a wrong media type 415, and anything else about a field - wrong type,
unknown, missing, too long, not matching its pattern - 422 (1303) with ``detail``
``"Invalid value for: <field>. Desc: <what>"``.  A missing required query parameter
is 400, as the service answers a request without its ``flow_token`` or
``verification_code``.  When a request fails validation on an operation that needs
credentials, the caller is authenticated first: a stranger gets 401/403 (charged to
the address limit), never a hint about the body.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from flask import Request, Response, jsonify, request
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.exceptions import RequestEntityTooLarge

from .. import errors as e
from .._state import state
from .blueprint import bp, limit_request
from .helpers import auth
from .openapi_doc import JSON, document

__all__ = ["check_request", "document", "operation_for", "operations"]

#: Where the document sits in the validators' registry; ``#/components/...`` references
#: resolve against it.
_DOCUMENT_URI: Final = "urn:flask-zis-connections:openapi"


@bp.get("/openapi.json")
def openapi() -> Response:
    """The document, its server being where this request found it (a host may register
    the blueprint under another prefix)."""
    served = dict(document())
    prefix = request.script_root + request.path.removesuffix("/openapi.json")
    served["servers"] = [{"url": prefix or "/", "description": "This API."}]
    return jsonify(served)


# -- validation built from the document -------------------------------------------------------
@dataclass(frozen=True)
class _Parameter:
    name: str
    location: str
    required: bool
    validator: Draft202012Validator
    integer: bool
    #: A plain-Python check that accepts only what ``validator`` accepts (None: the
    #: schema has more than a string's type, length and pattern); see :func:`_string_check`.
    accepts: Callable[[object], bool] | None = None


@dataclass(frozen=True)
class _BodyShape:
    """The top level of a body schema: what the failure messages name."""

    allowed: frozenset[str]
    required: frozenset[str]
    open: bool


@dataclass(frozen=True)
class _Operation:
    operation_id: str
    endpoint: str
    method: str
    path: str
    secured: bool
    parameters: tuple[_Parameter, ...]
    body: Draft202012Validator | None
    body_shape: _BodyShape | None
    path_names: frozenset[str]


def _validator(registry: Registry[Any], pointer: str) -> Draft202012Validator:
    """A 2020-12 validator of the schema at ``pointer`` in the document; its ``$ref``\\ s
    resolve against the whole document."""
    return Draft202012Validator({"$ref": f"{_DOCUMENT_URI}#{pointer}"}, registry=registry)


#: Keywords a parameter schema may have for :func:`_string_check` to stand in for the
#: validator: the assertions it re-implements, and annotations that assert nothing.
_STRING_CHECK_KEYWORDS: Final = frozenset(
    {"type", "pattern", "minLength", "maxLength", "description", "title", "examples", "example"}
)


def _string_check(schema: Mapping[str, Any]) -> Callable[[object], bool] | None:
    """For a ``{"type": "string", "pattern", "minLength", "maxLength"}`` schema, the same
    test in plain Python: ``jsonschema`` applies ``pattern`` with ``re.search`` and the
    lengths with ``len``, as here, but walks its keyword machinery and a ``$ref``
    lookup for every parameter of every request.  A value this accepts is valid; one it
    refuses still goes through the validator, which words the error.
    """
    if schema.get("type") != "string" or not set(schema) <= _STRING_CHECK_KEYWORDS:
        return None
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    shortest, longest = int(schema.get("minLength", 0)), schema.get("maxLength")

    def accepts(value: object) -> bool:
        return (
            isinstance(value, str)
            and len(value) >= shortest
            and (longest is None or len(value) <= longest)
            and (pattern is None or pattern.search(value) is not None)
        )

    return accepts


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@functools.cache
def operations() -> Mapping[tuple[str, str], tuple[_Operation, ...]]:
    """Every operation of the document by (endpoint, method): what the hook checks."""
    doc = document()
    registry: Registry[Any] = Registry().with_resource(
        _DOCUMENT_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    found: dict[tuple[str, str], list[_Operation]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            base = f"/paths/{_escape(path)}/{method}"
            params = []
            for index, param in enumerate(op.get("parameters", ())):
                if param["in"] not in ("path", "query"):
                    continue  # headers (If-Match) are the view's
                schema_type = param["schema"].get("type")
                params.append(
                    _Parameter(
                        name=param["name"],
                        location=param["in"],
                        required=bool(param.get("required")),
                        validator=_validator(registry, f"{base}/parameters/{index}/schema"),
                        integer=schema_type == "integer",
                        accepts=_string_check(param["schema"]),
                    )
                )
            body = shape = None
            if "requestBody" in op:
                pointer = f"{base}/requestBody/content/{_escape(JSON)}/schema"
                body = _validator(registry, pointer)
                schema = registry.resolver(_DOCUMENT_URI).lookup(f"#{pointer}").contents
                while "$ref" in schema:
                    schema = registry.resolver(_DOCUMENT_URI).lookup(schema["$ref"]).contents
                shape = _BodyShape(
                    allowed=frozenset(schema.get("properties", ())),
                    required=frozenset(schema.get("required", ())),
                    open=schema.get("additionalProperties", True) is not False,
                )
            operation = _Operation(
                operation_id=op["operationId"],
                endpoint=op.get("x-endpoint", op["operationId"]),
                method=method.upper(),
                path=path,
                secured=op.get("security", doc["security"]) != [],
                parameters=tuple(params),
                body=body,
                body_shape=shape,
                path_names=frozenset(p.name for p in params if p.location == "path"),
            )
            found.setdefault((operation.endpoint, operation.method), []).append(operation)
    return {key: tuple(ops) for key, ops in found.items()}


def operation_for(
    endpoint: str | None, method: str, view_args: Mapping[str, Any] | None
) -> _Operation | None:
    """The document's operation for a request routed to ``endpoint``.

    Keyed by the endpoint (blueprint-relative, so a host may rename the blueprint);
    where one view serves several documented paths (the per-client callback, one path
    per credential type) the path the request took decides.
    """
    if endpoint is None:
        return None
    candidates = operations().get((endpoint.rpartition(".")[2], "GET" if method == "HEAD" else method), ())
    if len(candidates) == 1:
        return candidates[0]
    args = {key: str(value) for key, value in (view_args or {}).items()}
    for op in candidates:
        if not op.path_names <= args.keys():
            continue
        expected = _PATH_PARAM.sub(lambda m: args[m.group(1)], op.path)
        if request.path.endswith(expected):
            return op
    return None


_PATH_PARAM: Final = re.compile(r"\{([^}]+)\}")


@bp.before_request
def before_request() -> None:
    """The blueprint's one hook before a view (Flask dispatches each hook on every
    request): its limits (:func:`.blueprint.limit_request`), then :func:`_validate`."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    limit_request(req, state())
    _validate(req)


def _validate(req: Request) -> None:
    """Check the request against its operation before the view runs.

    A request that fails is answered in the order a caller can act on: who may ask
    first (an operation that needs credentials authenticates the caller, so 401/403
    come before anything about the request's shape, and a stranger's attempts are
    charged to the address limit as any failed authentication is), then whether the
    endpoint is available on this host at all, then what is wrong with the request.
    """
    op = operation_for(req.endpoint, req.method, req.view_args)
    if op is None:
        return
    try:
        check_request(op, req)
    except (e.InvalidRequest, e.InvalidValue, RequestEntityTooLarge):
        if op.secured:
            auth(str((req.view_args or {}).get("integration", "")))
        available = _AVAILABLE.get(op.operation_id)
        if available is not None:
            available()
        raise


def _token_endpoint_configured() -> None:
    if not state().settings.host_token_url:
        raise e.NotConfigured("The token endpoint is not available: the host has not set ZIS_HOST_TOKEN_URL.")


#: Operations a host may leave unconfigured (503, code 1308, whatever the request).
_AVAILABLE: Final[Mapping[str, Callable[[], None]]] = {"token_proxy": _token_endpoint_configured}


def check_request(op: _Operation, req: Request) -> None:
    """Path and query parameters, then the body: the first failure raises."""
    view_args = req.view_args or {}
    args = req.args
    for param in op.parameters:
        if param.location == "path":
            value = view_args.get(param.name)
            if param.accepts is None or not param.accepts(value):
                _check_value(param.validator, param.name, value)
            continue
        # Looked up only when present: werkzeug's ``get`` of a missing key builds and
        # catches a ``BadRequestKeyError`` (about a microsecond, on every show).
        raw = args.get(param.name) if param.name in args else None
        if raw is None:
            if param.required:
                raise e.InvalidRequest(f"{param.name} is required.")
            continue
        if param.accepts is not None and param.accepts(raw):
            continue
        number: object = raw
        if param.integer and re.fullmatch(r"[+-]?\d{1,18}", raw):
            number = int(raw)
        _check_value(param.validator, param.name, number)
    if op.body is not None and op.body_shape is not None:
        _check_body(op.body, op.body_shape)


def _check_value(validator: Draft202012Validator, field: str, value: object) -> None:
    error = next(iter(validator.iter_errors(value)), None)
    if error is not None:
        raise e.InvalidValue(field, _describe(error, nested=False))


def _check_body(validator: Draft202012Validator, shape: _BodyShape) -> None:
    if request.mimetype != JSON:
        raise e.UnsupportedMediaType("Send the body as application/json.")
    body = request.get_json(silent=True)
    if body is None:
        raise e.InvalidRequest("The request body is not valid JSON.")
    if not isinstance(body, dict):
        raise e.InvalidRequest("The request body must be a JSON object.")
    failure = _first_failure(list(validator.iter_errors(body)), body, shape)
    if failure is not None:
        raise failure


def _first_failure(
    errors: Sequence[ValidationError], body: Mapping[str, Any], shape: _BodyShape
) -> e.InvalidValue | None:
    """The one failure reported when a body has several, so the answer is the same
    whatever order the validator found them in: an unknown field first (a typo explains
    the rest), then a missing one, then the first field by name."""
    if not errors:
        return None
    required = shape.required
    unknown = sorted(set(body) - shape.allowed)
    if unknown and not shape.open:
        return e.InvalidValue(
            unknown[0], "is not a known field; allowed: " + ", ".join(sorted(shape.allowed))
        )
    for error in errors:
        if not error.absolute_path and error.validator == "required":
            needed: Any = error.validator_value
            missing = sorted(name for name in needed if name not in body)
            return e.InvalidValue(missing[0], "is required")
    fielded = sorted(
        (error for error in errors if error.absolute_path),
        key=lambda err: (str(err.absolute_path[0]), len(err.absolute_path)),
    )
    if not fielded:
        return e.InvalidValue("body", _describe(errors[0], nested=False))
    error = fielded[0]
    field = str(error.absolute_path[0])
    if error.validator == "type" and error.instance is None and field in required:
        return e.InvalidValue(field, "is required")
    return e.InvalidValue(field, _describe(error, nested=True))


_TYPE_WORDS: Final[Mapping[str, str]] = {
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
    "object": "an object",
    "array": "a list",
}


def _describe(error: ValidationError, *, nested: bool) -> str:
    """What is wrong, in the words the views use; where, when below the field."""
    what = _what(error)
    if "propertyNames" in error.schema_path:
        what = f"key {json.dumps(error.instance)} {what}"
    path = list(error.absolute_path)[1:] if nested else []
    if path:
        where = " ".join(f"item {p}" if isinstance(p, int) else f"the value of {json.dumps(p)}" for p in path)
        return f"{where}: {what}"
    return what


def _what(error: ValidationError) -> str:
    keyword = error.validator
    value: Any = error.validator_value
    if keyword == "type":
        types = [value] if isinstance(value, str) else list(value)
        words = [_TYPE_WORDS.get(t, t) for t in types if t != "null"]
        return "must be " + " or ".join(words) + (" (or null)" if "null" in types else "")
    if keyword == "enum":
        return "must be one of " + ", ".join(json.dumps(item) for item in value if item is not None)
    if keyword == "const":
        return f"must be {json.dumps(value)}"
    if keyword == "maxLength":
        return f"must be at most {value} characters"
    if keyword == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if keyword == "pattern":
        return f"must match the pattern {value}"
    if keyword in ("minimum", "exclusiveMinimum"):
        return f"must be at least {value if keyword == 'minimum' else value + 1}"
    if keyword in ("maximum", "exclusiveMaximum"):
        return f"must be at most {value if keyword == 'maximum' else value - 1}"
    if keyword == "maxItems":
        return f"must have at most {value} items"
    if keyword == "maxProperties":
        return f"must have at most {value} entries"
    if keyword == "minProperties":
        return f"must have at least {value} entries"
    if keyword == "additionalProperties":
        return "has a key that is not allowed"
    return "is not valid"
