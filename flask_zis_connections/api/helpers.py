"""What the views share: who is calling, the request's body and query, URLs, answers."""

from __future__ import annotations

from typing import Any

from flask import Request, Response, jsonify, request, url_for

from .. import errors as e
from .. import events
from .. import validation as v
from .._state import AppState, state
from ..domain import ConnectionRecord
from .auth import Caller, authenticate, bearer_token
from .serializers import connection_json


def auth(
    integration: str,
    *,
    state_changing: bool | None = None,
    st: AppState | None = None,
    req: Request | None = None,
) -> Caller:
    """Authenticate the caller for ``integration``.

    A bearer token is checked first (a stranger learns nothing about names); the host's
    admin loader only ever sees a validated integration name.  ``state_changing`` marks
    a GET that changes state (the refresh endpoint) so a browser session must pass the
    same-origin check a write would.  Failures are charged to the client address (never
    to a header or path the caller picks), and a spent address is refused before the
    token lookup.  ``st`` and ``req``: the app's state and the request, when the view
    has them already (each is a context lookup otherwise).
    """
    if st is None:
        st = state()
    if req is None:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    limits = st.limits
    try:
        token = bearer_token(req)
        if limits is not None:
            limits.test_address(req.remote_addr, integration, token)
        caller = authenticate(
            req,
            token,
            integration,
            st.storage,
            st.ext.admin_loader,
            _trusted_origins,
            state_changing=state_changing,
            tokens=st.api_tokens,
        )
    except (e.Unauthorized, e.Forbidden):
        if limits is not None:
            limits.hit_address(req.remote_addr, refuse=False)
        raise
    if limits is not None:
        limits.hit_caller(integration, token=token, identity=caller.identity)
    events.act_for_request(caller.identity)  # the actor of whatever this request records
    return caller


def _trusted_origins() -> list[str]:
    """Where a browser session's state-changing request may come from (only worked
    out for such a request: a bearer token's needs no origin)."""
    return own_origins() + list(state().settings.trusted_origins)


def own_origins() -> list[str]:
    """The host's own origin.  With ``ZIS_PUBLIC_URL`` set it is that URL's origin only:
    the ``Host`` header is the caller's to choose and must not widen what counts as
    "own" (redirect targets, CSRF-trusted origins)."""
    public = state().settings.public_url
    return [public] if public else [request.host_url]


def external(endpoint: str, **values: Any) -> str:
    """An absolute URL of one of our endpoints, on ``ZIS_PUBLIC_URL`` when it is set."""
    public = state().settings.public_url
    if public:
        return public + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def json_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise e.UnsupportedMediaType("Send the body as application/json.")
    body = request.get_json(silent=True)
    if body is None:
        raise e.InvalidRequest("The request body is not valid JSON.")
    return v.json_object(body)


def lookup(integration: str, *, oauth_only: bool = False) -> ConnectionRecord:
    """The connection named by exactly one of ?name= / ?uuid= (both only if they agree).

    ``oauth_only``: the endpoint shows tokens or refreshes them, which only OAuth
    connections have; another type's secret must never leave through it.
    """
    name = request.args.get("name")
    uid = request.args.get("uuid")
    if name is None and uid is None:
        raise e.InvalidRequest("Give the connection's name or uuid as a query parameter.")
    life = state().lifecycle
    if uid is not None:
        rec = life.find(integration, uuid=v.uuid_value(uid))
        if name is not None and rec.name != name:
            raise e.InvalidRequest("name and uuid name different connections; give one.")
    else:
        rec = life.find(integration, name=v.connection_name(name))
    if oauth_only and rec.type != "oauth":
        raise e.WrongConnectionType(
            integration,
            rec.name,
            rec.type,
            f"this endpoint is for OAuth connections; use "
            f"GET /integrations/{integration}/connections/{rec.type}/{rec.name}",
        )
    return rec


def connection_response(rec: ConnectionRecord, **extra: Any) -> Response:
    """The connection JSON (tokens decrypted), plus ``extra`` fields."""
    st = state()
    data = connection_json(st.lifecycle.decrypt(rec), st.settings.account_id)
    data.update(extra)
    return jsonify(data)


def if_match() -> int | None:
    """The client version named by ``If-Match: "N"`` (as answered in ``ETag`` and the
    ``version`` field), or None when the header is absent."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    if not (tag.isascii() and tag.isdigit() and len(tag) <= 18):
        raise e.InvalidRequest('If-Match must be a client version as sent in ETag, e.g. "3".')
    return int(tag)
