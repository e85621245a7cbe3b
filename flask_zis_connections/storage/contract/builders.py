"""Builders for the contract tests: valid domain values with every field filled.

Every time is an explicit value on whole milliseconds (the resolution every backend
keeps), so a test never sleeps to wait for an expiry; :func:`race` releases its
threads together so that they really contend.  Keyword arguments override any field.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ...domain import ConnectionRecord, Event, OAuthClient, PendingFlow, VerificationCode

T = TypeVar("T")

#: The clock of every contract test (a fixed, whole-millisecond moment).
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)


def new_id() -> str:
    return str(uuidlib.uuid4())


def make_client(integration: str = "acme_crm", name: str = "acme", **kw: Any) -> OAuthClient:
    values: dict[str, Any] = {
        "uuid": new_id(),
        "integration": integration,
        "name": name,
        "client_id": "cid",
        "client_secret_enc": "enc:secret",
        "auth_url": "https://{{subdomain}}.acme.test/oauth/authorize",
        "token_url": "https://{{subdomain}}.acme.test/oauth/token",
        "default_scopes": "read write",
        "authorize_params": {"prompt": "consent", "audience": "api"},
        "offline_access_params": {"access_type": "offline"},
        "issuer": "https://acme.test",
        "revocation_url": "https://acme.test/oauth/revoke",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(kw)
    return OAuthClient(**values)


def make_record(client: OAuthClient, name: str = "main", **kw: Any) -> ConnectionRecord:
    values: dict[str, Any] = {
        "uuid": new_id(),
        "integration": client.integration,
        "name": name,
        "oauth_client_uuid": client.uuid,
        "access_token_enc": f"enc:access:{name}",
        "refresh_token_enc": f"enc:refresh:{name}",
        "token_response_enc": f"enc:response:{name}",
        "token_expiry": T0 + timedelta(hours=1),
        "permission_scope": "read",
        "oauth_url_subdomain": "tenant",
        "created_by": "admin@example.test",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(kw)
    return ConnectionRecord(**values)


def make_credential(
    integration: str = "acme_crm", name: str = "key", type: str = "api_key", **kw: Any
) -> ConnectionRecord:
    """A credential connection (no OAuth client): ``api_key`` unless ``type`` says otherwise."""
    values: dict[str, Any] = {
        "uuid": new_id(),
        "integration": integration,
        "name": name,
        "oauth_client_uuid": None,
        "access_token_enc": f"enc:secret:{name}",
        "token_type": type,
        "created_by": "admin@example.test",
        "created_at": T0,
        "updated_at": T0,
        "type": type,
        "allowed_domain": "api.example.test",
        "username": "user" if type == "basic_auth" else None,
        "header_name": "X-Api-Key" if type == "api_key" else None,
    }
    values.update(kw)
    return ConnectionRecord(**values)


def make_flow(integration: str = "acme_crm", **kw: Any) -> PendingFlow:
    values: dict[str, Any] = {
        "id": new_id(),
        "integration": integration,
        "oauth_client_uuid": new_id(),
        "connection_name": "main",
        "origin_oauth_redirect_url": "https://app.example.test/done",
        "scopes": "read write",
        "redirect_uri": "https://host.example.test/api/services/zis/connections/oauth/callback",
        "oauth_url_subdomain": "tenant",
        "allow_offline_access": True,
        "code_verifier_enc": "enc:verifier",
        "created_by": "admin@example.test",
        "created_at": T0,
        "expires_at": T0 + 600 * SEC,
    }
    values.update(kw)
    return PendingFlow(**values)


def make_code(integration: str = "acme_crm", **kw: Any) -> VerificationCode:
    values: dict[str, Any] = {
        "code_hash": new_id(),
        "integration": integration,
        "connection_uuid": new_id(),
        "origin_oauth_redirect_url": "https://app.example.test/done",
        "raw_callback_params_enc": "enc:params",
        "expires_at": T0 + 600 * SEC,
        "created_at": T0,
    }
    values.update(kw)
    return VerificationCode(**values)


def make_event(integration: str = "acme_crm", kind: str = "connection.refreshed", **kw: Any) -> Event:
    values: dict[str, Any] = {
        "integration": integration,
        "kind": kind,
        "actor": "api-token:1234",
        "connection_name": "main",
        "connection_uuid": new_id(),
        "oauth_client_uuid": new_id(),
        "detail": {"reason": "invalid_grant", "revoked": False, "fields": ["token_url"]},
        "created_at": T0,
    }
    values.update(kw)
    return Event(**values)


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0..n-1)`` in ``n`` threads released together; re-raise any error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results
