"""The console's blueprint and what every answer under it carries.

One module-level blueprint, registered by each host app that wants the console; the
views find their app's extension through :func:`~.._state.state`.  Every answer, error
pages and static files included, is private (``no-store``, no ``Referer``) and refuses to
be framed; the pages run no inline script (``default-src 'self'``).
"""

from __future__ import annotations

import logging

from flask import Blueprint, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from ..errors import ZISError

log = logging.getLogger("flask_zis_connections")

bp = Blueprint(
    "zis_admin",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@bp.after_request
def _secure(resp: WerkzeugResponse) -> WerkzeugResponse:
    resp.headers.update(SECURITY_HEADERS)
    return resp


@bp.errorhandler(ZISError)
def _zis_error(exc: ZISError) -> tuple[str, int]:
    """The extension's own errors: their message says what to do next and holds no secret."""
    status = exc.status if 400 <= exc.status < 600 else 500
    return render_template("zis_admin/error.html", status=status, message=exc.message), status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    return render_template("zis_admin/error.html", status=status, message=exc.description), status


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[str, int]:
    """Anything else: logged for the operator, a plain page for the browser."""
    log.exception("The admin console failed: %s", type(exc).__name__)
    message = "Something went wrong. The server log has the details."
    return render_template("zis_admin/error.html", status=500, message=message), 500
