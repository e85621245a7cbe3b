"""The console's side of ``zis-connect.js``: a start endpoint and the popup's landing page.

A host page never holds an API token: ``ZISConnect.open`` asks
``GET {prefix}/connect/<integration>/csrf`` for this session's CSRF token (a cross-site
page cannot read the answer), ``POST {prefix}/connect/start`` starts the flow as the
admin's session and answers the ``start_redirect`` URL, and the popup finally lands on
``GET {prefix}/connect/done/<integration>``, whose script hands the verification code
(or the provider's error) to the page that opened it with ``postMessage``, aimed at this
app's own origin only.  The same start endpoint takes a plain form too (answering
``303`` to the provider), and ``return_to`` sends the browser back to a page of the
host's instead: the fallback when popups are blocked or scripts are off.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

from flask import jsonify, request
from werkzeug.wrappers import Response as WerkzeugResponse

from ..api.helpers import external, own_origins
from ..errors import InvalidRequest, InvalidValue
from .blueprint import bp
from .connections import start_flow
from .security import admit, admit_write, csrf_token
from .status import see_other
from .views import page

#: What ``POST /connect/start`` reads (JSON or form), and the flow field each becomes.
START_FIELDS = {"client": "oauth_client_name", "name": "name", "scopes": "permission_scopes"}


@bp.get("/connect/<integration>/csrf")
def connect_csrf(integration: str) -> WerkzeugResponse:
    admit(integration)
    return jsonify({"csrf_token": csrf_token()})


@bp.post("/connect/start")
def connect_start() -> WerkzeugResponse:
    sent: object = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(sent, dict):
        raise InvalidRequest("Send a JSON object or a form.")
    data: dict[str, Any] = sent
    integration = data.get("integration")
    if not isinstance(integration, str):
        raise InvalidValue("integration", "is required")
    admin = admit_write(integration)
    body: dict[str, Any] = {"allow_offline_access": True}
    for field, target in START_FIELDS.items():
        value = data.get(field)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise InvalidValue(field, "must be a string")
            body[target] = value
    return_to = data.get("return_to")
    if return_to:
        if not isinstance(return_to, str):
            raise InvalidValue("return_to", "must be a URL or path of this site")
        # A path is taken on the host's own origin; the flow checks any URL's origin.
        origin_url = urljoin(own_origins()[0], return_to)
    else:
        origin_url = external(".connect_done", integration=integration)
    target = start_flow(integration, admin, body, origin_url)
    if request.is_json:
        return jsonify({"redirect_url": target})
    return see_other(target)


@bp.get("/connect/done/<integration>")
def connect_done(integration: str) -> str:
    admit(integration)
    code = request.args.get("verification_code")
    error = None if code else (request.args.get("error") or "missing_verification_code")[:128]
    return page("connect_done.html", integration=integration, code=code, error=error)
