"""The contract for OAuth clients: names unique per integration, versions that catch
lost updates, deletes that take the client's connections along, and the life-cycle
hooks every backend answers."""

from __future__ import annotations

import pytest

from ...errors import Conflict, OAuthClientNotFound
from ..base import Storage
from .builders import SEC, T0, make_client, make_record, new_id, race


class ClientContract:
    """OAuth clients and the life-cycle hooks."""

    def test_lifecycle_hooks(self, storage: Storage) -> None:
        storage.create_tables()  # idempotent
        storage.healthcheck()
        assert storage.list_clients() == []

    def test_add_and_get_client(self, storage: Storage) -> None:
        client = make_client()
        assert storage.add_client(client) == client
        assert storage.get_client("acme_crm", uuid=client.uuid) == client
        assert storage.get_client("acme_crm", name="acme") == client
        assert storage.get_client("acme_crm", uuid=client.uuid, name="acme") == client
        assert storage.get_client("acme_crm", uuid=client.uuid, name="other") is None
        assert storage.get_client("other_app", uuid=client.uuid) is None
        assert storage.get_client("other_app", name="acme") is None
        assert storage.get_client("acme_crm", uuid=new_id()) is None
        assert storage.get_client("acme_crm", name="nope") is None

    def test_client_defaults_round_trip(self, storage: Storage) -> None:
        client = make_client(
            client_secret_enc=None,
            auth_url=None,
            issuer=None,
            revocation_url=None,
            authorize_params={},
            offline_access_params={},
            pkce=False,
            grant_type="client_credentials",
            token_endpoint_auth_method="client_secret_post",
        )
        storage.add_client(client)
        assert storage.get_client("acme_crm", uuid=client.uuid) == client

    def test_returned_client_mappings_are_not_shared(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        fetched = storage.get_client("acme_crm", uuid=client.uuid)
        assert fetched is not None
        fetched.authorize_params["prompt"] = "mutated"  # type: ignore[index]
        again = storage.get_client("acme_crm", uuid=client.uuid)
        assert again is not None
        assert again.authorize_params["prompt"] == "consent"

    def test_duplicate_client_name_conflicts(self, storage: Storage) -> None:
        storage.add_client(make_client())
        with pytest.raises(Conflict) as info:
            storage.add_client(make_client())
        assert "'acme'" in info.value.message
        assert "'acme_crm'" in info.value.message
        # The same name in another integration is fine.
        storage.add_client(make_client(integration="other_app"))
        assert len(storage.list_clients()) == 2

    def test_update_client(self, storage: Storage) -> None:
        client = storage.add_client(make_client(created_by="alice"))
        assert client.created_by == "alice"
        later = T0 + 60 * SEC
        changed = client.replace(
            name="renamed",
            client_id="cid2",
            client_secret_enc="enc:secret2",
            default_scopes="read",
            authorize_params={"prompt": "login"},
            pkce=False,
            created_at=later,  # ignored: creation time is kept
            created_by="mallory",  # ignored: so is the creator
            updated_at=later,
        )
        stored = storage.update_client(changed)
        assert stored == changed.replace(created_at=T0, created_by="alice", version=2)
        assert storage.get_client("acme_crm", name="renamed") == stored
        assert storage.get_client("acme_crm", name="acme") is None
        # The old name is free again.
        storage.add_client(make_client())

    def test_update_client_rename_onto_existing_name_conflicts(self, storage: Storage) -> None:
        storage.add_client(make_client(name="first"))
        second = storage.add_client(make_client(name="second"))
        with pytest.raises(Conflict) as info:
            storage.update_client(second.replace(name="first"))
        assert "'first'" in info.value.message
        assert storage.get_client("acme_crm", uuid=second.uuid) == second

    def test_update_missing_client(self, storage: Storage) -> None:
        with pytest.raises(OAuthClientNotFound):
            storage.update_client(make_client())
        client = storage.add_client(make_client())
        with pytest.raises(OAuthClientNotFound):
            storage.update_client(client.replace(integration="other_app"))

    def test_list_clients(self, storage: Storage) -> None:
        a = storage.add_client(make_client(name="b_first"))
        b = storage.add_client(make_client(integration="other_app", name="x"))
        c = storage.add_client(make_client(name="a_second"))
        assert storage.list_clients() == [a, b, c]
        assert storage.list_clients("acme_crm") == [a, c]
        assert storage.list_clients("nobody") == []

    def test_delete_client_cascades_to_its_connections(self, storage: Storage) -> None:
        doomed = storage.add_client(make_client(name="doomed"))
        kept = storage.add_client(make_client(name="kept"))
        storage.upsert_connection(make_record(doomed, "one"))
        storage.upsert_connection(make_record(doomed, "two"))
        survivor = storage.upsert_connection(make_record(kept, "three"))

        assert storage.delete_client("other_app", doomed.uuid) is False
        assert storage.delete_client("acme_crm", doomed.uuid) is True
        assert storage.get_client("acme_crm", uuid=doomed.uuid) is None
        assert storage.get_connection("acme_crm", name="one") is None
        assert storage.get_connection("acme_crm", name="two") is None
        assert storage.list_connections("acme_crm").items == [survivor]
        assert storage.delete_client("acme_crm", doomed.uuid) is False
        # Name reusable after delete.
        storage.add_client(make_client(name="doomed"))

    def test_update_client_with_expected_version(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        assert client.version == 1
        first = storage.update_client(client.replace(default_scopes="a"), expected_version=1)
        assert first.version == 2 and first.default_scopes == "a"
        with pytest.raises(Conflict, match="changed by someone else"):
            storage.update_client(client.replace(default_scopes="b"), expected_version=1)
        assert storage.get_client("acme_crm", uuid=client.uuid) == first
        # Without an expected version the write goes through (trusted callers, config).
        assert storage.update_client(client.replace(default_scopes="c")).version == 3

    def test_race_update_client_with_expected_version(self, storage: Storage) -> None:
        client = storage.add_client(make_client())

        def attempt(i: int) -> bool:
            try:
                storage.update_client(client.replace(default_scopes=f"s{i}"), expected_version=1)
            except Conflict:
                return False
            return True

        results = race(20, attempt)
        assert results.count(True) == 1
        final = storage.get_client("acme_crm", uuid=client.uuid)
        assert final is not None and final.version == 2
        assert final.default_scopes == f"s{results.index(True)}"
