"""A connection's page and its actions: connect, reconnect, refresh now, delete.

Connecting runs the real flow: the console starts it as the HTTP API would for an admin
session (the flow is bound to this admin, see ``FlowService.start_redirect``), with this
console as the place the provider's answer comes back to, and sends the browser to the
``start_redirect`` URL.  The landing route exchanges the verification code and shows the
connection.  Nothing here ever renders a token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from .._state import state
from ..api.helpers import external, own_origins
from ..domain import Event
from ..errors import InvalidRequest, ZISError
from ..flow_checks import add_query
from ..validation import uuid_value
from .blueprint import bp
from .security import admit, admit_write
from .status import row_for, see_other
from .views import page

#: How many of the integration's newest events are searched for a connection's history.
HISTORY_SCAN = 500


def start_flow(integration: str, admin: str, body: dict[str, Any], origin_url: str) -> str:
    """Record a flow started by ``admin``'s session; the URL to send the browser to.

    For a client-credentials client there is no browser step: the flow answers a
    verification code at once, and the browser goes straight to ``origin_url`` with it.
    """
    st = state()
    result = st.flows.start(
        integration,
        {**body, "origin_oauth_redirect_url": origin_url},
        created_by=admin,
        own_origins=own_origins(),
        callback_url=external("zis.callback"),
        access_codes_url=external("zis.access_codes", integration=integration),
        start_redirect_url=external("zis.start_redirect"),
        admin_id=admin,
    )
    target = result["redirect_url"]
    codes = parse_qs(urlsplit(target).query).get("verification_code")
    if codes and "/access_codes/" in urlsplit(target).path:
        return add_query(origin_url, {"verification_code": codes[0]})
    return target


def flow_body(client_uuid: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "oauth_client_uuid": client_uuid,
        "allow_offline_access": request.form.get("allow_offline_access", "on") == "on",
    }
    scopes = request.form.get("permission_scopes", "").strip()
    if scopes:
        body["permission_scopes"] = scopes
    subdomain = request.form.get("oauth_url_subdomain", "").strip()
    if subdomain:
        body["oauth_url_subdomain"] = subdomain
    return body


@bp.post("/i/<integration>/connect")
def connect(integration: str) -> WerkzeugResponse:
    """A new OAuth connection (or re-authorizing one of that name)."""
    admin = admit_write(integration)
    client_uuid = request.form.get("oauth_client_uuid", "")
    name = request.form.get("name", "").strip()
    landing = external(".landing", integration=integration)
    return see_other(start_flow(integration, admin, flow_body(client_uuid, name), landing))


@bp.post("/i/<integration>/c/<uuid>/connect")
def reconnect(integration: str, uuid: str) -> WerkzeugResponse:
    """Re-authorize: the same client and name, so the connection keeps its uuid."""
    admin = admit_write(integration)
    rec = state().lifecycle.find(integration, uuid=uuid_value(uuid))
    if rec.type != "oauth" or rec.oauth_client_uuid is None:
        raise InvalidRequest("Only OAuth connections are connected through a provider.")
    landing = external(".landing", integration=integration)
    return see_other(start_flow(integration, admin, flow_body(rec.oauth_client_uuid, rec.name), landing))


@bp.get("/i/<integration>/connected")
def landing(integration: str) -> WerkzeugResponse | tuple[str, int]:
    """Where the provider's answer comes back: exchange the code, show the connection."""
    admit(integration)
    error = request.args.get("error")
    if error is not None:
        # The provider's (or the callback's) error code, shown escaped; nothing was stored.
        return page("flow_failed.html", integration=integration, error=error[:128]), 400
    rec, _ = state().flows.exchange_code(integration, request.args.get("verification_code"))
    return see_other(url_for(".connection", integration=integration, uuid=rec.uuid, msg="connected"))


@bp.get("/i/<integration>/c/<uuid>")
def connection(integration: str, uuid: str) -> str:
    admit(integration)
    st = state()
    rec = st.lifecycle.find(integration, uuid=uuid_value(uuid))
    client = st.storage.get_client(integration, uuid=rec.oauth_client_uuid) if rec.oauth_client_uuid else None
    return page(
        "connection.html",
        integration=integration,
        row=row_for(rec),
        client=client,
        history=history(integration, rec.uuid),
        error=None,
    )


def history(integration: str, connection_uuid: str) -> list[Event] | None:
    """The connection's events, newest first; None when the storage keeps no log."""
    storage = state().storage
    list_events = getattr(storage, "list_events", None)
    if list_events is None:
        return None
    found: list[Event] = []
    cursor: str | None = None
    scanned = 0
    while scanned < HISTORY_SCAN:
        page_ = list_events(integration, limit=100, after=cursor)
        found += [e for e in page_.items if e.connection_uuid == connection_uuid]
        scanned += len(page_.items)
        cursor = page_.next_cursor
        if cursor is None:
            break
    return found


@bp.post("/i/<integration>/c/<uuid>/refresh")
def refresh(integration: str, uuid: str) -> WerkzeugResponse | tuple[str, int]:
    admit_write(integration)
    st = state()
    rec = st.lifecycle.find(integration, uuid=uuid_value(uuid))
    try:
        st.lifecycle.ensure_fresh(rec, force=True)
    except ZISError as exc:
        if exc.status >= 500 and exc.status != 502:
            raise
        # Show the failure on the page itself, with the status the refresh left.
        current = st.lifecycle.find(integration, uuid=rec.uuid)
        shown = page(
            "connection.html",
            integration=integration,
            row=row_for(current),
            client=st.storage.get_client(integration, uuid=current.oauth_client_uuid)
            if current.oauth_client_uuid
            else None,
            history=history(integration, current.uuid),
            error=exc,
        )
        return shown, exc.status
    return see_other(url_for(".connection", integration=integration, uuid=rec.uuid, msg="refreshed"))


@bp.get("/i/<integration>/c/<uuid>/delete")
def confirm_delete(integration: str, uuid: str) -> str:
    admit(integration)
    rec = state().lifecycle.find(integration, uuid=uuid_value(uuid))
    return page("connection_delete.html", integration=integration, rec=rec)


@bp.post("/i/<integration>/c/<uuid>/delete")
def delete(integration: str, uuid: str) -> str:
    admit_write(integration)
    st = state()
    rec = st.lifecycle.find(integration, uuid=uuid_value(uuid))
    revoked = st.lifecycle.delete(rec)
    return page("connection_deleted.html", integration=integration, rec=rec, revoked=revoked)
