"""The API's blueprint and what every request under it goes through.

One module-level blueprint, registered by each host app (several apps may register
it): the views find their app's extension through :func:`~.._state.state`, never
through a closure over one extension object.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from .._state import state
from .errors import handle_error

URL_PREFIX = "/api/services/zis"
#: Endpoints that take no credentials: limited per client address before they run.
_UNAUTHENTICATED_ENDPOINTS = frozenset(
    {"zis.start_redirect", "zis.callback", "zis.token_proxy", "zis.health", "zis.providers", "zis.openapi"}
)

bp = Blueprint("zis", __name__, url_prefix=URL_PREFIX)
bp.register_error_handler(Exception, handle_error)


@bp.record
def _remember_prefix(setup: Any) -> None:
    state(setup.app).url_prefixes.add((setup.url_prefix or "").rstrip("/"))


@bp.before_app_request
def _routing_errors_under_prefix() -> Response | None:
    """Unknown paths and wrong methods under our prefix never reach a blueprint
    handler (routing failed before the blueprint is known), so answer them here."""
    exc = request.routing_exception
    if exc is None or not isinstance(exc, HTTPException):
        return None
    path = request.path
    if any(p and (path == p or path.startswith(p + "/")) for p in state().url_prefixes):
        return handle_error(exc)
    return None


@bp.before_request
def _limit_body() -> None:
    request.max_content_length = state().settings.max_body_bytes


@bp.before_request
def _limit_unauthenticated() -> None:
    """The endpoints that take no credentials are limited per client address, and
    the token proxy - which cannot tell its callers apart - also globally."""
    if request.endpoint not in _UNAUTHENTICATED_ENDPOINTS:
        return
    limits = state().limits
    if limits is None:
        return
    limits.hit_address()
    if request.endpoint == "zis.token_proxy":
        limits.hit_token_proxy()


@bp.after_request
def _private(resp: WerkzeugResponse) -> WerkzeugResponse:
    """Every answer - error pages included - may carry a token, or sit at a URL that
    holds a code or state: never cache it, never leak the URL as a Referer."""
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    # Nothing here is meant to be framed (RFC 6749 §10.13, RFC 9700 §4.16).
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return resp
