"""The contract for the event log: ids that only grow, newest-first pages by an opaque
cursor, one integration's events apart from another's, and trimming by age."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ...domain import Event
from ...errors import InvalidValue
from ..base import EVENT_DETAIL_MAX_BYTES, Storage
from .builders import SEC, T0, make_event


class EventContract:
    """Appending, listing and purging events."""

    def test_an_added_event_reads_back_as_written_with_its_id(self, storage: Storage) -> None:
        written = make_event(created_at=T0 + timedelta(microseconds=1500))
        stored = storage.add_event(written)
        assert stored.id is not None and stored.id > 0
        # Times land on the millisecond; everything else as given.
        assert stored == written.replace(id=stored.id, created_at=T0 + timedelta(milliseconds=1))
        page = storage.list_events("acme_crm", limit=10)
        assert page.items == [stored]
        assert (page.next_cursor, page.has_more) == (None, False)
        bare = storage.add_event(Event(integration="acme_crm", kind="api_token.issued", actor="cli"))
        assert storage.list_events("acme_crm", limit=1).items == [bare]
        assert (bare.connection_name, bare.connection_uuid, bare.oauth_client_uuid) == (None, None, None)
        assert dict(bare.detail) == {}

    def test_ids_grow_across_integrations(self, storage: Storage) -> None:
        ids = [
            storage.add_event(make_event(integration)).id or 0 for integration in ("a", "b", "a", "c", "b")
        ]
        assert all(i > 0 for i in ids)
        assert ids == sorted(ids) and len(set(ids)) == 5

    def test_pages_are_newest_first_and_end_with_no_cursor(self, storage: Storage) -> None:
        mine = [storage.add_event(make_event(kind="connection.refreshed", detail={"n": i})) for i in range(5)]
        storage.add_event(make_event("other_app"))
        newest_first = mine[::-1]

        first = storage.list_events("acme_crm", limit=2)
        assert first.items == newest_first[:2] and first.has_more and first.next_cursor is not None
        second = storage.list_events("acme_crm", limit=2, after=first.next_cursor)
        assert second.items == newest_first[2:4] and second.has_more
        last = storage.list_events("acme_crm", limit=2, after=second.next_cursor)
        assert last.items == newest_first[4:] and (last.has_more, last.next_cursor) == (False, None)
        # A page that ends exactly at the oldest event says so.
        exact = storage.list_events("acme_crm", limit=5)
        assert exact.items == newest_first and (exact.has_more, exact.next_cursor) == (False, None)
        # Events written after a cursor was handed out never appear behind it.
        storage.add_event(make_event())
        again = storage.list_events("acme_crm", limit=2, after=first.next_cursor)
        assert again.items == second.items
        assert storage.list_events("nobody", limit=3).items == []

    def test_bad_arguments_are_refused(self, storage: Storage) -> None:
        with pytest.raises(InvalidValue) as bad_limit:
            storage.list_events("acme_crm", limit=0)
        assert bad_limit.value.field == "limit"
        for cursor in ("x", "-1", "1" * 40, ""):
            with pytest.raises(InvalidValue) as bad_cursor:
                storage.list_events("acme_crm", limit=1, after=cursor)
            assert bad_cursor.value.field == "after"
        refused = [
            make_event().replace(id=7),
            make_event(kind=""),
            make_event(kind="Has Spaces"),
            make_event(actor=""),
            make_event(actor="a" * 256),
            make_event(connection_name="n" * 129),
            make_event(integration=""),
            make_event(detail={"blob": "x" * EVENT_DETAIL_MAX_BYTES}),
            make_event(detail={"when": T0}),
            make_event(detail={"ratio": float("nan")}),
        ]
        for event in refused:
            with pytest.raises(ValueError):
                storage.add_event(event)
        assert storage.list_events("acme_crm", limit=10).items == []

    def test_purge_removes_only_older_events_and_never_reuses_an_id(self, storage: Storage) -> None:
        old = [storage.add_event(make_event(integration, created_at=T0 - SEC)) for integration in ("a", "b")]
        edge = storage.add_event(make_event("a", created_at=T0))
        new = storage.add_event(make_event("b", created_at=T0 + SEC))

        assert storage.purge_events(T0) == 2
        assert storage.list_events("a", limit=10).items == [edge]
        assert storage.list_events("b", limit=10).items == [new]
        assert storage.purge_events(T0) == 0

        assert storage.purge_events(T0 + 2 * SEC) == 2
        later = storage.add_event(make_event("a", created_at=T0 + 3 * SEC))
        assert later.id is not None
        assert later.id > max(e.id or 0 for e in (*old, edge, new))
