"""The contract for the single-use values: pending flows (bound to one browser, consumed
once), verification codes (taken once, by their own integration) and API tokens."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from ...domain import ApiToken
from ...errors import Conflict
from ..base import Storage
from .builders import SEC, T0, make_code, make_flow, new_id


class FlowContract:
    """Flows, verification codes and API tokens."""

    def test_flow_round_trip(self, storage: Storage) -> None:
        flow = make_flow()
        storage.add_flow(flow)
        assert storage.get_flow(flow.id) == flow
        assert storage.get_flow(new_id()) is None
        with pytest.raises(Conflict):
            storage.add_flow(flow)
        bare = make_flow(
            oauth_url_subdomain=None, code_verifier_enc=None, created_by=None, allow_offline_access=False
        )
        storage.add_flow(bare)
        assert storage.get_flow(bare.id) == bare

    def test_flow_binds_once(self, storage: Storage) -> None:
        flow = make_flow()
        storage.add_flow(flow)
        bound = storage.bind_flow(flow.id, "browser-a", T0)
        assert bound == replace(flow, status="redirected", browser_binding_hash="browser-a")
        assert storage.get_flow(flow.id) == bound
        assert storage.bind_flow(flow.id, "browser-b", T0) is None
        assert storage.bind_flow(new_id(), "browser-a", T0) is None
        assert storage.get_flow(flow.id) == bound

    def test_flow_consume_needs_binding_and_matching_browser(self, storage: Storage) -> None:
        flow = make_flow()
        storage.add_flow(flow)
        assert storage.consume_flow(flow.id, "browser-a", T0) is None  # not yet bound
        storage.bind_flow(flow.id, "browser-a", T0)
        # A wrong browser does not burn the flow.
        assert storage.consume_flow(flow.id, "browser-b", T0) is None
        assert storage.get_flow(flow.id).status == "redirected"  # type: ignore[union-attr]
        consumed = storage.consume_flow(flow.id, "browser-a", T0 + SEC)
        assert consumed is not None
        assert consumed.status == "consumed"
        assert consumed.code_verifier_enc == "enc:verifier"
        assert consumed.browser_binding_hash == "browser-a"
        assert storage.consume_flow(flow.id, "browser-a", T0 + SEC) is None
        assert storage.bind_flow(flow.id, "browser-a", T0 + SEC) is None
        assert storage.consume_flow(new_id(), "browser-a", T0) is None

    def test_expired_flow_cannot_bind_or_consume(self, storage: Storage) -> None:
        expires = T0 + 600 * SEC
        unbound = make_flow(expires_at=expires)
        storage.add_flow(unbound)
        assert storage.bind_flow(unbound.id, "b", expires) is None
        assert storage.get_flow(unbound.id).status == "pending"  # type: ignore[union-attr]

        bound = make_flow(expires_at=expires)
        storage.add_flow(bound)
        assert storage.bind_flow(bound.id, "b", expires - timedelta(milliseconds=1)) is not None
        assert storage.consume_flow(bound.id, "b", expires) is None
        assert storage.consume_flow(bound.id, "b", expires + 60 * SEC) is None
        assert storage.consume_flow(bound.id, "b", expires - timedelta(milliseconds=1)) is not None

    def test_verification_code_is_single_use(self, storage: Storage) -> None:
        code = make_code()
        storage.add_verification_code(code)
        with pytest.raises(Conflict):
            storage.add_verification_code(code)
        assert storage.consume_verification_code(code.code_hash, "acme_crm", T0) == code
        assert storage.consume_verification_code(code.code_hash, "acme_crm", T0) is None
        assert storage.consume_verification_code(new_id(), "acme_crm", T0) is None
        bare = make_code(raw_callback_params_enc=None)
        storage.add_verification_code(bare)
        assert storage.consume_verification_code(bare.code_hash, "acme_crm", T0) == bare

    def test_verification_code_of_other_integration_stays_usable(self, storage: Storage) -> None:
        code = make_code()
        storage.add_verification_code(code)
        assert storage.consume_verification_code(code.code_hash, "other_app", T0) is None
        assert storage.consume_verification_code(code.code_hash, "acme_crm", T0) == code

    def test_expired_verification_code(self, storage: Storage) -> None:
        code = make_code(expires_at=T0 + 600 * SEC)
        storage.add_verification_code(code)
        assert storage.consume_verification_code(code.code_hash, "acme_crm", T0 + 600 * SEC) is None
        assert storage.consume_verification_code(code.code_hash, "acme_crm", T0 + 599 * SEC) == code

    def test_api_tokens(self, storage: Storage) -> None:
        a = ApiToken(id="tok-a", token_hash="hash-a", integration="acme_crm", created_at=T0)
        b = ApiToken(id="tok-b", token_hash="hash-b", integration="other_app", created_at=T0 + SEC)
        c = ApiToken(id="tok-c", token_hash="hash-c", integration="acme_crm", created_at=T0 + 2 * SEC)
        for token in (a, b, c):
            storage.add_api_token(token)
        with pytest.raises(Conflict):
            storage.add_api_token(a)
        assert storage.get_api_token("hash-a") == a
        assert storage.get_api_token("tok-a") is None  # looked up by hash only
        assert storage.list_api_tokens() == [a, b, c]
        assert storage.list_api_tokens("acme_crm") == [a, c]

        assert storage.revoke_api_token("tok-a") is True  # by id
        assert storage.get_api_token("hash-a") is None
        assert storage.revoke_api_token("hash-c") is True  # by hash
        assert storage.get_api_token("hash-c") is None
        assert storage.revoke_api_token("nothing") is False
        assert storage.list_api_tokens() == [b]
        assert storage.list_api_tokens("acme_crm") == []
