"""The storage interface every backend implements.

Backends speak domain values (:mod:`flask_zis_connections.domain`) and own every
atomic step: consuming a flow or a verification code exactly once, the refresh lease,
and compare-and-swap writes.  Views and the token lifecycle never lock by hand.

The public methods are concrete: each checks and normalises its arguments once and
calls a protected hook (``get_flow`` -> ``_get_flow``; :mod:`.hooks` lists them), so
a backend implements only the hooks and cannot disagree with another about which
arguments are valid, how a cursor reads or which millisecond a datetime lands on.
:mod:`flask_zis_connections.testing` ships the contract suite a backend must pass.

Over 400 lines on purpose: it is the whole public storage interface, each method with
the argument checks every backend would otherwise repeat; the hooks are in ``hooks.py``.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..domain import (
    CONNECTION_STATUSES,
    CONNECTION_TYPES,
    ApiToken,
    ConnectionRecord,
    Event,
    EventPage,
    Lease,
    OAuthClient,
    Page,
    PendingFlow,
    RefreshBackoff,
    RefreshState,
    TokenRead,
    VerificationCode,
    connection_status,
    utcnow,
)
from ..errors import InvalidValue
from .conflicts import client_conflict, stale_client
from .hooks import StorageHooks
from .releases import LeaseReleases
from .times import at_ms, at_ms_or_none, to_ms

if TYPE_CHECKING:
    from ..token_cache import TokenCache

# The two conflicts callers outside storage raise too are importable from here.
__all__ = ["Storage", "backoff_delay", "client_conflict", "parse_cursor", "stale_client"]


class Storage(StorageHooks):
    """Abstract storage.  All datetimes in and out are timezone-aware UTC.

    A backend subclasses it and implements the hooks of :class:`~.hooks.StorageHooks`.
    """

    # -- life cycle (optional: a backend overrides what it needs) -------------------
    def create_tables(self) -> None:
        """Create missing tables (no-op for backends without a schema)."""

    def close(self) -> None:
        """Release connections/pools."""

    def healthcheck(self) -> None:
        """Raise :class:`~flask_zis_connections.errors.StorageUnavailable` when unusable."""

    # -- token cache invalidation across processes (optional) -----------------------
    def notify_changed(self, integration: str, name: str | None) -> None:
        """Tell other processes that a connection's token changed or it is gone
        (``name`` None: every connection of ``integration``).  No channel here: the
        token cache's TTL bounds what other processes serve."""

    def start_change_listener(self, cache: TokenCache) -> None:
        """Start invalidating ``cache`` on other processes' :meth:`notify_changed`
        (no channel here: nothing to start)."""

    # -- OAuth clients ---------------------------------------------------------
    def add_client(self, client: OAuthClient) -> OAuthClient:
        """Insert at version 1; raise ``Conflict`` when (integration, name) exists."""
        created, updated = at_ms(client.created_at), at_ms(client.updated_at)
        return self._add_client(client.replace(created_at=created, updated_at=updated, version=1))

    def update_client(self, client: OAuthClient, *, expected_version: int | None = None) -> OAuthClient:
        """Replace the row with ``client.uuid``; its version becomes the stored one + 1.

        ``created_by`` and ``created_at`` keep their stored values.  ``Conflict`` on a
        duplicate name, or - when ``expected_version`` is given - when the stored
        version differs (someone else updated it since it was read);
        ``OAuthClientNotFound`` when it is gone."""
        return self._update_client(client.replace(updated_at=at_ms(client.updated_at)), expected_version)

    def get_client(
        self, integration: str, *, uuid: str | None = None, name: str | None = None
    ) -> OAuthClient | None:
        """Look up by uuid or by name within the integration (both: they must agree).

        The name is compared again after the lookup, so a database whose collation
        ignores case cannot return a client of another name.
        """
        if uuid is not None:
            client = self._get_client_by_uuid(integration, uuid)
        elif name is not None:
            client = self._get_client_by_name(integration, name)
        else:
            raise TypeError("get_client() needs uuid= or name=")
        return None if client is None or (name is not None and client.name != name) else client

    def list_clients(self, integration: str | None = None) -> list[OAuthClient]:
        """Clients of one integration (or all), ordered by creation."""
        return self._list_clients(integration)

    def delete_client(self, integration: str, uuid: str) -> bool:
        """Delete the client *and its connections* (and their back-off state); False
        when it did not exist."""
        return self._delete_client(integration, uuid)

    # -- connections -----------------------------------------------------------
    def get_connection(
        self, integration: str, *, name: str | None = None, uuid: str | None = None
    ) -> ConnectionRecord | None:
        """One indexed read; the hot path of ``get_token``, so by name it is one call."""
        if uuid is None:
            if name is None:
                raise TypeError("get_connection() needs name= or uuid=")
            return self._get_connection_by_name(integration, name)
        record = self._get_connection_by_uuid(integration, uuid)
        return None if record is None or (name is not None and record.name != name) else record

    def read_token(self, integration: str, name: str) -> TokenRead | None:
        """The few columns of one connection that ``get_token`` reads on every call.

        Backends with a cheaper way than :meth:`get_connection` (a narrow select on
        the driver's own connection) override :meth:`_read_token`; by default it is
        the whole record, cut down.
        """
        return self._read_token(integration, name)

    def _read_token(self, integration: str, name: str) -> TokenRead | None:
        rec = self._get_connection_by_name(integration, name)
        if rec is None:
            return None
        expiry = rec.token_expiry
        return TokenRead(
            rec.type,
            rec.access_token_enc,
            None if expiry is None else to_ms(expiry),
            to_ms(rec.updated_at),
            rec.needs_reauth,
            rec.uuid,
            rec.version,
        )

    def read_refresh_state(self, integration: str, uuid: str) -> RefreshState | None:
        """The connection, its refresh back-off and its OAuth client, read together
        by a refresher that holds the lease (one query where the backend can: it is on
        the path of every caller waiting for the refresh); None when the connection
        is gone."""
        return self._read_refresh_state(integration, uuid)

    def _read_refresh_state(self, integration: str, uuid: str) -> RefreshState | None:
        record = self._get_connection_by_uuid(integration, uuid)
        if record is None:
            return None
        client = None
        if record.oauth_client_uuid is not None:
            client = self._get_client_by_uuid(integration, record.oauth_client_uuid)
        return RefreshState(record, self._get_refresh_backoff(uuid), client)

    def add_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Insert a new connection of any type at version 1.

        ``Conflict`` when the integration has a connection of that name already, of any
        type, or the uuid is in use; ``OAuthClientNotFound`` for an OAuth record whose
        client is unknown.  Returns what is stored.
        """
        return self._add_connection(_record_at_ms(_checked(record)).replace(version=1))

    def upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Insert, or replace the tokens of the existing (integration, name) OAuth row.

        The existing row keeps its uuid, ``created_at`` and gets ``version + 1``;
        ``needs_reauth`` is cleared.  Only an ``oauth`` row is ever replaced: a name
        held by another type is a ``Conflict``, and so is a new name with a uuid
        already in use; ``OAuthClientNotFound`` for an unknown client.  Returns what is
        stored.
        """
        if record.type != "oauth":
            raise ValueError("upsert_connection() stores OAuth connections; use add_connection().")
        return self._upsert_connection(_record_at_ms(_checked(record)))

    def update_connection(
        self,
        record: ConnectionRecord,
        *,
        expected_version: int,
        lease: Lease | None = None,
        now: datetime | None = None,
    ) -> ConnectionRecord | None:
        """Compare-and-swap: write ``record`` (version becomes ``expected_version + 1``)
        only if the stored version is ``expected_version`` - and, when ``lease`` is
        given, only if that lease is still held by its owner at ``now`` (default: the
        clock), checked in the same atomic step; else return None.  A refresher whose
        lease lapsed can thus never write, whatever happened meanwhile.  The name, type
        and ``created_at`` are kept; a record of another type than the stored row's
        never lands (None)."""
        return self._update_connection(
            _record_at_ms(_checked(record)), expected_version, lease, at_ms(now or utcnow())
        )

    def delete_connection(self, integration: str, uuid: str) -> bool:
        """Delete one connection and its back-off state; False when it did not exist."""
        return self._delete_connection(integration, uuid)

    def list_connections(
        self,
        integration: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        before: str | None = None,
    ) -> Page:
        """Every type together, in a stable order (insertion), by opaque cursors.

        ``cursor`` (a page's ``next_cursor``) reads the rows after it; ``before`` (a
        page's ``prev_cursor``) the ``limit`` rows just before it, still in insertion
        order.  Give at most one of them.
        """
        if limit < 1:
            raise InvalidValue("limit", "must be a positive integer")
        if cursor is not None and before is not None:
            raise InvalidValue("before", "give either cursor or before, not both")
        # One row more than asked: its presence is what says there is more that way.
        if before is None:
            after = parse_cursor(cursor)
            rows = list(self._list_connections(integration, after, limit + 1))
            has_more = len(rows) > limit
            rows = rows[:limit]
            more_before = bool(rows) and after > 0 and self._exists_before(integration, rows[0][0])
            more_after = has_more
        else:
            bound = parse_cursor(before, "before")
            rows = list(self._list_connections(integration, 0, limit + 1, before=bound))
            has_more = len(rows) > limit
            rows = rows[:limit][::-1]
            more_before = has_more
            more_after = bool(rows) and bool(self._list_connections(integration, rows[-1][0], 1))
        return Page(
            items=[record for _, record in rows],
            next_cursor=str(rows[-1][0]) if more_after else None,
            prev_cursor=str(rows[0][0]) if more_before else None,
            has_more=has_more,
        )

    def _exists_before(self, integration: str, seq: int) -> bool:
        return bool(self._list_connections(integration, 0, 1, before=seq))

    def connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]:
        """Connections (any integration) with ``token_expiry < moment`` and not
        ``needs_reauth``, soonest first: the ``refresh-due`` job's worklist."""
        return self._connections_expiring_before(at_ms(moment))

    def connection_status_counts(self, expiring_before: datetime) -> dict[str, int]:
        """How many connections (every integration and type) are in each status of
        :data:`~flask_zis_connections.domain.CONNECTION_STATUSES`, decided as
        :func:`~flask_zis_connections.domain.connection_status` does; every status is a
        key, 0 included.  For dashboards and metrics, read on every scrape: the SQL
        backend counts in one query."""
        counts = self._connection_status_counts(at_ms(expiring_before))
        return {status: int(counts.get(status, 0)) for status in CONNECTION_STATUSES}

    def _connection_status_counts(self, expiring_before: datetime) -> Mapping[str, int]:
        """The default for a backend without an aggregate: every connection of every
        integration that has an OAuth client or an API token, a page at a time, with
        one back-off read each.  A backend that can count in one query overrides it."""
        counts: dict[str, int] = dict.fromkeys(CONNECTION_STATUSES, 0)
        integrations = {c.integration for c in self.list_clients()}
        integrations |= {t.integration for t in self.list_api_tokens()}
        for integration in sorted(integrations):
            cursor: str | None = None
            while True:
                page = self.list_connections(integration, limit=500, cursor=cursor)
                for record in page.items:
                    backoff = self.get_refresh_backoff(record.uuid)
                    counts[connection_status(record, backoff, expiring_before)] += 1
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        return counts

    # -- flows -----------------------------------------------------------------
    def add_flow(self, flow: PendingFlow) -> None:
        """Record a new pending flow; ``Conflict`` when its id exists."""
        self._add_flow(replace(flow, created_at=at_ms(flow.created_at), expires_at=at_ms(flow.expires_at)))

    def get_flow(self, flow_id: str) -> PendingFlow | None:
        """Read without changing it."""
        return self._get_flow(flow_id)

    def bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        """Atomically move ``pending`` -> ``redirected`` (if not expired) recording the
        browser binding; None when the flow is unknown, expired or already used."""
        return self._bind_flow(flow_id, browser_binding_hash, at_ms(now))

    def consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        """Atomically move ``redirected`` -> ``consumed`` if the binding matches and it
        has not expired.  Exactly one of many concurrent callers gets the flow."""
        return self._consume_flow(flow_id, browser_binding_hash, at_ms(now))

    # -- verification codes ----------------------------------------------------
    def add_verification_code(self, code: VerificationCode) -> None:
        """Record a new code (only its hash is stored); ``Conflict`` when it exists."""
        self._add_verification_code(
            replace(code, created_at=at_ms(code.created_at), expires_at=at_ms(code.expires_at))
        )

    def consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None:
        """Atomically take the code if it belongs to ``integration`` and has not expired.
        A code of another integration is left untouched."""
        return self._consume_verification_code(code_hash, integration, at_ms(now))

    # -- API tokens --------------------------------------------------------------
    def add_api_token(self, token: ApiToken) -> None:
        """Record a new API token (hash only); ``Conflict`` when its id or hash exists."""
        self._add_api_token(replace(token, created_at=at_ms(token.created_at)))

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, if it exists and is not revoked."""
        return self._get_api_token(token_hash)

    def revoke_api_token(self, token_id_or_hash: str) -> bool:
        """Revoke by id or by hash; False when nothing matched."""
        return self._revoke_api_token(token_id_or_hash)

    def list_api_tokens(self, integration: str | None = None) -> list[ApiToken]:
        """Non-revoked tokens (hashes only), oldest first, for the CLI."""
        return self._list_api_tokens(integration)

    # -- refresh lease -----------------------------------------------------------
    def acquire_lease(
        self, key: str, owner: str, ttl: float, now: datetime, *, unless_backed_off: str | None = None
    ) -> bool:
        """Take the lease ``key`` for ``ttl`` seconds if it is free or expired.

        With ``unless_backed_off`` (a connection's uuid) it is not taken while that
        connection's refresh back-off runs (``retry_at`` after ``now``): a refresher
        learns both in one step - one statement where the backend can - instead of
        reading the back-off before every attempt.  A False answer does not say which
        of the two refused; the caller reads the back-off then.
        """
        now, expires_at = at_ms(now), at_ms(now + timedelta(seconds=ttl))
        if unless_backed_off is None:
            return self._acquire_lease(key, owner, now, expires_at)
        return self._acquire_lease_unless_backed_off(key, owner, now, expires_at, unless_backed_off)

    def _acquire_lease_unless_backed_off(
        self, key: str, owner: str, now: datetime, expires_at: datetime, connection_uuid: str
    ) -> bool:
        backoff = self._get_refresh_backoff(connection_uuid)
        if backoff is not None and backoff.retry_at > now:
            return False
        return self._acquire_lease(key, owner, now, expires_at)

    def take_lease_and_read(
        self, key: str, owner: str, ttl: float, now: datetime, *, integration: str, uuid: str
    ) -> tuple[bool, RefreshState | None]:
        """:meth:`acquire_lease` (refused while connection ``uuid`` backs off), then
        :meth:`read_refresh_state` of that connection: whether the lease was taken, and
        the state.

        The read runs after the attempt, so once the lease is taken it shows every
        write committed before - what the holder must refresh from.  A caller that did
        not get the lease finds in it the back-off that may have refused it.  A
        backend may send both in one round trip (every caller waiting for the refresh
        waits for the holder's); when this raises, the lease may have been taken, and
        the caller releases it.
        """
        now, expires_at = at_ms(now), at_ms(now + timedelta(seconds=ttl))
        return self._take_lease_and_read(key, owner, now, expires_at, integration, uuid)

    def _take_lease_and_read(
        self, key: str, owner: str, now: datetime, expires_at: datetime, integration: str, uuid: str
    ) -> tuple[bool, RefreshState | None]:
        taken = self._acquire_lease_unless_backed_off(key, owner, now, expires_at, uuid)
        return taken, self._read_refresh_state(integration, uuid)

    def renew_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        """Extend the lease to ``now + ttl`` if ``owner`` still holds it unexpired;
        False when it lapsed (or was taken over) - the holder must then stop."""
        return self._renew_lease(key, owner, at_ms(now), at_ms(now + timedelta(seconds=ttl)))

    def release_lease(self, key: str, owner: str) -> None:
        """Release it if ``owner`` still holds it (an expired, re-taken lease stays),
        and wake this process's :meth:`watch_lease` waiters of ``key``."""
        try:
            self._release_lease(key, owner)
        finally:
            self.lease_releases().released(key)

    def watch_lease(self, key: str) -> AbstractContextManager[threading.Event]:
        """An event set when the lease ``key`` is released while the block runs.

        Enter it *before* trying the lease, then wait on the event for the holder to let
        go: a release by this process always sets it; one by another process does only
        while ``lease_releases().across_processes`` is set (the backend has a channel
        between processes and hears it), so a waiter polls as well while it is not.
        """
        releases = self.lease_releases()
        self._listen_for_lease_releases(releases)
        return releases.watch(key)

    def lease_releases(self) -> LeaseReleases:
        """This storage's lease watchers in this process (made on first use)."""
        releases = self.__dict__.get("_zis_lease_releases")
        if releases is None:
            # setdefault is atomic: two first callers end up with one registry.
            releases = self.__dict__.setdefault("_zis_lease_releases", self._new_lease_releases())
        return releases  # type: ignore[no-any-return]

    def _new_lease_releases(self) -> LeaseReleases:
        """A registry that hears only this process's releases; a backend whose leases
        all live in this process, or that has a channel, says so."""
        return LeaseReleases()

    def _listen_for_lease_releases(self, releases: LeaseReleases) -> None:
        """Start hearing other processes' lease releases into ``releases``, once per
        process (no channel here: waiters poll)."""

    def lease_holder(self, key: str, now: datetime) -> str | None:
        """The current unexpired holder, or None."""
        return self._lease_holder(key, at_ms(now))

    # -- refresh back-off ----------------------------------------------------------
    def record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, *, base: float, cap: float
    ) -> RefreshBackoff:
        """Count one more failed refresh and set ``retry_at`` to
        ``now + min(cap, base * 2 ** (failures - 1))``; return the new state.  The
        reason is cut to 64 characters."""
        delay = functools.partial(backoff_delay, base=base, cap=cap)
        return self._record_refresh_failure(connection_uuid, reason[:64], at_ms(now), delay)

    def get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None:
        """The back-off state, or None after a success (or if it never failed)."""
        return self._get_refresh_backoff(connection_uuid)

    def clear_refresh_backoff(self, connection_uuid: str) -> None:
        """Forget the failures (a refresh or re-authorization succeeded)."""
        self._clear_refresh_backoff(connection_uuid)

    # -- event log -----------------------------------------------------------------
    def add_event(self, event: Event) -> Event:
        """Append ``event`` to its integration's log; return it with the id storage gave it.

        ``ValueError`` when it has an id already, a kind or actor that is empty or too
        long, identifiers longer than their columns, or a ``detail`` that is not a small
        JSON object (:data:`EVENT_DETAIL_MAX_BYTES`): the log keeps short facts, never
        a payload.
        """
        if event.id is not None:
            raise ValueError("add_event() gives the event its id; pass one without an id.")
        if not _EVENT_KIND_RE.fullmatch(event.kind):
            raise ValueError(f"An event kind is 1 to 64 of a-z, 0-9, '_' and '.', not {event.kind!r}.")
        for name, value, longest in (
            ("integration", event.integration, 64),
            ("actor", event.actor, 255),
            ("connection_name", event.connection_name, 128),
            ("connection_uuid", event.connection_uuid, 36),
            ("oauth_client_uuid", event.oauth_client_uuid, 36),
        ):
            if value is not None and not 0 < len(value) <= longest:
                raise ValueError(f"An event's {name} is 1 to {longest} characters.")
        return self._add_event(
            event.replace(created_at=at_ms(event.created_at), detail=_event_detail(event.detail))
        )

    def list_events(self, integration: str, *, limit: int, after: str | None = None) -> EventPage:
        """The ``limit`` newest events of ``integration``, or - with ``after``, a page's
        ``next_cursor`` - the ``limit`` newest of those older than that page."""
        if limit < 1:
            raise InvalidValue("limit", "must be a positive integer")
        before = None if after is None else parse_cursor(after, "after")
        # One row more than asked: its presence is what says there are older ones.
        rows = list(self._list_events(integration, before, limit + 1))
        has_more = len(rows) > limit
        items = rows[:limit]
        return EventPage(items=items, next_cursor=str(items[-1].id) if has_more else None, has_more=has_more)

    def purge_events(self, before: datetime) -> int:
        """Delete the events (of every integration) created before ``before``; return
        how many went."""
        return self._purge_events(at_ms(before))

    # -- maintenance -------------------------------------------------------------
    def reencrypt(self, rotate: Callable[[str], str]) -> int:
        """Apply ``rotate`` to every ciphertext column of every row; return rows changed.

        Each row is rewritten with a compare-and-swap on its old ciphertext, so a row
        updated concurrently (already under the newest key) is skipped, not clobbered.
        """
        return self._reencrypt(rotate)

    def purge_expired(self, now: datetime) -> int:
        """Delete expired flows, verification codes and leases; return rows deleted."""
        return self._purge_expired(at_ms(now))


def _checked(record: ConnectionRecord) -> ConnectionRecord:
    """A record whose fields fit its type: an OAuth one has a client, the others a
    host and no client."""
    if record.type not in CONNECTION_TYPES:
        raise ValueError(f"Unknown connection type {record.type!r}.")
    if (record.type == "oauth") != (record.oauth_client_uuid is not None):
        raise ValueError("An OAuth connection has an oauth_client_uuid; the other types have none.")
    if record.type != "oauth" and not record.allowed_domain:
        raise ValueError(f"A {record.type} connection needs an allowed_domain.")
    return record


def _record_at_ms(record: ConnectionRecord) -> ConnectionRecord:
    """Times at the resolution every backend keeps; metadata as a read-only copy, so a
    caller holding a record can never change what another caller (or the store) sees."""
    return record.replace(
        token_expiry=at_ms_or_none(record.token_expiry),
        refresh_token_expiry=at_ms_or_none(record.refresh_token_expiry),
        created_at=at_ms(record.created_at),
        updated_at=at_ms(record.updated_at),
        metadata=MappingProxyType(dict(record.metadata)),
    )


#: The longest ``detail`` of an event, as compact JSON.
EVENT_DETAIL_MAX_BYTES = 2048
_EVENT_KIND_RE = re.compile(r"[a-z0-9_.]{1,64}")


def _event_detail(detail: Mapping[str, object]) -> Mapping[str, object]:
    """A read-only copy of ``detail`` as it reads back from JSON (so every backend hands
    back the same value), or ``ValueError`` when it is not a small JSON object."""
    try:
        text = json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError("An event's detail is a JSON object of plain values.") from None
    if len(text.encode()) > EVENT_DETAIL_MAX_BYTES:
        raise ValueError(f"An event's detail is at most {EVENT_DETAIL_MAX_BYTES} bytes as JSON.")
    copied: dict[str, object] = json.loads(text)
    return MappingProxyType(copied)


def backoff_delay(failures: int, *, base: float, cap: float) -> timedelta:
    """``base * 2 ** (failures - 1)`` seconds, at most ``cap``: 1, 2, 4, ... for base 1."""
    exponent = min(max(failures - 1, 0), 62)
    return timedelta(seconds=min(cap, base * 2.0**exponent))


#: Cursors are row sequence numbers that fit a signed 64-bit column.
_MAX_CURSOR = 2**63 - 1


def parse_cursor(cursor: str | None, field: str = "cursor") -> int:
    """Cursors are a row's sequence number; anything else is a client error naming
    ``field``."""
    if cursor is None:
        return 0
    # Bounded before int(): a megabyte of digits must be a 422, not CPU time or a
    # database overflow error.
    value = int(cursor) if len(cursor) <= 19 and cursor.isascii() and cursor.isdigit() else -1
    if not 0 <= value <= _MAX_CURSOR:
        raise InvalidValue(field, "not a cursor from a previous page; list again without a cursor")
    return value
