"""The event log over HTTP: ``GET /integrations/{integration}/events``, newest first.

What happened to the integration's connections, OAuth clients and API tokens, who did
it and when (see :mod:`flask_zis_connections.events`); never a token or secret.  Paged
like the connections listing: ``page[size]`` (1 to 100, default 50), then
``page[after]`` from the previous answer's ``meta.after_cursor`` for older events.
"""

from __future__ import annotations

from flask import Response, jsonify, request

from .. import errors as e
from .._state import state
from ..storage.base import parse_cursor
from .blueprint import bp
from .helpers import auth
from .serializers import event_json

#: Events per page at most, and by default.
PAGE_SIZE_MAX = 100
PAGE_SIZE_DEFAULT = 50


@bp.get("/integrations/<integration>/events")
def list_events(integration: str) -> Response:
    auth(integration)
    args = request.args
    if "page[before]" in args:
        raise e.InvalidValue("page[before]", "is not supported here: page on with page[after]")
    size_text = args.get("page[size]", str(PAGE_SIZE_DEFAULT))
    size = int(size_text) if size_text.isascii() and size_text.isdigit() and len(size_text) <= 4 else 0
    if not 1 <= size <= PAGE_SIZE_MAX:
        raise e.InvalidValue("page[size]", f"must be an integer from 1 to {PAGE_SIZE_MAX}")
    after = args.get("page[after]")
    parse_cursor(after, "page[after]")  # here, so the error names the parameter sent
    page = state().storage.list_events(integration, limit=size, after=after)
    return jsonify(
        {
            "events": [event_json(event) for event in page.items],
            "meta": {"has_more": page.has_more, "after_cursor": page.next_cursor},
        }
    )
