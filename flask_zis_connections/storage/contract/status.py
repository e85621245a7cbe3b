"""Contract: counting connections by status, for dashboards and metrics."""

from __future__ import annotations

from datetime import timedelta

from ...domain import CONNECTION_STATUSES, connection_status
from ..base import Storage
from .builders import SEC, T0, make_client, make_credential, make_record

#: "Expiring soon" means: before this moment.
SOON = T0 + 300 * SEC


class StatusContract:
    def test_an_empty_store_counts_zero_of_every_status(self, storage: Storage) -> None:
        assert storage.connection_status_counts(SOON) == dict.fromkeys(CONNECTION_STATUSES, 0)

    def test_every_connection_is_counted_once_by_the_first_matching_status(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        other = storage.add_client(make_client("billing", "ledger"))
        hour = timedelta(hours=1)
        active = storage.upsert_connection(make_record(client, "active", token_expiry=T0 + hour))
        storage.upsert_connection(make_record(other, "active-too", token_expiry=T0 + hour))
        storage.upsert_connection(make_record(client, "soon", token_expiry=T0 + 60 * SEC))
        storage.upsert_connection(make_record(client, "expired", token_expiry=T0 - hour))
        storage.upsert_connection(make_record(client, "forever", token_expiry=None))
        failing = storage.upsert_connection(make_record(client, "failing", token_expiry=T0 + hour))
        storage.record_refresh_failure(failing.uuid, "provider_error", T0, base=1, cap=60)
        refused = storage.upsert_connection(make_record(client, "refused", token_expiry=T0 - hour))
        marked = storage.update_connection(refused.replace(needs_reauth=True), expected_version=1)
        assert marked is not None and marked.needs_reauth
        # Refused and backing off: re-authorization is what a person must do.
        storage.record_refresh_failure(refused.uuid, "invalid_grant", T0, base=1, cap=60)
        storage.add_connection(make_credential("acme_crm", "key"))
        storage.add_connection(make_credential("billing", "token", type="bearer_token"))
        # A back-off of a connection that does not exist counts nothing.
        storage.record_refresh_failure("no-such-connection", "provider_error", T0, base=1, cap=60)

        counts = storage.connection_status_counts(SOON)
        expected = {
            "active": 2,
            "expiring_soon": 2,
            "refresh_failing": 1,
            "needs_reauth": 1,
            "no_expiry": 3,  # "forever" and the two credential connections
        }
        assert counts == expected

        # The same rules as connection_status(), one connection at a time.
        for name, status in (("active", "active"), ("soon", "expiring_soon"), ("failing", "refresh_failing")):
            record = storage.get_connection("acme_crm", name=name)
            assert record is not None
            assert connection_status(record, storage.get_refresh_backoff(record.uuid), SOON) == status

        # A successful refresh clears the back-off: the connection is active again.
        storage.clear_refresh_backoff(failing.uuid)
        after = storage.connection_status_counts(SOON)
        assert after["refresh_failing"] == 0 and after["active"] == 3
        # Later, the active ones are expiring soon too.
        later = storage.connection_status_counts(T0 + 2 * timedelta(hours=1))
        assert later["active"] == 0 and later["expiring_soon"] == 5
        storage.delete_connection("acme_crm", active.uuid)
        assert sum(storage.connection_status_counts(SOON).values()) == sum(after.values()) - 1
