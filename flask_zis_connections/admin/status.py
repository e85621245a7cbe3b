"""What the console shows about a connection: its status badge and its last error.

The status follows :func:`~..domain.connection_status`, the rules the metrics gauge
counts by, with "expiring soon" meaning within ``ZIS_REFRESH_LEEWAY``.  A connection
counts as refresh failing while a back-off is recorded (a success clears it), whether
or not its next attempt is already allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask import redirect
from werkzeug.wrappers import Response as WerkzeugResponse

from .._state import state
from ..domain import ConnectionRecord, ConnectionStatus, RefreshBackoff, connection_status, utcnow

#: The words each status is shown with (the badge's colour only repeats them).
STATUS_LABELS: dict[ConnectionStatus, str] = {
    "active": "active",
    "expiring_soon": "expiring soon",
    "refresh_failing": "refresh failing",
    "needs_reauth": "needs re-authorization",
    "no_expiry": "no expiry",
}
#: How many connections an integration page lists.
LIST_LIMIT = 100


@dataclass(frozen=True)
class ConnectionRow:
    record: ConnectionRecord
    status: ConnectionStatus
    backoff: RefreshBackoff | None

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]


def row_for(record: ConnectionRecord) -> ConnectionRow:
    st = state()
    backoff = st.storage.get_refresh_backoff(record.uuid) if record.type == "oauth" else None
    soon = utcnow() + timedelta(seconds=st.settings.refresh_leeway)
    return ConnectionRow(record=record, status=connection_status(record, backoff, soon), backoff=backoff)


def connection_rows(integration: str) -> list[ConnectionRow]:
    """The integration's first :data:`LIST_LIMIT` connections of every type."""
    page = state().storage.list_connections(integration, limit=LIST_LIMIT)
    return [row_for(rec) for rec in page.items]


def see_other(location: str) -> WerkzeugResponse:
    """Answer a form with ``303 See Other``: reloading the next page re-sends nothing."""
    return redirect(location, code=303)
