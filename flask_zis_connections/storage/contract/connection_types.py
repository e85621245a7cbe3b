"""The contract for connection types: credential connections (``bearer_token``,
``basic_auth``, ``api_key``) beside OAuth ones in one name space per integration, an
OAuth upsert that only ever replaces an OAuth row, compare-and-swap writes that never
change a type, one listing of every type paged both ways, and key rotation of their
secrets."""

from __future__ import annotations

import dataclasses

import pytest

from ...domain import ConnectionRecord
from ...errors import Conflict, InvalidValue
from ..base import Storage
from .builders import SEC, T0, make_client, make_credential, make_record, new_id


class ConnectionTypeContract:
    """Connection types."""

    def test_credential_connections_round_trip(self, storage: Storage) -> None:
        made = [
            make_credential(name="bearer", type="bearer_token"),
            make_credential(name="basic", type="basic_auth", allowed_domain="10.1.2.3"),
            make_credential(name="key", type="api_key", allowed_domain="::1"),
        ]
        for record in made:
            assert storage.add_connection(record) == record
            assert storage.get_connection("acme_crm", name=record.name) == record
            assert storage.get_connection("acme_crm", uuid=record.uuid) == record
        basic = storage.get_connection("acme_crm", name="basic")
        assert basic is not None and basic.username == "user" and basic.oauth_client_uuid is None
        key = storage.get_connection("acme_crm", name="key")
        assert key is not None and key.header_name == "X-Api-Key" and key.allowed_domain == "::1"
        # Nothing of theirs expires, so the refresh worklist never holds one.
        assert storage.connections_expiring_before(T0 + 10**6 * SEC) == []

    def test_add_connection_also_adds_oauth_ones_at_version_one(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = make_record(client, version=7)
        assert storage.add_connection(record) == record.replace(version=1)
        again = make_record(client)
        with pytest.raises(Conflict, match="oauth connection named 'main'"):
            storage.add_connection(again)
        with pytest.raises(Conflict, match="uuid"):
            storage.add_connection(make_record(client, "other", uuid=record.uuid))

    def test_a_name_is_unique_across_types(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        oauth = storage.upsert_connection(make_record(client, "main"))
        with pytest.raises(Conflict, match="oauth connection named 'main'"):
            storage.add_connection(make_credential(name="main", type="bearer_token"))
        key = storage.add_connection(make_credential(name="key"))
        for kind in ("bearer_token", "basic_auth", "api_key"):
            with pytest.raises(Conflict, match="api_key connection named 'key'"):
                storage.add_connection(make_credential(name="key", type=kind))
        with pytest.raises(Conflict, match="uuid"):
            storage.add_connection(make_credential(name="fresh", uuid=key.uuid))
        # Another integration has names of its own.
        storage.add_connection(make_credential("other_app", name="main"))
        assert storage.get_connection("acme_crm", name="main") == oauth
        assert storage.get_connection("acme_crm", name="key") == key
        assert storage.get_connection("acme_crm", name="fresh") is None

    def test_the_oauth_upsert_never_replaces_another_type(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        key = storage.add_connection(make_credential(name="main"))
        with pytest.raises(Conflict, match="api_key connection named 'main'"):
            storage.upsert_connection(make_record(client, "main"))
        assert storage.get_connection("acme_crm", name="main") == key
        with pytest.raises(ValueError, match="add_connection"):
            storage.upsert_connection(make_credential(name="other"))

    def test_records_must_fit_their_type(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        with pytest.raises(ValueError):
            storage.add_connection(make_credential(oauth_client_uuid=client.uuid))
        with pytest.raises(ValueError):
            storage.add_connection(make_credential(allowed_domain=None))
        with pytest.raises(ValueError):
            storage.add_connection(make_record(client, oauth_client_uuid=None))
        with pytest.raises(ValueError):
            storage.add_connection(make_credential(type="carrier_pigeon"))
        assert storage.list_connections("acme_crm").items == []

    def test_update_keeps_the_type_and_swaps_on_the_version(self, storage: Storage) -> None:
        key = storage.add_connection(make_credential(name="key"))
        changed = key.replace(
            access_token_enc="enc:secret:2", header_name="X-Other", allowed_domain="b.example.test"
        )
        stored = storage.update_connection(changed.replace(updated_at=T0 + SEC), expected_version=1)
        assert stored == changed.replace(updated_at=T0 + SEC, version=2)
        assert storage.update_connection(changed, expected_version=1) is None
        # A write of another type never lands on the row, whatever the version.
        as_bearer = stored.replace(type="bearer_token", header_name=None)
        assert storage.update_connection(as_bearer, expected_version=2) is None
        assert storage.get_connection("acme_crm", name="key") == stored

    def test_delete_and_client_deletion(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        storage.upsert_connection(make_record(client, "main"))
        key = storage.add_connection(make_credential(name="key"))
        # Deleting a client takes its connections, never a credential one.
        assert storage.delete_client("acme_crm", client.uuid) is True
        assert [r.name for r in storage.list_connections("acme_crm").items] == ["key"]
        assert storage.delete_connection("acme_crm", key.uuid) is True
        assert storage.get_connection("acme_crm", name="key") is None
        # The name is free again, for any type.
        storage.add_connection(make_credential(name="key", type="bearer_token"))

    def test_listing_pages_every_type_both_ways(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        kinds = ("bearer_token", "basic_auth", "api_key")
        made: list[ConnectionRecord] = []
        for i in range(10):
            if i % 4 == 0:
                made.append(storage.upsert_connection(make_record(client, f"c{i}")))
            else:
                made.append(storage.add_connection(make_credential(name=f"c{i}", type=kinds[i % 3])))
            storage.add_connection(make_credential("other_app", name=f"noise{i}"))
        names = [r.name for r in made]

        forward = [storage.list_connections("acme_crm", limit=4)]
        while forward[-1].next_cursor is not None:
            forward.append(storage.list_connections("acme_crm", limit=4, cursor=forward[-1].next_cursor))
        assert [[r.name for r in p.items] for p in forward] == [names[0:4], names[4:8], names[8:]]
        assert [p.has_more for p in forward] == [True, True, False]
        assert forward[0].prev_cursor is None
        assert all(p.prev_cursor is not None for p in forward[1:])

        backward = [forward[-1]]
        while backward[-1].prev_cursor is not None:
            backward.append(storage.list_connections("acme_crm", limit=4, before=backward[-1].prev_cursor))
        assert [[r.name for r in p.items] for p in backward] == [names[8:], names[4:8], names[0:4]]
        assert [p.has_more for p in backward[1:]] == [True, False]
        # Paging back gives the same pages (and cursors) as paging forward.
        assert backward[1] == forward[1] and backward[2] == dataclasses.replace(forward[0], has_more=False)

        # A page before a cursor ends where it is; a deleted row leaves no hole.
        storage.delete_connection("acme_crm", made[5].uuid)
        page = storage.list_connections("acme_crm", limit=3, before=forward[2].prev_cursor)
        assert [r.name for r in page.items] == [names[4], names[6], names[7]]
        assert page.next_cursor is not None and page.prev_cursor is not None
        assert storage.list_connections("acme_crm", limit=3, before="1").items == []
        assert storage.list_connections("nobody", before=forward[1].next_cursor).items == []

    def test_listing_rejects_bad_backward_input(self, storage: Storage) -> None:
        for before in ("garbage", "-1", "9" * 20):
            with pytest.raises(InvalidValue) as info:
                storage.list_connections("acme_crm", before=before)
            assert info.value.field == "before"
        with pytest.raises(InvalidValue):
            storage.list_connections("acme_crm", cursor="1", before="2")

    def test_reencrypt_rotates_credential_secrets(self, storage: Storage) -> None:
        kinds = ("bearer_token", "basic_auth", "api_key")
        made = [storage.add_connection(make_credential(name=kind, type=kind)) for kind in kinds]
        assert storage.reencrypt(lambda value: "new" + value) == 3
        for record in made:
            assert storage.get_connection("acme_crm", uuid=record.uuid) == record.replace(
                access_token_enc="newenc:secret:" + record.name
            )

    def test_unknown_uuid_in_an_update_is_no_write(self, storage: Storage) -> None:
        assert storage.update_connection(make_credential(uuid=new_id()), expected_version=1) is None
