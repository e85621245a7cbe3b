"""The OAuth flow over HTTP: start, start_redirect, the provider's callback, access codes."""

from __future__ import annotations

from flask import Response, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from .._state import state
from .blueprint import bp
from .helpers import auth, connection_response, external, json_body, own_origins


@bp.post("/connections/oauth/start/<integration>")
def start(integration: str) -> Response:
    caller = auth(integration)
    body = json_body()
    result = state().flows.start(
        integration,
        body,
        created_by=caller.identity,
        own_origins=own_origins(),
        callback_url=external("zis.callback"),
        access_codes_url=external("zis.access_codes", integration=integration),
        start_redirect_url=external("zis.start_redirect"),
        admin_id=caller.identity if caller.via_session else None,
    )
    return jsonify(result)


@bp.get("/connections/oauth/start_redirect")
def start_redirect() -> WerkzeugResponse:
    st = state()
    out = st.flows.start_redirect(request.args.get("flow_token"), st.ext.admin_loader)
    resp = redirect(out.location, code=out.status)
    if out.cookie is not None:
        name, value, max_age = out.cookie
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="Lax",
            # Behind a TLS-terminating proxy the request itself looks like http; a
            # public https URL says the browser is on https all the same.
            secure=request.is_secure or st.settings.public_https,
            path=url_for("zis.callback"),
        )
    return resp


@bp.get("/connections/oauth/callback")
@bp.get("/connections/oauth/callback/<client_uuid>")
def callback(client_uuid: str | None = None) -> WerkzeugResponse:
    raw_query = request.query_string.decode("utf-8", "replace")
    out = state().flows.callback(request.args, request.cookies, raw_query, path_client_uuid=client_uuid)
    resp = redirect(out.location, code=out.status)
    if out.clear_cookie:
        resp.delete_cookie(out.clear_cookie, path=url_for("zis.callback"))
    return resp


@bp.get("/connections/oauth/access_codes/<integration>")
def access_codes(integration: str) -> Response:
    auth(integration)
    st = state()
    rec, code = st.flows.exchange_code(integration, request.args.get("verification_code"))
    return connection_response(
        rec,
        origin_oauth_redirect_url=code.origin_oauth_redirect_url,
        raw_callback_params=st.encryptor.decrypt_optional(code.raw_callback_params_enc),
    )
