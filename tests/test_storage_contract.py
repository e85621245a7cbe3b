"""The storage contract: one suite, run against every backend.

Each test takes the ``storage`` fixture, parametrized over the in-memory backend, a
SQLite file and PostgreSQL, so a behaviour that holds for one backend is proven
for all of them (STYLE.md, habit 2).  Times are explicit ``now`` values on whole
milliseconds (the resolution every backend keeps); nothing sleeps to wait for an
expiry.  The races start their threads (or processes) together with a barrier so
that they really contend.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from flask_zis_connections.errors import (
    Conflict,
    InvalidValue,
    OAuthClientNotFound,
    StorageUnavailable,
)
from flask_zis_connections.models import (
    ApiToken,
    ConnectionRecord,
    Lease,
    OAuthClient,
    PendingFlow,
    VerificationCode,
)
from flask_zis_connections.storage.base import Storage
from flask_zis_connections.storage.memory import MemoryStorage
from flask_zis_connections.storage.schema import metadata
from flask_zis_connections.storage.sqlalchemy import SQLAlchemyStorage

T = TypeVar("T")

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
PG_SKIP = "PostgreSQL tests skipped: set ZIS_TEST_POSTGRES_URL (bash .ci/services.sh starts a server)"


# -- fixtures ---------------------------------------------------------------------------
def _database_url(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A URL with fresh, empty tables for ``kind`` (``sqlite`` or ``postgres``)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'zis.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Storage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    backend = SQLAlchemyStorage(_database_url(request.param, request, tmp_path))
    try:
        backend.create_tables()
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A URL with the tables created, for tests that open their own connections."""
    url = _database_url(request.param, request, tmp_path)
    backend = SQLAlchemyStorage(url)
    try:
        backend.create_tables()
    finally:
        backend.close()
    return url


# -- factories --------------------------------------------------------------------------
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


# -- life cycle -------------------------------------------------------------------------
def test_lifecycle_hooks(storage: Storage) -> None:
    storage.create_tables()  # idempotent
    storage.healthcheck()
    assert storage.list_clients() == []


# -- OAuth clients ----------------------------------------------------------------------
def test_add_and_get_client(storage: Storage) -> None:
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


def test_client_defaults_round_trip(storage: Storage) -> None:
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


def test_returned_client_mappings_are_not_shared(storage: Storage) -> None:
    client = storage.add_client(make_client())
    fetched = storage.get_client("acme_crm", uuid=client.uuid)
    assert fetched is not None
    fetched.authorize_params["prompt"] = "mutated"  # type: ignore[index]
    again = storage.get_client("acme_crm", uuid=client.uuid)
    assert again is not None
    assert again.authorize_params["prompt"] == "consent"


def test_duplicate_client_name_conflicts(storage: Storage) -> None:
    storage.add_client(make_client())
    with pytest.raises(Conflict) as info:
        storage.add_client(make_client())
    assert "'acme'" in info.value.message
    assert "'acme_crm'" in info.value.message
    # The same name in another integration is fine.
    storage.add_client(make_client(integration="other_app"))
    assert len(storage.list_clients()) == 2


def test_update_client(storage: Storage) -> None:
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


def test_update_client_rename_onto_existing_name_conflicts(storage: Storage) -> None:
    storage.add_client(make_client(name="first"))
    second = storage.add_client(make_client(name="second"))
    with pytest.raises(Conflict) as info:
        storage.update_client(second.replace(name="first"))
    assert "'first'" in info.value.message
    assert storage.get_client("acme_crm", uuid=second.uuid) == second


def test_update_missing_client(storage: Storage) -> None:
    with pytest.raises(OAuthClientNotFound):
        storage.update_client(make_client())
    client = storage.add_client(make_client())
    with pytest.raises(OAuthClientNotFound):
        storage.update_client(client.replace(integration="other_app"))


def test_list_clients(storage: Storage) -> None:
    a = storage.add_client(make_client(name="b_first"))
    b = storage.add_client(make_client(integration="other_app", name="x"))
    c = storage.add_client(make_client(name="a_second"))
    assert storage.list_clients() == [a, b, c]
    assert storage.list_clients("acme_crm") == [a, c]
    assert storage.list_clients("nobody") == []


def test_delete_client_cascades_to_its_connections(storage: Storage) -> None:
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


# -- connections ------------------------------------------------------------------------
def test_get_connection_by_name_and_uuid(storage: Storage) -> None:
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


def test_connection_optional_fields_round_trip(storage: Storage) -> None:
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


def test_datetimes_come_back_aware_utc_at_millisecond_precision(storage: Storage) -> None:
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


def test_upsert_replaces_tokens_and_keeps_identity(storage: Storage) -> None:
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


def test_upsert_for_unknown_client_is_refused(storage: Storage) -> None:
    ghost = make_client()
    with pytest.raises(OAuthClientNotFound):
        storage.upsert_connection(make_record(ghost))
    assert storage.get_connection("acme_crm", name="main") is None


def test_update_connection_compare_and_swap(storage: Storage) -> None:
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


def test_update_connection_to_unknown_client_is_refused(storage: Storage) -> None:
    client = storage.add_client(make_client())
    record = storage.upsert_connection(make_record(client))
    with pytest.raises(OAuthClientNotFound):
        storage.update_connection(record.replace(oauth_client_uuid=new_id()), expected_version=1)
    assert storage.get_connection("acme_crm", uuid=record.uuid) == record


def test_delete_connection(storage: Storage) -> None:
    client = storage.add_client(make_client())
    record = storage.upsert_connection(make_record(client))
    assert storage.delete_connection("other_app", record.uuid) is False
    assert storage.delete_connection("acme_crm", record.uuid) is True
    assert storage.get_connection("acme_crm", uuid=record.uuid) is None
    assert storage.delete_connection("acme_crm", record.uuid) is False
    # The name can be used again, by a new connection.
    again = storage.upsert_connection(make_record(client))
    assert again.uuid != record.uuid and again.version == 1


def test_list_connections_paginates_stably(storage: Storage) -> None:
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


def test_list_connections_rejects_bad_input(storage: Storage) -> None:
    for cursor in ("garbage", "-5"):
        with pytest.raises(InvalidValue) as info:
            storage.list_connections("acme_crm", cursor=cursor)
        assert info.value.field == "cursor"
    with pytest.raises(InvalidValue):
        storage.list_connections("acme_crm", limit=0)


def test_connections_expiring_before(storage: Storage) -> None:
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


# -- flows ------------------------------------------------------------------------------
def test_flow_round_trip(storage: Storage) -> None:
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


def test_flow_binds_once(storage: Storage) -> None:
    flow = make_flow()
    storage.add_flow(flow)
    bound = storage.bind_flow(flow.id, "browser-a", T0)
    assert bound == replace(flow, status="redirected", browser_binding_hash="browser-a")
    assert storage.get_flow(flow.id) == bound
    assert storage.bind_flow(flow.id, "browser-b", T0) is None
    assert storage.bind_flow(new_id(), "browser-a", T0) is None
    assert storage.get_flow(flow.id) == bound


def test_flow_consume_needs_binding_and_matching_browser(storage: Storage) -> None:
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


def test_expired_flow_cannot_bind_or_consume(storage: Storage) -> None:
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


# -- verification codes -----------------------------------------------------------------
def test_verification_code_is_single_use(storage: Storage) -> None:
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


def test_verification_code_of_other_integration_stays_usable(storage: Storage) -> None:
    code = make_code()
    storage.add_verification_code(code)
    assert storage.consume_verification_code(code.code_hash, "other_app", T0) is None
    assert storage.consume_verification_code(code.code_hash, "acme_crm", T0) == code


def test_expired_verification_code(storage: Storage) -> None:
    code = make_code(expires_at=T0 + 600 * SEC)
    storage.add_verification_code(code)
    assert storage.consume_verification_code(code.code_hash, "acme_crm", T0 + 600 * SEC) is None
    assert storage.consume_verification_code(code.code_hash, "acme_crm", T0 + 599 * SEC) == code


# -- API tokens -------------------------------------------------------------------------
def test_api_tokens(storage: Storage) -> None:
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


# -- leases -----------------------------------------------------------------------------
def test_lease_acquire_release_and_expiry(storage: Storage) -> None:
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


def test_lease_renewal_only_by_its_unexpired_owner(storage: Storage) -> None:
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


def test_update_connection_conditional_on_the_lease(storage: Storage) -> None:
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


def test_refresh_backoff_grows_exponentially_to_the_cap(storage: Storage) -> None:
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


def test_refresh_backoff_goes_with_its_connection(storage: Storage) -> None:
    client = storage.add_client(make_client())
    one = storage.upsert_connection(make_record(client, "one"))
    two = storage.upsert_connection(make_record(client, "two"))
    for rec in (one, two):
        storage.record_refresh_failure(rec.uuid, "provider_error", T0, base=1, cap=60)
    storage.delete_connection("acme_crm", one.uuid)
    assert storage.get_refresh_backoff(one.uuid) is None
    storage.delete_client("acme_crm", client.uuid)
    assert storage.get_refresh_backoff(two.uuid) is None


def test_update_client_with_expected_version(storage: Storage) -> None:
    client = storage.add_client(make_client())
    assert client.version == 1
    first = storage.update_client(client.replace(default_scopes="a"), expected_version=1)
    assert first.version == 2 and first.default_scopes == "a"
    with pytest.raises(Conflict, match="changed by someone else"):
        storage.update_client(client.replace(default_scopes="b"), expected_version=1)
    assert storage.get_client("acme_crm", uuid=client.uuid) == first
    # Without an expected version the write goes through (trusted callers, config).
    assert storage.update_client(client.replace(default_scopes="c")).version == 3


def test_race_update_client_with_expected_version(storage: Storage) -> None:
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


# -- maintenance ------------------------------------------------------------------------
def test_reencrypt_rotates_every_ciphertext_column(storage: Storage) -> None:
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


def test_purge_expired(storage: Storage) -> None:
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


# -- races ------------------------------------------------------------------------------
def test_race_consume_flow(storage: Storage) -> None:
    flow = make_flow()
    storage.add_flow(flow)
    storage.bind_flow(flow.id, "browser", T0)
    results = race(50, lambda i: storage.consume_flow(flow.id, "browser", T0))
    assert sum(r is not None for r in results) == 1


def test_race_consume_verification_code(storage: Storage) -> None:
    code = make_code()
    storage.add_verification_code(code)
    results = race(50, lambda i: storage.consume_verification_code(code.code_hash, "acme_crm", T0))
    assert [r for r in results if r is not None] == [code]


def test_race_acquire_lease(storage: Storage) -> None:
    results = race(50, lambda i: storage.acquire_lease("refresh:x", f"worker-{i}", 30, T0))
    assert results.count(True) == 1
    assert storage.lease_holder("refresh:x", T0) == f"worker-{results.index(True)}"


def test_race_acquire_expired_lease(storage: Storage) -> None:
    storage.acquire_lease("refresh:x", "crashed", 1, T0 - 60 * SEC)
    results = race(50, lambda i: storage.acquire_lease("refresh:x", f"worker-{i}", 30, T0))
    assert results.count(True) == 1


def test_race_compare_and_swap(storage: Storage) -> None:
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


def test_race_upsert_same_new_name(storage: Storage) -> None:
    client = storage.add_client(make_client())
    results = race(20, lambda i: storage.upsert_connection(make_record(client)))
    assert len({r.uuid for r in results}) == 1
    assert sorted(r.version for r in results) == list(range(1, 21))
    page = storage.list_connections("acme_crm")
    assert len(page.items) == 1
    assert page.items[0].uuid == results[0].uuid
    assert page.items[0].version == 20


def _lease_worker(
    url: str, owner: str, attempts: int, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    storage = SQLAlchemyStorage(url)
    try:
        storage.healthcheck()  # connect before the start signal
        barrier.wait(timeout=30)
        wins = sum(storage.acquire_lease("refresh:shared", owner, 60, T0) for _ in range(attempts))
        results.put((owner, wins))
    finally:
        storage.close()


@pytest.mark.slow
def test_race_acquire_lease_across_processes(database_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_lease_worker, args=(database_url, f"proc-{i}", 25, barrier, results))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        outcome = dict(results.get(timeout=60) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
        results.close()
        results.join_thread()
    assert all(proc.exitcode == 0 for proc in procs)
    assert sorted(outcome.values()) == [0, 0, 0, 1]
    winner = next(owner for owner, wins in outcome.items() if wins)
    storage = SQLAlchemyStorage(database_url)
    try:
        assert storage.lease_holder("refresh:shared", T0) == winner
    finally:
        storage.close()


# -- SQL backend specifics --------------------------------------------------------------
def test_sql_storage_takes_exactly_one_of_url_and_engine() -> None:
    with pytest.raises(TypeError):
        SQLAlchemyStorage()
    engine = sa.create_engine("sqlite://")
    try:
        with pytest.raises(TypeError):
            SQLAlchemyStorage("sqlite://", engine=engine)
    finally:
        engine.dispose()


def test_sqlite_connections_are_configured(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    storage = SQLAlchemyStorage(engine=engine)
    try:
        storage.create_tables()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        # The host's own use of the engine still gets working transactions.
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE host_things (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO host_things VALUES (1)")
        with pytest.raises(RuntimeError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO host_things VALUES (2)")
            raise RuntimeError("roll back")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM host_things").scalar() == 1
    finally:
        storage.close()


def test_unreachable_database_raises_storage_unavailable() -> None:
    storage = SQLAlchemyStorage("postgresql+psycopg://zis:hunter2secret@127.0.0.1:1/nowhere")
    try:
        for call in (
            storage.healthcheck,
            lambda: storage.get_connection("acme_crm", name="main"),
            lambda: storage.acquire_lease("k", "o", 1, T0),
        ):
            with pytest.raises(StorageUnavailable) as info:
                call()
            assert "ZIS_DATABASE_URI" in info.value.message
            assert "hunter2secret" not in info.value.message
            assert info.value.status == 503
        assert "hunter2secret" not in repr(storage)
    finally:
        storage.close()


def test_missing_sqlite_tables_raise_storage_unavailable(tmp_path: Any) -> None:
    storage = SQLAlchemyStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(StorageUnavailable):
            storage.get_connection("acme_crm", name="main")
    finally:
        storage.close()
