"""The SQL hooks of the event log (``zis_events``).

Appending is one ``INSERT`` whose generated id is the event's place in the log (an
auto-incrementing key that SQLite, too, never hands out twice); listing is a keyset
read down the ``(integration, id)`` index.  Purging deletes in batches, each one
statement that is its own transaction, so trimming a large log never holds SQLite's
write lock, or a long PostgreSQL transaction, while flows and refreshes wait.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import sqlalchemy as sa

from ...domain import Event
from ..times import to_ms
from . import queries as q
from .engine import SQLBackend
from .rows import event_from_row, event_row
from .schema import events

#: Rows deleted per write transaction by :meth:`EventHooks._purge_events`.
_PURGE_BATCH: Final = 1000


class EventHooks(SQLBackend):
    """Hooks for the event log."""

    def _add_event(self, event: Event) -> Event:
        """One statement, a transaction of its own
        (:meth:`~.engine.SQLBackend._one_statement`): a refresh, a flow and a delete
        each append one after their own write."""
        with self._one_statement().begin() as conn:
            key = conn.execute(sa.insert(events).values(**event_row(event))).inserted_primary_key
        assert key is not None
        return event.replace(id=int(key[0]))

    def _list_events(self, integration: str, before: int | None, limit: int) -> list[Event]:
        params = {"integration": integration, "limit": limit}
        if before is None:
            rows = self._read(q.EVENTS_OF, params)
        else:
            rows = self._read(q.EVENTS_BEFORE, {**params, "before": before})
        return [event_from_row(row) for row in rows]

    def _purge_events(self, before: datetime) -> int:
        e = events
        old = sa.select(e.c.id).where(e.c.created_at < to_ms(before)).order_by(e.c.id).limit(_PURGE_BATCH)
        # The subquery is wrapped once more: some databases refuse a LIMIT directly in IN.
        batch = sa.delete(e).where(e.c.id.in_(sa.select(old.subquery().c.id)))
        purged = 0
        while True:
            with self._one_statement().begin() as conn:  # each batch its own transaction
                deleted = conn.execute(batch).rowcount
            purged += deleted
            if deleted < _PURGE_BATCH:
                return purged
