"""Connections over HTTP: show (refreshing when due), refresh now, delete, and the listing
of every type.  Show and refresh are OAuth operations: another type gets a 422 naming
``type`` (its own endpoints are in :mod:`.credentials`)."""

from __future__ import annotations

import time

from flask import Response, current_app, jsonify, request

from .. import errors as e
from .. import validation as v
from .._state import AppState, state
from ..domain import ConnectionRecord
from ..storage.base import parse_cursor
from .blueprint import bp
from .helpers import auth, connection_response, lookup
from .serializers import listing_json

#: The service lists at most this many connections per page (and this many by default).
PAGE_SIZE_MAX = 100


@bp.get("/connections/refresh/<integration>")
def refresh(integration: str) -> Response:
    auth(integration, state_changing=True)
    rec = lookup(integration, oauth_only=True)
    return _answer(state().lifecycle.ensure_fresh(rec, force=True))


@bp.get("/connections/<integration>")
def show(integration: str) -> Response:
    """One read of the row (the token check is cached for a few seconds), a refresh
    when it is due, and the answer - decrypted and encoded once per row version."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    st = state()
    auth(integration, st=st, req=req)
    args = req.args
    name = args.get("name")
    if name is not None and "uuid" not in args:
        # Its refresh under way in this process: the row it leaves, without a read.
        running = st.lifecycle.joined_refresh(integration, name)
        if running is not None:
            return _answer(running, st)
        if st.answers is not None:
            # Its last answer here was made from a row whose token is due by now: the
            # refresh starts from that row, without a read (the lease holder's read finds
            # a newer write, if any).  Gone since, or its name another connection's now:
            # read as usual.
            due = st.answers.due(integration, name, time.time() * 1000)
            if due is not None:
                try:
                    return _answer(st.lifecycle.ensure_fresh(due, force=False), st)
                except e.ConnectionNotFound:
                    pass
            # A narrow read decides.  Fresh and unchanged since its last answer, the
            # answer goes out as it is (nothing decrypted or encoded); due, the refresh
            # reads the row once it holds the lease.  Anything else takes the whole row.
            head = st.storage.read_token(integration, v.connection_name(name))
            if head is not None and st.lifecycle.is_fresh(head):
                kept = st.answers.current(integration, name, head)
                if kept is not None:
                    return _json(kept[1])
            elif head is not None and head.type == "oauth":
                return _answer(st.lifecycle.refresh_due(integration, name, head), st)
    rec = lookup(integration, oauth_only=True)
    return _answer(st.lifecycle.ensure_fresh(rec, force=False), st)


def _json(body: bytes) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    return app.response_class(body, mimetype=app.json.mimetype)  # type: ignore[no-any-return]


def _answer(rec: ConnectionRecord, st: AppState | None = None) -> Response:
    """The connection JSON of ``rec``, from the app's answer cache when the row is
    unchanged since it was last answered (:class:`~.serializers.AnswerCache`)."""
    st = st if st is not None else state()
    answers = st.answers
    if answers is None:
        return connection_response(rec)
    body = answers.get(rec)
    if body is None:
        resp = connection_response(rec)
        refreshable = rec.type == "oauth" and not rec.needs_reauth
        answers.put(rec, resp.get_data(), st.lifecycle.record_due_ms(rec) if refreshable else None)
        return resp
    return _json(body)


@bp.delete("/connections/<integration>")
def delete(integration: str) -> Response:
    auth(integration)
    rec = lookup(integration)
    revoked = state().lifecycle.delete(rec)
    return jsonify({"deleted": True, "uuid": rec.uuid, "revoked": revoked})


@bp.get("/integrations/<integration>/connections/all")
def list_connections(integration: str) -> Response:
    """Every type on one keyset: ``page[size]`` (1 to 100, default 100), then
    ``page[after]`` or ``page[before]`` from a previous answer's ``meta``."""
    auth(integration)
    args = request.args
    for legacy in ("limit", "cursor"):
        if legacy in args:
            raise e.InvalidValue(legacy, "is not a parameter: use page[size], page[after], page[before]")
    size_text = args.get("page[size]", str(PAGE_SIZE_MAX))
    size = int(size_text) if size_text.isascii() and size_text.isdigit() and len(size_text) <= 4 else 0
    if not 1 <= size <= PAGE_SIZE_MAX:
        raise e.InvalidValue("page[size]", f"must be an integer from 1 to {PAGE_SIZE_MAX}")
    after, before = args.get("page[after]"), args.get("page[before]")
    if after is not None and before is not None:
        raise e.InvalidValue("page[before]", "give page[after] or page[before], not both")
    # Checked here so the error names the parameter the caller sent.
    parse_cursor(after, "page[after]")
    parse_cursor(before, "page[before]")
    page = state().storage.list_connections(integration, limit=size, cursor=after, before=before)
    return jsonify(
        {
            **listing_json(page.items),
            "meta": {
                "has_more": page.has_more,
                "after_cursor": page.next_cursor,
                "before_cursor": page.prev_cursor,
            },
        }
    )
