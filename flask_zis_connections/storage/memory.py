"""A thread-safe in-memory backend.

It exists for tests, demos and single-process development servers: it keeps the
frozen dataclasses of :mod:`~flask_zis_connections.domain` in plain dicts and does
every operation under one :class:`threading.RLock`, which is what makes the atomic
steps of the :class:`~.base.Storage` contract (single-use flows and codes, leases,
compare-and-swap writes) hold across threads.  Nothing survives the process and
nothing is shared with other processes; use
:class:`~.sqlalchemy.SQLAlchemyStorage` for that.

One file a little over 400 lines on purpose: a backend is read as a whole against the
contract, and every hook here is a few lines under the same lock.

To behave exactly like the SQL backend it enforces the same uniqueness and
foreign-key rules (the contract suite runs against both); datetimes arrive already
truncated to the millisecond the SQL backend keeps, so they are stored and compared
as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from ..domain import (
    ApiToken,
    ConnectionRecord,
    Event,
    Lease,
    OAuthClient,
    PendingFlow,
    RefreshBackoff,
    VerificationCode,
    connection_status,
)
from ..errors import OAuthClientNotFound
from .base import Storage
from .conflicts import (
    client_conflict,
    code_conflict,
    connection_name_conflict,
    connection_uuid_conflict,
    flow_conflict,
    stale_client,
    token_conflict,
)
from .releases import LeaseReleases
from .times import at_ms


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
        #: key -> (owner, expiry)
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._backoff: dict[str, RefreshBackoff] = {}
        #: Oldest first, so ids increase along the list.
        self._events: list[Event] = []
        self._next_event_id = 1

    # -- OAuth clients ---------------------------------------------------------
    def _add_client(self, client: OAuthClient) -> OAuthClient:
        stored = _copy_client(client)
        with self._lock:
            key = (client.integration, client.name)
            if key in self._client_names or client.uuid in self._clients:
                raise client_conflict(client)
            self._clients[client.uuid] = stored
            self._client_names[key] = client.uuid
        return _copy_client(stored)

    def _update_client(self, client: OAuthClient, expected_version: int | None) -> OAuthClient:
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
                client.replace(created_by=old.created_by, created_at=old.created_at, version=old.version + 1)
            )
            del self._client_names[(old.integration, old.name)]
            self._client_names[key] = client.uuid
            self._clients[client.uuid] = stored
        return _copy_client(stored)

    def _get_client_by_uuid(self, integration: str, uuid: str) -> OAuthClient | None:
        with self._lock:
            client = self._clients.get(uuid)
        return None if client is None or client.integration != integration else _copy_client(client)

    def _get_client_by_name(self, integration: str, name: str) -> OAuthClient | None:
        with self._lock:
            found = self._client_names.get((integration, name))
            client = None if found is None else self._clients[found]
        return None if client is None else _copy_client(client)

    def _list_clients(self, integration: str | None) -> list[OAuthClient]:
        with self._lock:
            clients = list(self._clients.values())
        return [_copy_client(c) for c in clients if integration is None or c.integration == integration]

    def _delete_client(self, integration: str, uuid: str) -> bool:
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
    def _get_connection_by_uuid(self, integration: str, uuid: str) -> ConnectionRecord | None:
        with self._lock:
            record = self._connections.get(uuid)
        return None if record is None or record.integration != integration else record

    def _get_connection_by_name(self, integration: str, name: str) -> ConnectionRecord | None:
        with self._lock:
            found = self._connection_names.get((integration, name))
            return None if found is None else self._connections[found]

    def _add_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        with self._lock:
            self._require_client(record)
            existing_uuid = self._connection_names.get((record.integration, record.name))
            if existing_uuid is not None:
                raise connection_name_conflict(record, self._connections[existing_uuid].type)
            self._insert(record)
            return record

    def _upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        with self._lock:
            self._require_client(record)
            existing_uuid = self._connection_names.get((record.integration, record.name))
            if existing_uuid is not None:
                old = self._connections[existing_uuid]
                if old.type != "oauth":
                    raise connection_name_conflict(record, old.type)
                stored = record.replace(
                    uuid=old.uuid, created_at=old.created_at, version=old.version + 1, needs_reauth=False
                )
                self._connections[stored.uuid] = stored
            else:
                stored = record.replace(needs_reauth=False)
                self._insert(stored)
            return stored

    def _update_connection(
        self, record: ConnectionRecord, expected_version: int, lease: Lease | None, now: datetime
    ) -> ConnectionRecord | None:
        with self._lock:
            old = self._connections.get(record.uuid)
            if (
                old is None
                or old.integration != record.integration
                or old.version != expected_version
                or old.type != record.type
            ):
                return None
            if lease is not None and self._holder(lease.key, now) != lease.owner:
                return None
            self._require_client(record)
            stored = record.replace(name=old.name, created_at=old.created_at, version=expected_version + 1)
            self._connections[stored.uuid] = stored
            return stored

    def _delete_connection(self, integration: str, uuid: str) -> bool:
        with self._lock:
            record = self._connections.get(uuid)
            if record is None or record.integration != integration:
                return False
            self._drop_connection(record)
            return True

    def _list_connections(
        self, integration: str, after: int, limit: int, before: int | None = None
    ) -> list[tuple[int, ConnectionRecord]]:
        rows: list[tuple[int, ConnectionRecord]] = []
        with self._lock:
            # Dict order is insertion order, which is sequence order.
            items = self._connections.items()
            for uuid, record in items if before is None else reversed(items):
                seq = self._connection_seq[uuid]
                in_range = seq > after and (before is None or seq < before)
                if in_range and record.integration == integration:
                    rows.append((seq, record))
                    if len(rows) == limit:
                        break
        return rows

    def _connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]:
        with self._lock:
            records = list(self._connections.values())
        due = [
            r
            for r in records
            if r.token_expiry is not None and r.token_expiry < moment and not r.needs_reauth
        ]
        due.sort(key=lambda r: r.token_expiry or moment)
        return due

    def _connection_status_counts(self, expiring_before: datetime) -> dict[str, int]:
        with self._lock:
            pairs = [(r, self._backoff.get(r.uuid)) for r in self._connections.values()]
        counts: dict[str, int] = {}
        for record, backoff in pairs:
            status = connection_status(record, backoff, expiring_before)
            counts[status] = counts.get(status, 0) + 1
        return counts

    # -- flows -----------------------------------------------------------------
    def _add_flow(self, flow: PendingFlow) -> None:
        with self._lock:
            if flow.id in self._flows:
                raise flow_conflict(flow)
            self._flows[flow.id] = flow

    def _get_flow(self, flow_id: str) -> PendingFlow | None:
        with self._lock:
            return self._flows.get(flow_id)

    def _bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        with self._lock:
            flow = self._flows.get(flow_id)
            if flow is None or flow.status != "pending" or flow.expires_at <= now:
                return None
            bound = replace(flow, status="redirected", browser_binding_hash=browser_binding_hash)
            self._flows[flow_id] = bound
            return bound

    def _consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        with self._lock:
            flow = self._flows.get(flow_id)
            if (
                flow is None
                or flow.status != "redirected"
                or flow.browser_binding_hash != browser_binding_hash
                or flow.expires_at <= now
            ):
                return None
            consumed = replace(flow, status="consumed")
            self._flows[flow_id] = consumed
            return consumed

    # -- verification codes ----------------------------------------------------
    def _add_verification_code(self, code: VerificationCode) -> None:
        with self._lock:
            if code.code_hash in self._codes:
                raise code_conflict()
            self._codes[code.code_hash] = code

    def _consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None:
        with self._lock:
            code = self._codes.get(code_hash)
            if code is None or code.integration != integration or code.expires_at <= now:
                return None
            del self._codes[code_hash]
            return code

    # -- API tokens --------------------------------------------------------------
    def _add_api_token(self, token: ApiToken) -> None:
        with self._lock:
            if token.id in self._tokens or token.token_hash in self._token_hashes:
                raise token_conflict()
            self._tokens[token.id] = token
            self._token_hashes[token.token_hash] = token.id

    def _get_api_token(self, token_hash: str) -> ApiToken | None:
        with self._lock:
            token_id = self._token_hashes.get(token_hash)
            token = None if token_id is None else self._tokens[token_id]
        return None if token is None or token.revoked else token

    def _revoke_api_token(self, token_id_or_hash: str) -> bool:
        with self._lock:
            # Like the SQL backend's ``WHERE id = :x OR token_hash = :x``.
            ids = [token_id_or_hash, self._token_hashes.get(token_id_or_hash)]
            matched = [self._tokens[i] for i in ids if i is not None and i in self._tokens]
            for token in matched:
                self._tokens[token.id] = replace(token, revoked=True)
            return bool(matched)

    def _list_api_tokens(self, integration: str | None) -> list[ApiToken]:
        with self._lock:
            tokens = list(self._tokens.values())
        live = [t for t in tokens if not t.revoked and (integration is None or t.integration == integration)]
        live.sort(key=lambda t: (t.created_at, t.id))
        return live

    # -- refresh lease -----------------------------------------------------------
    def _acquire_lease(self, key: str, owner: str, now: datetime, expires_at: datetime) -> bool:
        with self._lock:
            if self._holder(key, now) is not None:
                return False
            self._leases[key] = (owner, expires_at)
            return True

    def _renew_lease(self, key: str, owner: str, now: datetime, expires_at: datetime) -> bool:
        with self._lock:
            if self._holder(key, now) != owner:
                return False
            self._leases[key] = (owner, expires_at)
            return True

    def _release_lease(self, key: str, owner: str) -> None:
        with self._lock:
            held = self._leases.get(key)
            if held is not None and held[0] == owner:
                del self._leases[key]

    def _lease_holder(self, key: str, now: datetime) -> str | None:
        with self._lock:
            return self._holder(key, now)

    def _new_lease_releases(self) -> LeaseReleases:
        # Every holder of a lease in a dict is in this process: no release is missed.
        return LeaseReleases(one_process=True)

    # -- refresh back-off ----------------------------------------------------------
    def _record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, delay: Callable[[int], timedelta]
    ) -> RefreshBackoff:
        with self._lock:
            old = self._backoff.get(connection_uuid)
            failures = 1 if old is None else old.failures + 1
            stored = RefreshBackoff(
                connection_uuid=connection_uuid,
                failures=failures,
                reason=reason,
                failed_at=now,
                retry_at=at_ms(now + delay(failures)),
            )
            self._backoff[connection_uuid] = stored
            return stored

    def _get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None:
        with self._lock:
            return self._backoff.get(connection_uuid)

    def _clear_refresh_backoff(self, connection_uuid: str) -> None:
        with self._lock:
            self._backoff.pop(connection_uuid, None)

    # -- event log -----------------------------------------------------------------
    def _add_event(self, event: Event) -> Event:
        with self._lock:
            stored = event.replace(id=self._next_event_id)
            self._next_event_id += 1
            self._events.append(stored)
        return stored

    def _list_events(self, integration: str, before: int | None, limit: int) -> list[Event]:
        found: list[Event] = []
        with self._lock:
            for event in reversed(self._events):
                if event.integration == integration and (before is None or (event.id or 0) < before):
                    found.append(event)
                    if len(found) == limit:
                        break
        return found

    def _purge_events(self, before: datetime) -> int:
        with self._lock:
            kept = [event for event in self._events if event.created_at >= before]
            purged = len(self._events) - len(kept)
            self._events = kept
        return purged

    # -- maintenance -------------------------------------------------------------
    def _reencrypt(self, rotate: Callable[[str], str]) -> int:
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

    def _purge_expired(self, now: datetime) -> int:
        with self._lock:
            flows = [k for k, f in self._flows.items() if f.expires_at <= now]
            codes = [k for k, c in self._codes.items() if c.expires_at <= now]
            leases = [k for k, (_, expires_at) in self._leases.items() if expires_at <= now]
            for flow_id in flows:
                del self._flows[flow_id]
            for code_hash in codes:
                del self._codes[code_hash]
            for key in leases:
                del self._leases[key]
        return len(flows) + len(codes) + len(leases)

    # -- helpers -------------------------------------------------------------------
    def _holder(self, key: str, now: datetime) -> str | None:
        """The owner of an unexpired lease; call with the lock held."""
        held = self._leases.get(key)
        return None if held is None or held[1] <= now else held[0]

    def _require_client(self, record: ConnectionRecord) -> None:
        """The SQL backend's foreign key, enforced by hand (NULL for other types)."""
        uuid = record.oauth_client_uuid
        if uuid is not None and uuid not in self._clients:
            raise OAuthClientNotFound(record.integration, uuid)

    def _insert(self, record: ConnectionRecord) -> None:
        """A new row at the next sequence number; call with the lock held."""
        if record.uuid in self._connections:
            raise connection_uuid_conflict(record)
        self._connections[record.uuid] = record
        self._connection_names[(record.integration, record.name)] = record.uuid
        self._connection_seq[record.uuid] = self._next_seq
        self._next_seq += 1

    def _drop_connection(self, record: ConnectionRecord) -> None:
        self._backoff.pop(record.uuid, None)
        del self._connections[record.uuid]
        del self._connection_names[(record.integration, record.name)]
        del self._connection_seq[record.uuid]
