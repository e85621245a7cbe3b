"""The contract for maintenance: key rotation over every ciphertext column and purging
what has expired."""

from __future__ import annotations

from ..base import Storage
from .builders import SEC, T0, make_client, make_code, make_flow, make_record


class MaintenanceContract:
    """Key rotation and purging."""

    def test_reencrypt_rotates_every_ciphertext_column(self, storage: Storage) -> None:
        client = storage.add_client(make_client())
        bare_client = storage.add_client(make_client(name="public", client_secret_enc=None))
        full = storage.upsert_connection(make_record(client, "full"))
        partial = storage.upsert_connection(
            make_record(bare_client, "partial", refresh_token_enc=None, token_response_enc=None)
        )
        flow = make_flow()
        storage.add_flow(flow)
        storage.add_flow(make_flow(code_verifier_enc=None))
        code = make_code()
        storage.add_verification_code(code)
        storage.add_verification_code(make_code(raw_callback_params_enc=None))

        def rotate(value: str) -> str:
            assert value.startswith("enc:")
            return "new" + value

        # client, 2 connections, 1 flow, 1 code carry ciphertext.
        assert storage.reencrypt(rotate) == 5
        got = storage.get_client("acme_crm", uuid=client.uuid)
        assert got is not None and got.client_secret_enc == "newenc:secret"
        got_bare = storage.get_client("acme_crm", uuid=bare_client.uuid)
        assert got_bare is not None and got_bare.client_secret_enc is None
        assert storage.get_connection("acme_crm", uuid=full.uuid) == full.replace(
            access_token_enc="newenc:access:full",
            refresh_token_enc="newenc:refresh:full",
            token_response_enc="newenc:response:full",
        )
        assert storage.get_connection("acme_crm", uuid=partial.uuid) == partial.replace(
            access_token_enc="newenc:access:partial"
        )
        assert storage.get_flow(flow.id).code_verifier_enc == "newenc:verifier"  # type: ignore[union-attr]
        taken = storage.consume_verification_code(code.code_hash, "acme_crm", T0)
        assert taken is not None and taken.raw_callback_params_enc == "newenc:params"
        # Rotating to the same values changes nothing.
        assert storage.reencrypt(lambda value: value) == 0

    def test_purge_expired(self, storage: Storage) -> None:
        live_flow, dead_flow = make_flow(expires_at=T0 + SEC), make_flow(expires_at=T0)
        live_code, dead_code = make_code(expires_at=T0 + SEC), make_code(expires_at=T0 - SEC)
        for flow in (live_flow, dead_flow):
            storage.add_flow(flow)
        for code in (live_code, dead_code):
            storage.add_verification_code(code)
        storage.acquire_lease("live", "w", 10, T0)
        storage.acquire_lease("dead", "w", 10, T0 - 10 * SEC)

        assert storage.purge_expired(T0) == 3
        assert storage.get_flow(dead_flow.id) is None
        assert storage.get_flow(live_flow.id) == live_flow
        assert storage.consume_verification_code(live_code.code_hash, "acme_crm", T0) == live_code
        assert storage.lease_holder("live", T0) == "w"
        assert storage.purge_expired(T0) == 0
        # A purged lease can be taken again.
        assert storage.acquire_lease("dead", "v", 10, T0) is True
