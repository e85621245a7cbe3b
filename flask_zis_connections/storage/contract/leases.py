"""The contract for refresh coordination: leases that lapse on time and can only be
renewed or released by their holder, writes conditioned on a held lease, and the
per-connection refresh back-off."""

from __future__ import annotations

from datetime import datetime, timedelta

from ...domain import Lease, RefreshState
from ..base import Storage
from .builders import SEC, T0, make_client, make_credential, make_record


class LeaseContract:
    """Refresh leases and back-off."""

    def test_lease_acquire_release_and_expiry(self, storage: Storage) -> None:
        key = "refresh:conn-1"
        assert storage.lease_holder(key, T0) is None
        assert storage.acquire_lease(key, "worker-a", 30, T0) is True
        assert storage.lease_holder(key, T0) == "worker-a"
        assert storage.acquire_lease(key, "worker-b", 30, T0 + 10 * SEC) is False
        assert storage.acquire_lease(key, "worker-a", 30, T0 + 10 * SEC) is False  # held, not free
        assert storage.acquire_lease("refresh:conn-2", "worker-b", 30, T0) is True  # other key

        storage.release_lease(key, "worker-b")  # not the owner: no-op
        assert storage.lease_holder(key, T0 + SEC) == "worker-a"
        storage.release_lease(key, "worker-a")
        assert storage.lease_holder(key, T0 + SEC) is None
        assert storage.acquire_lease(key, "worker-b", 30, T0 + SEC) is True

        # The lease expires at T0 + 31 s; then anyone may take it.
        assert storage.lease_holder(key, T0 + 31 * SEC) is None
        assert storage.acquire_lease(key, "worker-c", 0.5, T0 + 31 * SEC) is True
        assert storage.lease_holder(key, T0 + 31 * SEC) == "worker-c"
        # The crashed previous owner cannot release the re-taken lease.
        storage.release_lease(key, "worker-b")
        assert storage.lease_holder(key, T0 + 31 * SEC) == "worker-c"
        assert storage.lease_holder(key, T0 + 31 * SEC + timedelta(milliseconds=500)) is None

    def test_lease_renewal_only_by_its_unexpired_owner(self, storage: Storage) -> None:
        key = "refresh:conn-1"
        assert storage.renew_lease(key, "worker-a", 30, T0) is False  # never taken
        assert storage.acquire_lease(key, "worker-a", 10, T0) is True
        assert storage.renew_lease(key, "worker-b", 30, T0 + SEC) is False  # not the owner
        assert storage.renew_lease(key, "worker-a", 10, T0 + 9 * SEC) is True
        # Renewed at 9 s for 10 s: still held at 18 s, where the original would have lapsed.
        assert storage.lease_holder(key, T0 + 18 * SEC) == "worker-a"
        assert storage.acquire_lease(key, "worker-b", 10, T0 + 18 * SEC) is False
        # Lapsed at 19 s: a late renewal must fail, and the lease is anyone's again.
        assert storage.renew_lease(key, "worker-a", 10, T0 + 20 * SEC) is False
        assert storage.acquire_lease(key, "worker-b", 10, T0 + 20 * SEC) is True
        assert storage.renew_lease(key, "worker-a", 10, T0 + 21 * SEC) is False

    def test_update_connection_conditional_on_the_lease(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        lease = Lease("refresh:" + record.uuid, "worker-a")
        # Not held at all: no write.
        assert storage.update_connection(record, expected_version=1, lease=lease, now=T0) is None
        assert storage.acquire_lease(lease.key, lease.owner, 10, T0) is True
        # Lapsed (10 s lease, written at 11 s) and taken over: no write, even with the right version.
        late = record.replace(access_token_enc="enc:access:late")
        assert storage.update_connection(late, expected_version=1, lease=lease, now=T0 + 11 * SEC) is None
        assert storage.acquire_lease(lease.key, "worker-b", 10, T0 + 11 * SEC) is True
        assert storage.update_connection(late, expected_version=1, lease=lease, now=T0 + 12 * SEC) is None
        assert storage.get_connection("acme_crm", name="main") == record
        # The current holder writes.
        held = Lease(lease.key, "worker-b")
        fresh = record.replace(access_token_enc="enc:access:2")
        stored = storage.update_connection(fresh, expected_version=1, lease=held, now=T0 + 12 * SEC)
        assert stored is not None and stored.access_token_enc == "enc:access:2" and stored.version == 2

    def test_lease_refused_while_its_connection_backs_off(self, storage: Storage) -> None:
        key = "refresh:conn-1"
        assert storage.acquire_lease(key, "worker-a", 30, T0, unless_backed_off="conn-1") is True
        storage.release_lease(key, "worker-a")
        backoff = storage.record_refresh_failure("conn-1", "provider_error", T0, base=4, cap=60)
        assert backoff.retry_at == T0 + 4 * SEC
        # Free lease, running back-off: refused, and nothing is held.
        assert storage.acquire_lease(key, "worker-b", 30, T0 + SEC, unless_backed_off="conn-1") is False
        assert storage.lease_holder(key, T0 + SEC) is None
        # Without the condition, or for another connection's back-off, it is taken.
        assert storage.acquire_lease(key, "worker-b", 1, T0 + SEC, unless_backed_off="conn-2") is True
        assert storage.acquire_lease(key, "worker-c", 1, T0 + 3 * SEC) is True  # the 1 s lease lapsed
        # Back-off over (retry_at reached) and lease lapsed: taken, and held by its taker.
        assert storage.acquire_lease(key, "worker-d", 30, T0 + 4 * SEC, unless_backed_off="conn-1") is True
        assert storage.lease_holder(key, T0 + 4 * SEC) == "worker-d"
        # Held: refused with or without a back-off.
        assert storage.acquire_lease(key, "worker-e", 30, T0 + 5 * SEC, unless_backed_off="conn-1") is False
        assert storage.lease_holder(key, T0 + 5 * SEC) == "worker-d"
        storage.clear_refresh_backoff("conn-1")
        assert storage.acquire_lease(key, "worker-e", 30, T0 + 5 * SEC, unless_backed_off="conn-1") is False

    def test_read_refresh_state(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        other = storage.add_client(make_client(name="other"))
        record = storage.upsert_connection(make_record(client))
        storage.upsert_connection(make_record(other, "theirs"))
        state = storage.read_refresh_state("acme_crm", record.uuid)
        assert state is not None
        assert state.record == storage.get_connection("acme_crm", uuid=record.uuid)
        # Booleans as booleans (equality alone would take SQLite's 0 and 1 for them).
        assert state.client is not None
        assert {type(state.record.needs_reauth), type(state.client.pkce)} == {bool}
        assert state.backoff is None
        assert state.client == storage.get_client("acme_crm", uuid=client.uuid)
        backoff = storage.record_refresh_failure(record.uuid, "invalid_grant", T0, base=1, cap=60)
        state = storage.read_refresh_state("acme_crm", record.uuid)
        assert state is not None and state.backoff == backoff
        assert state.client == storage.get_client("acme_crm", uuid=client.uuid)
        # Another integration's uuid, an unknown one: nothing.
        assert storage.read_refresh_state("other_crm", record.uuid) is None
        assert storage.read_refresh_state("acme_crm", "no-such-uuid") is None
        # A credential connection has no client.
        cred = storage.add_connection(make_credential(name="key"))
        state = storage.read_refresh_state(cred.integration, cred.uuid)
        assert state is not None and state.record == cred and state.client is None and state.backoff is None

    def test_take_lease_and_read(self, storage: Storage) -> None:
        """The attempt, then the state as it is after it: the holder's to refresh
        from, the back-off that refused a caller, None for a connection gone."""
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        key, uuid = f"refresh:{record.uuid}", record.uuid

        def take(owner: str, now: datetime, uuid: str = uuid) -> tuple[bool, RefreshState | None]:
            return storage.take_lease_and_read(key, owner, 30, now, integration="acme_crm", uuid=uuid)

        taken, state = take("a", T0)
        assert taken and state == storage.read_refresh_state("acme_crm", uuid)
        assert storage.lease_holder(key, T0) == "a"
        # Held: refused, with the row as the holder left it.
        moved = storage.update_connection(record.replace(token_type="mac"), expected_version=record.version)
        assert moved is not None
        taken, state = take("b", T0 + SEC)
        assert not taken and state is not None and state.record == moved and state.backoff is None
        storage.release_lease(key, "a")
        # Backed off: refused while it runs, the back-off in the state.
        backoff = storage.record_refresh_failure(uuid, "provider_error", T0, base=60, cap=60)
        taken, state = take("b", T0 + SEC)
        assert not taken and state is not None and state.backoff == backoff
        assert storage.lease_holder(key, T0 + SEC) is None
        taken, state = storage.take_lease_and_read(
            key, "b", 30, T0 + 61 * SEC, integration="acme_crm", uuid=uuid
        )
        assert taken and state is not None and state.backoff == backoff  # over: taken, still recorded
        # Gone: no state (the attempt itself is the caller's to release).
        storage.release_lease(key, "b")
        assert take("c", T0 + 61 * SEC, uuid="gone") == (True, None)

    def test_refresh_backoff_grows_exponentially_to_the_cap(self, storage: Storage) -> None:
        assert storage.get_refresh_backoff("conn-1") is None
        delays = []
        for i in range(8):
            state = storage.record_refresh_failure("conn-1", "provider_error", T0 + i * SEC, base=1, cap=60)
            assert state.failures == i + 1 and state.reason == "provider_error"
            assert state.failed_at == T0 + i * SEC
            delays.append((state.retry_at - state.failed_at).total_seconds())
            assert storage.get_refresh_backoff("conn-1") == state
        assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
        assert storage.get_refresh_backoff("conn-2") is None  # per connection
        storage.clear_refresh_backoff("conn-1")
        assert storage.get_refresh_backoff("conn-1") is None
        storage.clear_refresh_backoff("conn-1")  # clearing twice is fine
        again = storage.record_refresh_failure("conn-1", "x" * 200, T0, base=1, cap=60)
        assert again.failures == 1 and len(again.reason) <= 64

    def test_refresh_backoff_goes_with_its_connection(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        one = storage.upsert_connection(make_record(client, "one"))
        two = storage.upsert_connection(make_record(client, "two"))
        for rec in (one, two):
            storage.record_refresh_failure(rec.uuid, "provider_error", T0, base=1, cap=60)
        storage.delete_connection("acme_crm", one.uuid)
        assert storage.get_refresh_backoff(one.uuid) is None
        storage.delete_client("acme_crm", client.uuid)
        assert storage.get_refresh_backoff(two.uuid) is None
