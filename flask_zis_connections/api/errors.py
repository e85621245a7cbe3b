"""Every error under the API's prefix leaves as the service's error envelope.

``{"errors": [{"code", "detail", "status"}]}`` - for the extension's own errors, for
werkzeug's (unknown path, wrong method, body too large, bad JSON) and for anything
unexpected, which is logged by type and place only: third-party messages may echo
request data, and a stack trace never reaches the caller.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import http_date

from .. import errors as e

log = logging.getLogger("flask_zis_connections")

_STATUS_CODES = {
    400: e.CODE_INVALID_REQUEST,
    401: e.CODE_UNAUTHORIZED,
    403: e.CODE_UNAUTHORIZED,
    404: e.CODE_NOT_FOUND,
    405: e.CODE_INVALID_REQUEST,
    409: e.CODE_CONFLICT,
    413: e.CODE_INVALID_REQUEST,
    415: e.CODE_INVALID_REQUEST,
    422: e.CODE_INVALID_VALUE,
    429: e.CODE_TOO_MANY_REQUESTS,
    502: e.CODE_PROVIDER_ERROR,
    503: e.CODE_STORAGE_UNAVAILABLE,
}
_DEFAULT_DETAIL = {
    400: "Invalid request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
    429: "Too many requests",
    500: "Internal server error",
}


def envelope(status: int, detail: str, code: str | None = None) -> Response:
    resp = jsonify(
        {
            "errors": [
                {
                    "code": code or _STATUS_CODES.get(status, e.CODE_INTERNAL),
                    "detail": detail,
                    "status": str(status),
                }
            ]
        }
    )
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


#: The service's API reference gives these statuses a fixed ``detail``; clients may
#: match on it, so every such detail starts with it and any explanation follows.
_FIXED_DETAIL = {
    400: "Invalid request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    429: "Too many requests",
}


def _detail(status: int, message: str) -> str:
    fixed = _FIXED_DETAIL.get(status)
    if fixed is None or message.startswith(fixed):
        return message
    return f"{fixed}: {message}"


def handle_error(exc: Exception) -> Response:
    if isinstance(exc, e.ZISError):
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        return _retry_after(envelope(exc.status, _detail(exc.status, exc.message), exc.code), exc)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        detail = _DEFAULT_DETAIL.get(status, exc.name)
        resp = envelope(status, detail)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            resp.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return _retry_after(resp, exc)
    # Log the type and where, not str(exc): third-party messages may echo request data.
    log.error(
        "Unhandled %s in %s %s",
        type(exc).__name__,
        request.method,
        request.path,
        exc_info=exc if current_app.debug else None,
    )
    return envelope(500, "Internal server error. The error was logged; try again.")


def _retry_after(resp: Response, exc: Exception) -> Response:
    """Send ``Retry-After`` when the error knows how long to wait.

    Any error may carry ``retry_after`` (a spent rate limit, a connection backing off
    after failed refreshes; werkzeug's 429 and 503 take one too): seconds, or a
    ``datetime`` as werkzeug allows.  Clients that honour it back off instead of
    retrying at once.
    """
    wait = getattr(exc, "retry_after", None)
    if isinstance(wait, datetime):
        resp.headers["Retry-After"] = http_date(wait)
    elif isinstance(wait, int | float) and not isinstance(wait, bool):
        resp.headers["Retry-After"] = str(max(0, math.ceil(wait)))
    return resp
