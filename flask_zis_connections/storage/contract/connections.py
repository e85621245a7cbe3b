"""The contract for connections: lookups by name or uuid within one integration,
upserts that keep a connection's identity, compare-and-swap writes, stable cursor
pagination and the refresh worklist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ...errors import InvalidValue, OAuthClientNotFound
from ..base import Storage
from .builders import SEC, T0, make_client, make_record, new_id


class ConnectionContract:
    """Connections."""

    def test_get_connection_by_name_and_uuid(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = make_record(client)
        assert storage.upsert_connection(record) == record
        assert storage.get_connection("acme_crm", name="main") == record
        assert storage.get_connection("acme_crm", uuid=record.uuid) == record
        assert storage.get_connection("acme_crm", name="main", uuid=record.uuid) == record
        assert storage.get_connection("acme_crm", name="other", uuid=record.uuid) is None
        assert storage.get_connection("other_app", name="main") is None
        assert storage.get_connection("other_app", uuid=record.uuid) is None
        assert storage.get_connection("acme_crm", name="nope") is None
        assert storage.get_connection("acme_crm", uuid=new_id()) is None
        with pytest.raises(TypeError):
            storage.get_connection("acme_crm")

    def test_connection_optional_fields_round_trip(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = make_record(
            client,
            refresh_token_enc=None,
            token_response_enc=None,
            token_expiry=None,
            permission_scope=None,
            oauth_url_subdomain=None,
            created_by=None,
            grant_type="client_credentials",
            token_type="mac",
        )
        storage.upsert_connection(record)
        assert storage.get_connection("acme_crm", uuid=record.uuid) == record

    def test_datetimes_come_back_aware_utc_at_millisecond_precision(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        plus2 = timezone(timedelta(hours=2))
        record = make_record(
            client,
            token_expiry=datetime(2030, 1, 1, 14, 0, 0, 123456, tzinfo=plus2),
            created_at=T0.replace(microsecond=999999),
        )
        stored = storage.upsert_connection(record)
        fetched = storage.get_connection("acme_crm", name="main")
        assert fetched == stored
        assert stored.token_expiry == datetime(2030, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
        assert stored.token_expiry is not None and stored.token_expiry.utcoffset() == timedelta(0)
        assert stored.created_at == T0.replace(microsecond=999000)

    def test_upsert_replaces_tokens_and_keeps_identity(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        first = storage.upsert_connection(make_record(client))
        marked = storage.update_connection(first.replace(needs_reauth=True), expected_version=1)
        assert marked is not None and marked.needs_reauth and marked.version == 2

        later = T0 + 3600 * SEC
        again = make_record(
            client,
            access_token_enc="enc:access:new",
            refresh_token_enc="enc:refresh:new",
            token_expiry=later + 3600 * SEC,
            permission_scope="read write",
            created_at=later,
            updated_at=later,
        )
        stored = storage.upsert_connection(again)
        assert stored.uuid == first.uuid != again.uuid
        assert stored.created_at == T0
        assert stored.updated_at == later
        assert stored.version == 3
        assert stored.needs_reauth is False
        assert stored.access_token_enc == "enc:access:new"
        assert stored.refresh_token_enc == "enc:refresh:new"
        assert stored.permission_scope == "read write"
        assert storage.get_connection("acme_crm", name="main") == stored
        assert storage.get_connection("acme_crm", uuid=again.uuid) is None
        assert len(storage.list_connections("acme_crm").items) == 1

    def test_upsert_for_unknown_client_is_refused(self, storage: Storage) -> None:
        ghost = make_client()
        with pytest.raises(OAuthClientNotFound):
            storage.upsert_connection(make_record(ghost))
        assert storage.get_connection("acme_crm", name="main") is None

    def test_update_connection_compare_and_swap(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        fresh = record.replace(
            access_token_enc="enc:access:2",
            token_expiry=T0 + 7200 * SEC,
            updated_at=T0 + 60 * SEC,
            version=99,  # ignored: the new version is expected_version + 1
        )
        stored = storage.update_connection(fresh, expected_version=1)
        assert stored is not None
        assert stored == fresh.replace(version=2)
        assert storage.get_connection("acme_crm", name="main") == stored

        stale = record.replace(access_token_enc="enc:access:stale")
        assert storage.update_connection(stale, expected_version=1) is None
        assert storage.get_connection("acme_crm", name="main") == stored

        assert storage.update_connection(make_record(client, "ghost"), expected_version=1) is None
        assert storage.get_connection("acme_crm", name="ghost") is None
        other = record.replace(integration="other_app")
        assert storage.update_connection(other, expected_version=2) is None

    def test_update_connection_to_unknown_client_is_refused(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        with pytest.raises(OAuthClientNotFound):
            storage.update_connection(record.replace(oauth_client_uuid=new_id()), expected_version=1)
        assert storage.get_connection("acme_crm", uuid=record.uuid) == record

    def test_delete_connection(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        assert storage.delete_connection("other_app", record.uuid) is False
        assert storage.delete_connection("acme_crm", record.uuid) is True
        assert storage.get_connection("acme_crm", uuid=record.uuid) is None
        assert storage.delete_connection("acme_crm", record.uuid) is False
        # The name can be used again, by a new connection.
        again = storage.upsert_connection(make_record(client))
        assert again.uuid != record.uuid and again.version == 1

    def test_list_connections_paginates_stably(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        other = storage.add_client(make_client(integration="other_app"))
        names = []
        for i in range(25):
            names.append(f"conn{i:02d}")
            storage.upsert_connection(make_record(client, names[-1]))
            if i % 3 == 0:
                storage.upsert_connection(make_record(other, f"noise{i}"))

        pages = []
        cursor = None
        while True:
            page = storage.list_connections("acme_crm", limit=10, cursor=cursor)
            pages.append(page)
            # The same cursor gives the same page.
            assert storage.list_connections("acme_crm", limit=10, cursor=cursor) == page
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [len(p.items) for p in pages] == [10, 10, 5]
        assert [r.name for p in pages for r in p.items] == names

        # Updating a row does not move it; a cursor stays valid after rows change.
        storage.upsert_connection(make_record(client, "conn05", access_token_enc="enc:new"))
        storage.delete_connection("acme_crm", pages[1].items[0].uuid)
        second = storage.list_connections("acme_crm", limit=10, cursor=pages[0].next_cursor)
        assert [r.name for r in second.items] == names[11:21]
        storage.upsert_connection(make_record(client, "late"))
        last = storage.list_connections("acme_crm", limit=10, cursor=pages[1].next_cursor)
        assert [r.name for r in last.items] == [*names[20:], "late"]
        assert last.next_cursor is None

        exact = storage.list_connections("other_app", limit=9)
        assert len(exact.items) == 9 and exact.next_cursor is None
        assert storage.list_connections("nobody").items == []

    def test_list_connections_rejects_bad_input(self, storage: Storage) -> None:
        for cursor in ("garbage", "-5"):
            with pytest.raises(InvalidValue) as info:
                storage.list_connections("acme_crm", cursor=cursor)
            assert info.value.field == "cursor"
        with pytest.raises(InvalidValue):
            storage.list_connections("acme_crm", limit=0)

    def test_connections_expiring_before(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        other = storage.add_client(make_client(integration="other_app"))
        late = storage.upsert_connection(make_record(client, "late", token_expiry=T0 + 50 * SEC))
        soon = storage.upsert_connection(make_record(other, "soon", token_expiry=T0 + 10 * SEC))
        storage.upsert_connection(make_record(client, "boundary", token_expiry=T0 + 60 * SEC))
        storage.upsert_connection(make_record(client, "never", token_expiry=None))
        dead = storage.upsert_connection(make_record(client, "dead", token_expiry=T0))
        storage.update_connection(dead.replace(needs_reauth=True), expected_version=1)

        assert storage.connections_expiring_before(T0 + 60 * SEC) == [soon, late]
        assert storage.connections_expiring_before(T0) == []
