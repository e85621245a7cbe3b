"""The contract under contention: many threads released together by a barrier, of
which exactly one wins each single-winner step."""

from __future__ import annotations

from ..base import Storage
from .builders import SEC, T0, make_client, make_code, make_flow, make_record, race


class RaceContract:
    """Single winners under contention."""

    def test_race_consume_flow(self, storage: Storage) -> None:
        flow = make_flow()
        storage.add_flow(flow)
        storage.bind_flow(flow.id, "browser", T0)
        results = race(50, lambda i: storage.consume_flow(flow.id, "browser", T0))
        assert sum(r is not None for r in results) == 1

    def test_race_consume_verification_code(self, storage: Storage) -> None:
        code = make_code()
        storage.add_verification_code(code)
        results = race(50, lambda i: storage.consume_verification_code(code.code_hash, "acme_crm", T0))
        assert [r for r in results if r is not None] == [code]

    def test_race_acquire_lease(self, storage: Storage) -> None:
        results = race(50, lambda i: storage.acquire_lease("refresh:x", f"worker-{i}", 30, T0))
        assert results.count(True) == 1
        assert storage.lease_holder("refresh:x", T0) == f"worker-{results.index(True)}"

    def test_race_acquire_expired_lease(self, storage: Storage) -> None:
        storage.acquire_lease("refresh:x", "crashed", 1, T0 - 60 * SEC)
        results = race(50, lambda i: storage.acquire_lease("refresh:x", f"worker-{i}", 30, T0))
        assert results.count(True) == 1

    def test_race_acquire_lease_unless_backed_off(self, storage: Storage) -> None:
        storage.acquire_lease("refresh:x", "crashed", 1, T0 - 60 * SEC)
        results = race(
            50, lambda i: storage.acquire_lease("refresh:x", f"w-{i}", 30, T0, unless_backed_off="x")
        )
        assert results.count(True) == 1
        assert storage.lease_holder("refresh:x", T0) == f"w-{results.index(True)}"

    def test_race_compare_and_swap(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        record = storage.upsert_connection(make_record(client))
        results = race(
            50,
            lambda i: storage.update_connection(
                record.replace(access_token_enc=f"enc:access:{i}"), expected_version=1
            ),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        final = storage.get_connection("acme_crm", name="main")
        assert final == winners[0]
        assert final.version == 2

    def test_race_upsert_same_new_name(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        results = race(20, lambda i: storage.upsert_connection(make_record(client)))
        assert len({r.uuid for r in results}) == 1
        assert sorted(r.version for r in results) == list(range(1, 21))
        page = storage.list_connections("acme_crm")
        assert len(page.items) == 1
        assert page.items[0].uuid == results[0].uuid
        assert page.items[0].version == 20
