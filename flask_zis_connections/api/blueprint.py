"""The API's blueprint and what every request under it goes through.

One module-level blueprint, registered by each host app (several apps may register
it): the views find their app's extension through :func:`~.._state.state`, never
through a closure over one extension object.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Request, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from .._state import AppState, state
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


def limit_request(req: Request, st: AppState) -> None:
    """The body limit of every request, then the rate limits of the endpoints that take
    no credentials: per client address, and for the token proxy - which cannot tell
    its callers apart - also globally.  Run first by the blueprint's one
    ``before_request`` hook (:func:`.openapi.before_request`)."""
    req.max_content_length = st.settings.max_body_bytes
    endpoint = req.endpoint
    if endpoint not in _UNAUTHENTICATED_ENDPOINTS or st.limits is None:
        return
    st.limits.hit_address(req.remote_addr)
    if endpoint == "zis.token_proxy":
        st.limits.hit_token_proxy()


#: Every answer - error pages included - may carry a token, or sit at a URL that holds a
#: code or state: never cache it, never leak the URL as a Referer, and never frame it
#: (nothing here is meant to be framed: RFC 6749 §10.13, RFC 9700 §4.16).
_PRIVATE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
)


_PRIVATE_NAMES: frozenset[str] = frozenset(name.lower() for name, _ in _PRIVATE_HEADERS)


@bp.after_request
def _private(resp: WerkzeugResponse) -> WerkzeugResponse:
    """Give every answer :data:`_PRIVATE_HEADERS`, replacing any a view set.

    Usually none of them is there yet, and the constant pairs are appended to
    werkzeug's header list in one step: setting each one scans the list for the name
    and checks the value again, a few microseconds on every answer.
    """
    headers = resp.headers
    pairs: list[tuple[str, str]] | None = getattr(headers, "_list", None)
    if pairs is not None and not any(name.lower() in _PRIVATE_NAMES for name, _ in pairs):
        pairs.extend(_PRIVATE_HEADERS)
        return resp
    for name, value in _PRIVATE_HEADERS:
        headers[name] = value
    return resp
