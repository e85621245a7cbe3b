"""JSON shapes of the HTTP API: the service's field names, nothing more; and the cache
of the one shape that is asked for far more often than it changes, a shown connection."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..credentials import MASK, SECRET_FIELD
from ..domain import (
    CONNECTION_TYPES,
    Connection,
    ConnectionRecord,
    Event,
    OAuthClient,
    ProviderQuirks,
    TokenRead,
)
from ..eviction import Marked, make_room
from ..forks import fresh_lock_in_child
from ..storage.times import to_ms


def format_time(value: datetime | None) -> str | None:
    """``YYYY-MM-DDThh:mm:ssZ``, as the service's Connections API writes times."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def connection_json(conn: Connection, account_id: Any) -> dict[str, Any]:
    return {
        "access_token": conn.access_token,
        "created_by": conn.created_by,
        "integration": conn.integration,
        "name": conn.name,
        "oauth_access_token_response_body": conn.oauth_access_token_response_body,
        "oauth_client_uuid": conn.oauth_client_uuid,
        "oauth_url_subdomain": conn.oauth_url_subdomain,
        "permission_scope": conn.permission_scope,
        "refresh_token": conn.refresh_token,
        "token_expiry": format_time(conn.token_expiry),
        "token_type": conn.token_type,
        "uuid": conn.uuid,
        "zendesk_account_id": account_id,
        "metadata": dict(conn.metadata),
        "refresh_token_expiry": format_time(conn.refresh_token_expiry),
    }


def connection_summary_json(rec: ConnectionRecord) -> dict[str, Any]:
    """Listing entry: everything but token values."""
    return {
        "uuid": rec.uuid,
        "integration": rec.integration,
        "name": rec.name,
        "oauth_client_uuid": rec.oauth_client_uuid,
        "oauth_url_subdomain": rec.oauth_url_subdomain,
        "permission_scope": rec.permission_scope,
        "token_type": rec.token_type,
        "token_expiry": format_time(rec.token_expiry),
        "grant_type": rec.grant_type,
        "needs_reauth": rec.needs_reauth,
        "metadata": dict(rec.metadata),
        "refresh_token_expiry": format_time(rec.refresh_token_expiry),
        "created_by": rec.created_by,
        "created_at": format_time(rec.created_at),
        "updated_at": format_time(rec.updated_at),
    }


def credential_json(rec: ConnectionRecord) -> dict[str, Any]:
    """A credential connection in the service's shape: its secret always ``"*****"``
    (it is write-only); the user name and the header name are not secret."""
    out: dict[str, Any] = {"name": rec.name, "allowed_domain": rec.allowed_domain}
    if rec.type == "basic_auth":
        out["username"] = rec.username
    elif rec.type == "api_key":
        out["header_name"] = rec.header_name
    out[SECRET_FIELD[rec.type]] = MASK
    out["created_at"] = format_time(rec.created_at)
    out["updated_at"] = format_time(rec.updated_at)
    return out


def listing_json(records: Iterable[ConnectionRecord]) -> dict[str, list[dict[str, Any]]]:
    """A page of every type, grouped under each type's key, each group in page order;
    OAuth ones without any token value."""
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in sorted(CONNECTION_TYPES)}
    for rec in records:
        out[rec.type].append(connection_summary_json(rec) if rec.type == "oauth" else credential_json(rec))
    return out


def client_json(client: OAuthClient) -> dict[str, Any]:
    """``client_secret`` is write-only: only whether one is set is reported."""
    return {
        "uuid": client.uuid,
        "integration": client.integration,
        "name": client.name,
        "client_id": client.client_id,
        "has_client_secret": client.client_secret_enc is not None,
        "auth_url": client.auth_url,
        "token_url": client.token_url,
        "default_scopes": client.default_scopes,
        "grant_type": client.grant_type,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "pkce": client.pkce,
        "issuer": client.issuer,
        "authorize_params": dict(client.authorize_params),
        "offline_access_params": dict(client.offline_access_params),
        "revocation_url": client.revocation_url,
        "per_client_callback": client.per_client_callback,
        **_quirks_json(client.quirks),
        "version": client.version,
        "created_by": client.created_by,
        "created_at": format_time(client.created_at),
        "updated_at": format_time(client.updated_at),
    }


def _quirks_json(quirks: ProviderQuirks) -> dict[str, Any]:
    """Every quirk option, defaults included, so a client's shape never varies."""
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(quirks):
        value = getattr(quirks, spec.name)
        out[spec.name] = (
            list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) else value
        )
    return out


def event_json(event: Event) -> dict[str, Any]:
    """One entry of the event log: what happened, to which connection or client, who did
    it, when.  ``detail`` holds plain values only (see :mod:`flask_zis_connections.events`)."""
    return {
        "id": event.id,
        "kind": event.kind,
        "connection_name": event.connection_name,
        "connection_uuid": event.connection_uuid,
        "oauth_client_uuid": event.oauth_client_uuid,
        "actor": event.actor,
        "detail": dict(event.detail),
        "created_at": format_time(event.created_at),
    }


#: (integration, name, version, access token ciphertext, updated_at in epoch ms)
_State = tuple[str, str, int, str, int]


def _state_of(rec: ConnectionRecord) -> _State:
    """What names a row's state: every write moves its version, and a uuid used again
    comes with new ciphertexts and times (a narrow read shows the same five values)."""
    return (rec.integration, rec.name, rec.version, rec.access_token_enc, to_ms(rec.updated_at))


@dataclasses.dataclass(slots=True, eq=False)
class _Answer(Marked):
    """A kept answer: the row, its body and the row's state as a narrow read shows it."""

    rec: ConnectionRecord
    body: bytes
    state: _State
    #: When the row's token becomes due, in epoch milliseconds (infinity: never, or a
    #: row no refresh can serve).
    due_ms: float


class AnswerCache:
    """Serialized show answers (the JSON bytes of :func:`connection_json`), per process.

    An answer depends on nothing but the stored row and the app's account id (no field
    is derived from the clock), so it is kept per connection uuid together with the
    row it was made from, and served only while the row just read is equal to it (whole,
    :meth:`get`) or in the same state (the narrow read of ``get_token``, :meth:`current`,
    :func:`_state_of`: every write moves the version - a refresh, new metadata, a
    re-encryption - and a uuid used again by a new connection has new ciphertexts and
    times).  A changed row is a miss whose answer
    replaces the old one, so each connection holds at most one entry.  The caller still
    reads the row and refreshes it when due: the cache saves the decrypts, the encoding
    and, with the narrow read, the whole row's read.  Once the kept row's own token is
    due (:meth:`due`), no read can spare the refresh, and the caller starts it from the
    kept row without reading anything.

    The bodies hold tokens: the cache is bounded in bytes (``max_bytes``; a body over an
    eighth of it is never kept, so one large answer cannot flush the rest), an entry
    not served since eviction last passed it goes first (second chance,
    :mod:`~flask_zis_connections.eviction`: serving one only marks it, without a lock), an entry is dropped
    when its connection is deleted (:meth:`drop`), nothing here is ever logged, and
    ``repr`` shows sizes only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        #: uuid -> the row, its answer, the row's state as a narrow read shows it
        self._entries: OrderedDict[str, _Answer] = OrderedDict()
        #: (integration, name) -> uuid of the connection last answered under that name
        self._names: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        fresh_lock_in_child(self)

    @classmethod
    def for_bytes(cls, max_bytes: int) -> AnswerCache | None:
        """The cache for ``ZIS_API_RESPONSE_CACHE_BYTES``, or None when it is 0."""
        return cls(max_bytes) if max_bytes > 0 else None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._entries

    def __repr__(self) -> str:
        return f"<AnswerCache {len(self._entries)} answers, {self.bytes}/{self.max_bytes} bytes>"

    def get(self, rec: ConnectionRecord) -> bytes | None:
        """The answer made from a row equal to ``rec``, or None (the whole row at hand:
        compared whole)."""
        entry = self._entries.get(rec.uuid)
        if entry is None or entry.rec != rec:
            return None
        entry.used = True
        return entry.body

    def current(self, integration: str, name: str, head: TokenRead) -> tuple[ConnectionRecord, bytes] | None:
        """The row a narrow read ``head`` shows, and the answer made from it; or None.

        The uuid, version, access token ciphertext and ``updated_at`` name the row's
        state (every write moves the version; a uuid used again has new ciphertexts and
        times), so a match is the whole row :meth:`get` would be given, and its answer -
        without reading either.
        """
        entry = self._entries.get(head.uuid)
        if entry is None or entry.state != (
            integration,
            name,
            head.version,
            head.access_token_enc,
            head.updated_at_ms,
        ):
            return None
        entry.used = True
        return entry.rec, entry.body

    def due(self, integration: str, name: str, now_ms: float) -> ConnectionRecord | None:
        """The row last answered under this name, when its token is due at ``now_ms``
        (epoch milliseconds); None otherwise.

        Whatever the row holds by now - the same due token, or a newer write - a
        refresh from it is right: the lease holder reads the row before calling the
        provider and uses a newer write instead.  So a caller that gets a row here
        needs no read of its own before the refresh, and in a burst on a token that
        went due by the clock no request of this process reads the row.
        """
        uuid = self._names.get((integration, name))
        entry = None if uuid is None else self._entries.get(uuid)
        if entry is None or entry.due_ms > now_ms or entry.state[:2] != (integration, name):
            return None
        return entry.rec

    def put(self, rec: ConnectionRecord, body: bytes, due_ms: float | None = None) -> None:
        """Keep ``body``, the answer made from ``rec``; ``due_ms``: when its token becomes
        due (epoch milliseconds), None for a row no refresh serves."""
        size = len(body)
        if size > self.max_bytes // 8:
            return
        with self._lock:
            entries = self._entries
            old = entries.pop(rec.uuid, None)
            if old is not None:
                self._dropped(old)
            make_room(entries, lambda: self.bytes + size > self.max_bytes, self._dropped)
            entries[rec.uuid] = _Answer(rec, body, _state_of(rec), math.inf if due_ms is None else due_ms)
            self._names[(rec.integration, rec.name)] = rec.uuid
            self.bytes += size

    def _dropped(self, entry: _Answer) -> None:
        """Account for an entry taken out of the map (under the lock)."""
        self.bytes -= len(entry.body)
        key = (entry.rec.integration, entry.rec.name)
        if self._names.get(key) == entry.rec.uuid:
            del self._names[key]

    def drop(self, uuid: str) -> None:
        """Forget the answer of one connection (it was deleted)."""
        with self._lock:
            old = self._entries.pop(uuid, None)
            if old is not None:
                self._dropped(old)

    def drop_client(self, integration: str, client_uuid: str) -> None:
        """Forget the answers of every connection made with one OAuth client (it was
        deleted, and its connections with it)."""
        with self._lock:
            for uuid in [
                uuid
                for uuid, entry in self._entries.items()
                if entry.rec.integration == integration and entry.rec.oauth_client_uuid == client_uuid
            ]:
                self._dropped(self._entries.pop(uuid))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._names.clear()
            self.bytes = 0

    def connection_deleted(self, sender: Any, **info: Any) -> None:
        """Receiver of :data:`~flask_zis_connections.signals.connection_deleted`."""
        uuid = info.get("uuid")
        if isinstance(uuid, str):
            self.drop(uuid)
