"""A thread-safe in-memory backend.

It exists for tests, demos and single-process development servers: it keeps the
frozen dataclasses of :mod:`~flask_zis_connections.models` in plain dicts and does
every operation under one :class:`threading.RLock`, which is what makes the atomic
steps of the :class:`~.base.Storage` contract (single-use flows and codes, leases,
compare-and-swap writes) hold across threads.  Nothing survives the process and
nothing is shared with other processes; use :class:`~.sqlalchemy.SQLAlchemyStorage`
for that.

To behave exactly like the SQL backend, which stores times as epoch milliseconds,
every datetime is normalized on the way in to aware UTC truncated to the
millisecond, and the same uniqueness and foreign-key rules are enforced (the
contract suite runs against both).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ..errors import Conflict, InvalidValue, OAuthClientNotFound
from ..models import (
    ApiToken,
    ConnectionRecord,
    Lease,
    OAuthClient,
    Page,
    PendingFlow,
    RefreshBackoff,
    VerificationCode,
    utcnow,
)
from .base import Storage, backoff_delay, client_conflict, parse_cursor, stale_client

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _ms(moment: datetime) -> int:
    """Epoch milliseconds, the resolution every backend keeps (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _norm(moment: datetime) -> datetime:
    """``moment`` as the SQL backend would hand it back: aware UTC, whole milliseconds."""
    return _EPOCH + _ms(moment) * _MS


def _norm_opt(moment: datetime | None) -> datetime | None:
    return None if moment is None else _norm(moment)


def _copy_client(client: OAuthClient) -> OAuthClient:
    """Copy the mutable mappings so no caller shares a dict with the store."""
    return client.replace(
        authorize_params=dict(client.authorize_params),
        offline_access_params=dict(client.offline_access_params),
    )




class MemoryStorage(Storage):
    """Keeps everything in dicts guarded by one re-entrant lock.

    One lock rather than finer ones: every operation is a few dict lookups, so
    contention is negligible and a single lock makes every multi-step operation
    (cascading deletes, upserts, compare-and-swap) trivially atomic.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[str, OAuthClient] = {}
        self._client_names: dict[tuple[str, str], str] = {}
        self._connections: dict[str, ConnectionRecord] = {}
        self._connection_names: dict[tuple[str, str], str] = {}
        #: Insertion sequence number per connection uuid: the pagination key.
        self._connection_seq: dict[str, int] = {}
        self._next_seq = 1
        self._flows: dict[str, PendingFlow] = {}
        self._codes: dict[str, VerificationCode] = {}
        self._tokens: dict[str, ApiToken] = {}
        self._token_hashes: dict[str, str] = {}
        #: key -> (owner, expiry in epoch milliseconds)
        self._leases: dict[str, tuple[str, int]] = {}
        self._backoff: dict[str, RefreshBackoff] = {}

    # -- OAuth clients ---------------------------------------------------------
    def add_client(self, client: OAuthClient) -> OAuthClient:
        stored = _copy_client(
            client.replace(
                created_at=_norm(client.created_at), updated_at=_norm(client.updated_at), version=1
            )
        )
        with self._lock:
            key = (client.integration, client.name)
            if key in self._client_names or client.uuid in self._clients:
                raise client_conflict(client)
            self._clients[client.uuid] = stored
            self._client_names[key] = client.uuid
        return _copy_client(stored)

    def update_client(self, client: OAuthClient, *, expected_version: int | None = None) -> OAuthClient:
        with self._lock:
            old = self._clients.get(client.uuid)
            if old is None or old.integration != client.integration:
                raise OAuthClientNotFound(client.integration, client.uuid)
            if expected_version is not None and old.version != expected_version:
                raise stale_client(client)
            key = (client.integration, client.name)
            if self._client_names.get(key, client.uuid) != client.uuid:
                raise client_conflict(client)
            stored = _copy_client(
                client.replace(
                    created_by=old.created_by, created_at=old.created_at,
                    updated_at=_norm(client.updated_at), version=old.version + 1,
                )
            )
            del self._client_names[(old.integration, old.name)]
            self._client_names[key] = client.uuid
            self._clients[client.uuid] = stored
        return _copy_client(stored)

    def get_client(
        self, integration: str, *, uuid: str | None = None, name: str | None = None
    ) -> OAuthClient | None:
        with self._lock:
            if uuid is not None:
                client = self._clients.get(uuid)
            elif name is not None:
                found = self._client_names.get((integration, name))
                client = None if found is None else self._clients[found]
            else:
                raise TypeError("get_client() needs uuid= or name=")
        if client is None or client.integration != integration:
            return None
        if name is not None and client.name != name:
            return None
        return _copy_client(client)

    def list_clients(self, integration: str | None = None) -> list[OAuthClient]:
        with self._lock:
            clients = list(self._clients.values())
        return [_copy_client(c) for c in clients if integration is None or c.integration == integration]

    def delete_client(self, integration: str, uuid: str) -> bool:
        with self._lock:
            client = self._clients.get(uuid)
            if client is None or client.integration != integration:
                return False
            for record in list(self._connections.values()):
                if record.oauth_client_uuid == uuid:
                    self._drop_connection(record)
            del self._clients[uuid]
            del self._client_names[(client.integration, client.name)]
            return True

    # -- connections -----------------------------------------------------------
    def get_connection(
        self, integration: str, *, name: str | None = None, uuid: str | None = None
    ) -> ConnectionRecord | None:
        with self._lock:
            if uuid is not None:
                record = self._connections.get(uuid)
            elif name is not None:
                found = self._connection_names.get((integration, name))
                record = None if found is None else self._connections[found]
            else:
                raise TypeError("get_connection() needs name= or uuid=")
        if record is None or record.integration != integration:
            return None
        if name is not None and record.name != name:
            return None
        return record

    def upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        with self._lock:
            self._require_client(record)
            existing_uuid = self._connection_names.get((record.integration, record.name))
            if existing_uuid is not None:
                old = self._connections[existing_uuid]
                stored = self._normalized(
                    record.replace(
                        uuid=old.uuid,
                        created_at=old.created_at,
                        version=old.version + 1,
                        needs_reauth=False,
                    )
                )
            else:
                if record.uuid in self._connections:
                    raise Conflict(
                        f"A connection with uuid {record.uuid!r} already exists under another "
                        "name. Generate a new uuid for a new connection."
                    )
                stored = self._normalized(record.replace(needs_reauth=False))
                self._connection_names[(record.integration, record.name)] = record.uuid
                self._connection_seq[record.uuid] = self._next_seq
                self._next_seq += 1
            self._connections[stored.uuid] = stored
            return stored

    def update_connection(
        self, record: ConnectionRecord, *, expected_version: int,
        lease: Lease | None = None, now: datetime | None = None,
    ) -> ConnectionRecord | None:
        with self._lock:
            old = self._connections.get(record.uuid)
            if old is None or old.integration != record.integration or old.version != expected_version:
                return None
            if lease is not None:
                held = self._leases.get(lease.key)
                if held is None or held[0] != lease.owner or held[1] <= _ms(now or utcnow()):
                    return None
            self._require_client(record)
            stored = self._normalized(
                record.replace(name=old.name, created_at=old.created_at, version=expected_version + 1)
            )
            self._connections[stored.uuid] = stored
            return stored

    def delete_connection(self, integration: str, uuid: str) -> bool:
        with self._lock:
            record = self._connections.get(uuid)
            if record is None or record.integration != integration:
                return False
            self._drop_connection(record)
            return True

    def list_connections(self, integration: str, *, limit: int = 100, cursor: str | None = None) -> Page:
        if limit < 1:
            raise InvalidValue("limit", "must be a positive integer")
        after = parse_cursor(cursor)
        items: list[ConnectionRecord] = []
        last_seq = 0
        with self._lock:
            # Dict order is insertion order, which is sequence order.
            for uuid, record in self._connections.items():
                seq = self._connection_seq[uuid]
                if seq <= after or record.integration != integration:
                    continue
                if len(items) == limit:
                    return Page(items=items, next_cursor=str(last_seq))
                items.append(record)
                last_seq = seq
        return Page(items=items, next_cursor=None)

    def connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]:
        limit = _norm(moment)
        with self._lock:
            records = list(self._connections.values())
        due = [
            r for r in records if r.token_expiry is not None and r.token_expiry < limit and not r.needs_reauth
        ]
        due.sort(key=lambda r: r.token_expiry or limit)
        return due

    # -- flows -----------------------------------------------------------------
    def add_flow(self, flow: PendingFlow) -> None:
        stored = replace(flow, created_at=_norm(flow.created_at), expires_at=_norm(flow.expires_at))
        with self._lock:
            if flow.id in self._flows:
                raise Conflict(f"A flow with id {flow.id!r} already exists.")
            self._flows[flow.id] = stored

    def get_flow(self, flow_id: str) -> PendingFlow | None:
        with self._lock:
            return self._flows.get(flow_id)

    def bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        with self._lock:
            flow = self._flows.get(flow_id)
            if flow is None or flow.status != "pending" or _ms(flow.expires_at) <= _ms(now):
                return None
            bound = replace(flow, status="redirected", browser_binding_hash=browser_binding_hash)
            self._flows[flow_id] = bound
            return bound

    def consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        with self._lock:
            flow = self._flows.get(flow_id)
            if (
                flow is None
                or flow.status != "redirected"
                or flow.browser_binding_hash != browser_binding_hash
                or _ms(flow.expires_at) <= _ms(now)
            ):
                return None
            consumed = replace(flow, status="consumed")
            self._flows[flow_id] = consumed
            return consumed

    # -- verification codes ----------------------------------------------------
    def add_verification_code(self, code: VerificationCode) -> None:
        stored = replace(code, created_at=_norm(code.created_at), expires_at=_norm(code.expires_at))
        with self._lock:
            if code.code_hash in self._codes:
                raise Conflict("That verification code already exists; generate a new one.")
            self._codes[code.code_hash] = stored

    def consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None:
        with self._lock:
            code = self._codes.get(code_hash)
            if code is None or code.integration != integration or _ms(code.expires_at) <= _ms(now):
                return None
            del self._codes[code_hash]
            return code

    # -- API tokens --------------------------------------------------------------
    def add_api_token(self, token: ApiToken) -> None:
        stored = replace(token, created_at=_norm(token.created_at))
        with self._lock:
            if token.id in self._tokens or token.token_hash in self._token_hashes:
                raise Conflict("That API token already exists; issue a new one.")
            self._tokens[token.id] = stored
            self._token_hashes[token.token_hash] = token.id

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        with self._lock:
            token_id = self._token_hashes.get(token_hash)
            token = None if token_id is None else self._tokens[token_id]
        if token is None or token.revoked:
            return None
        return token

    def revoke_api_token(self, token_id_or_hash: str) -> bool:
        with self._lock:
            # Like the SQL backend's ``WHERE id = :x OR token_hash = :x``.
            ids = [token_id_or_hash, self._token_hashes.get(token_id_or_hash)]
            matched = [self._tokens[i] for i in ids if i is not None and i in self._tokens]
            for token in matched:
                self._tokens[token.id] = replace(token, revoked=True)
            return bool(matched)

    def list_api_tokens(self, integration: str | None = None) -> list[ApiToken]:
        with self._lock:
            tokens = list(self._tokens.values())
        live = [t for t in tokens if not t.revoked and (integration is None or t.integration == integration)]
        live.sort(key=lambda t: (t.created_at, t.id))
        return live

    # -- refresh lease -----------------------------------------------------------
    def acquire_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        now_ms = _ms(now)
        expires_ms = _ms(now + timedelta(seconds=ttl))
        with self._lock:
            held = self._leases.get(key)
            if held is not None and held[1] > now_ms:
                return False
            self._leases[key] = (owner, expires_ms)
            return True

    def renew_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        with self._lock:
            held = self._leases.get(key)
            if held is None or held[0] != owner or held[1] <= _ms(now):
                return False
            self._leases[key] = (owner, _ms(now + timedelta(seconds=ttl)))
            return True

    # -- refresh back-off ----------------------------------------------------------
    def record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, *, base: float, cap: float
    ) -> RefreshBackoff:
        with self._lock:
            old = self._backoff.get(connection_uuid)
            failures = 1 if old is None else old.failures + 1
            now = _norm(now)
            stored = RefreshBackoff(
                connection_uuid=connection_uuid, failures=failures, reason=reason[:64],
                failed_at=now, retry_at=_norm(now + backoff_delay(failures, base=base, cap=cap)),
            )
            self._backoff[connection_uuid] = stored
            return stored

    def get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None:
        with self._lock:
            return self._backoff.get(connection_uuid)

    def clear_refresh_backoff(self, connection_uuid: str) -> None:
        with self._lock:
            self._backoff.pop(connection_uuid, None)

    def release_lease(self, key: str, owner: str) -> None:
        with self._lock:
            held = self._leases.get(key)
            if held is not None and held[0] == owner:
                del self._leases[key]

    def lease_holder(self, key: str, now: datetime) -> str | None:
        with self._lock:
            held = self._leases.get(key)
        if held is None or held[1] <= _ms(now):
            return None
        return held[0]

    # -- maintenance -------------------------------------------------------------
    def reencrypt(self, rotate: Callable[[str], str]) -> int:
        def new(value: str | None) -> str | None:
            return None if value is None else rotate(value)

        changed = 0
        with self._lock:
            for uuid, client in list(self._clients.items()):
                secret = new(client.client_secret_enc)
                if secret != client.client_secret_enc:
                    self._clients[uuid] = client.replace(client_secret_enc=secret)
                    changed += 1
            for uuid, record in list(self._connections.items()):
                access = rotate(record.access_token_enc)
                refresh = new(record.refresh_token_enc)
                response = new(record.token_response_enc)
                if (access, refresh, response) != (
                    record.access_token_enc,
                    record.refresh_token_enc,
                    record.token_response_enc,
                ):
                    self._connections[uuid] = record.replace(
                        access_token_enc=access,
                        refresh_token_enc=refresh,
                        token_response_enc=response,
                    )
                    changed += 1
            for flow_id, flow in list(self._flows.items()):
                verifier = new(flow.code_verifier_enc)
                if verifier != flow.code_verifier_enc:
                    self._flows[flow_id] = replace(flow, code_verifier_enc=verifier)
                    changed += 1
            for code_hash, code in list(self._codes.items()):
                params = new(code.raw_callback_params_enc)
                if params != code.raw_callback_params_enc:
                    self._codes[code_hash] = replace(code, raw_callback_params_enc=params)
                    changed += 1
        return changed

    def purge_expired(self, now: datetime) -> int:
        now_ms = _ms(now)
        with self._lock:
            flows = [k for k, f in self._flows.items() if _ms(f.expires_at) <= now_ms]
            codes = [k for k, c in self._codes.items() if _ms(c.expires_at) <= now_ms]
            leases = [k for k, (_, expires) in self._leases.items() if expires <= now_ms]
            for flow_id in flows:
                del self._flows[flow_id]
            for code_hash in codes:
                del self._codes[code_hash]
            for key in leases:
                del self._leases[key]
        return len(flows) + len(codes) + len(leases)

    # -- helpers -------------------------------------------------------------------
    def _require_client(self, record: ConnectionRecord) -> None:
        """The SQL backend's foreign key, enforced by hand."""
        if record.oauth_client_uuid not in self._clients:
            raise OAuthClientNotFound(record.integration, record.oauth_client_uuid)

    def _drop_connection(self, record: ConnectionRecord) -> None:
        self._backoff.pop(record.uuid, None)
        del self._connections[record.uuid]
        del self._connection_names[(record.integration, record.name)]
        del self._connection_seq[record.uuid]

    @staticmethod
    def _normalized(record: ConnectionRecord) -> ConnectionRecord:
        return record.replace(
            token_expiry=_norm_opt(record.token_expiry),
            created_at=_norm(record.created_at),
            updated_at=_norm(record.updated_at),
        )
