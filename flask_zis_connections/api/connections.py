"""Connections over HTTP: show (refreshing when due), refresh now, delete, list."""

from __future__ import annotations

from flask import Response, jsonify, request

from .. import errors as e
from .._state import state
from .blueprint import bp
from .helpers import auth, connection_response, external, lookup
from .serializers import connection_summary_json


@bp.get("/connections/refresh/<integration>")
def refresh(integration: str) -> Response:
    auth(integration, state_changing=True)
    return connection_response(state().lifecycle.ensure_fresh(lookup(integration), force=True))


@bp.get("/connections/<integration>")
def show(integration: str) -> Response:
    auth(integration)
    return connection_response(state().lifecycle.ensure_fresh(lookup(integration), force=False))


@bp.delete("/connections/<integration>")
def delete(integration: str) -> Response:
    auth(integration)
    rec = lookup(integration)
    revoked = state().lifecycle.delete(rec)
    return jsonify({"deleted": True, "uuid": rec.uuid, "revoked": revoked})


@bp.get("/integrations/<integration>/connections/all")
def list_connections(integration: str) -> Response:
    auth(integration)
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise e.InvalidValue("limit", "must be an integer") from None
    if not 1 <= limit <= 500:
        raise e.InvalidValue("limit", "must be between 1 and 500")
    page = state().storage.list_connections(
        integration, limit=limit, cursor=request.args.get("cursor") or None
    )
    links = {
        "next": external(
            "zis.list_connections", integration=integration, limit=limit, cursor=page.next_cursor
        )
        if page.next_cursor
        else None
    }
    return jsonify(
        {
            "connections": [connection_summary_json(r) for r in page.items],
            "meta": {"has_more": page.next_cursor is not None, "after_cursor": page.next_cursor},
            "links": links,
        }
    )
