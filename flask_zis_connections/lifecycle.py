"""The token lifecycle: read, refresh when due, one refresh at a time.

The refresh lock is the storage's lease (a row in SQL, so it holds across threads,
processes and machines).  The winner re-reads the row after taking the lease and
refreshes only if it is still due.  While its provider call is in flight a keeper
thread renews the lease, and the call's deadline never passes the moment the lease is
known to be held until: a refresher whose renewals fail gives up before anyone else
can take over, so a refresh token is never sent twice.  Its write is conditioned on
both the row's ``version`` and the lease, in one atomic step.  In each process one
caller per connection deals with storage while the others wait on an in-process event
(:mod:`.singleflight`); when it lost the lease to another process it waits for the
release (heard through the storage's channel, else polled) and uses the winner's
result.  A crashed refresher's lease simply expires after ``ZIS_REFRESH_LEASE_TTL``
seconds.

A refresh that fails at the provider is recorded apart from the connection row
(:class:`~flask_zis_connections.domain.RefreshBackoff`) and backs the connection off
exponentially, across every process: until ``retry_at`` callers get the still-valid
token, or fail fast with a ``Retry-After`` - the provider is not called again.

Over 400 lines on purpose: the refresh, its lease, its back-off, its cache and its
failure handling are one protocol, read together or misread.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask

from . import events, signals
from .credentials import secret_of
from .crypto import Encryptor
from .domain import (
    Connection,
    ConnectionRecord,
    Lease,
    OAuthClient,
    RefreshBackoff,
    TokenRead,
    utcnow,
)
from .errors import (
    ConnectionNotFound,
    InvalidValue,
    ProviderError,
    ReauthorizationRequired,
    WrongConnectionType,
    ZISError,
)
from .lease import LeaseKeeper
from .outbound import OutboundPolicy
from .provider_client import REAUTH_ERRORS, ProviderClient
from .singleflight import FlightTimeout, SingleFlight
from .storage import Storage
from .storage.releases import LeaseReleases
from .storage.times import from_ms, to_ms
from .token_answer import TokenRequestRejected, TokenResponse
from .token_cache import TokenCache
from .validation import METADATA_MAX_BYTES as METADATA_MAX_BYTES
from .validation import metadata_changes as metadata_changes

log = logging.getLogger("flask_zis_connections")

#: Polling for another process's lease holder, when its release cannot be heard: the
#: first and the longest pause, in seconds.
_POLL_START = 0.01
_POLL_MAX = 0.2
#: The pause between looks while releases are heard: a lease that expires (its holder
#: crashed) is announced by nobody.
_SAFETY_NET = 1.0
#: First back-off step in seconds (then 2, 4, ... up to ZIS_REFRESH_BACKOFF_MAX).
BACKOFF_BASE = 1.0


@dataclass(frozen=True)
class _Outcome:
    """What the one caller that dealt with storage found, for every waiting caller to
    answer from: the newest row it saw, the back-off that stopped it (or that its failed
    provider call started) and that failure."""

    record: ConnectionRecord
    backoff: RefreshBackoff | None = None
    failure: ProviderError | None = None
    #: What the caller that stored a refresh tells others once every waiter has the
    #: result and the lease is released: its cache invalidation (to other processes
    #: too) and the ``connection_refreshed`` signal.  Nobody waits for those.
    announce: Callable[[], None] | None = None


def _waited_too_long() -> ProviderError:
    return ProviderError("Timed out waiting for a concurrent refresh of this connection. Try again.")


@dataclass
class Lifecycle:
    """Per-app token operations (one instance lives in the app's extension state)."""

    app: Flask
    storage: Storage
    encryptor: Encryptor
    leeway: float
    lease_ttl: float
    http_timeout: float
    outbound: OutboundPolicy
    backoff_max: float = 60.0
    #: Set while metrics are on: gets the seconds of every :meth:`get_token` call.  None
    #: (metrics off): the hot path measures nothing.
    observe_get_token: Callable[[float], None] | None = field(default=None, repr=False)
    #: The in-process cache of decrypted tokens (None: ``ZIS_TOKEN_CACHE_TTL`` is 0).
    token_cache: TokenCache | None = field(default=None, repr=False)
    _leeway_ms: float = field(init=False, repr=False)
    #: One caller per connection deals with storage at a time; the others wait for it.
    _flights: SingleFlight[_Outcome] = field(init=False, repr=False, default_factory=SingleFlight)

    def __post_init__(self) -> None:
        self._leeway_ms = self.leeway * 1000

    # -- reads -------------------------------------------------------------------
    def find(self, integration: str, *, name: str | None = None, uuid: str | None = None) -> ConnectionRecord:
        rec = self.storage.get_connection(integration, name=name, uuid=uuid)
        if rec is None:
            raise ConnectionNotFound(integration, name=name, uuid=uuid)
        return rec

    def is_due(self, rec: ConnectionRecord, now: datetime | None = None) -> bool:
        """Whether ``rec`` should be refreshed before use.

        Due when it expires within the leeway - but never before half of the token's
        lifetime (``token_expiry - updated_at``) has passed: a provider issuing tokens
        shorter than the leeway would otherwise cost a refresh on every call, and every
        caller waiting for a refresh would refresh once more.
        """
        due_at = self.due_at(rec)
        return due_at is not None and due_at <= (now or utcnow())

    @staticmethod
    def _expired(rec: ConnectionRecord) -> bool:
        return rec.token_expiry is not None and rec.token_expiry <= utcnow()

    def get_token(self, integration: str, name: str) -> str:
        """The hot path: one indexed read and one decrypt while the token is fresh."""
        observe = self.observe_get_token
        if observe is None:
            return self._get_token(integration, name)
        started = time.perf_counter()
        try:
            return self._get_token(integration, name)
        finally:
            observe(time.perf_counter() - started)

    def _get_token(self, integration: str, name: str) -> str:
        cache = self.token_cache
        generation = 0
        if cache is not None:
            token = cache.get(integration, name)
            if token is not None:
                return token
            generation = cache.generation  # before the read: a write meanwhile wins
        # A few columns, epoch milliseconds, no record built: enough while the token is
        # fresh.  A due token or a credential connection takes the whole record.
        head = self.storage.read_token(integration, name)
        if head is None:
            raise ConnectionNotFound(integration, name=name)
        if head.type == "oauth":
            now_ms = time.time() * 1000
            due_ms = self.due_ms(head)
            if due_ms is None or due_ms > now_ms:
                token = self.encryptor.decrypt(head.access_token_enc)
                if cache is not None and not head.needs_reauth:
                    seconds = None if due_ms is None else (due_ms - now_ms) / 1000
                    cache.put(integration, name, token, seconds, generation)
                return token
        return self._get_token_of_record(integration, name, generation)

    def _get_token_of_record(self, integration: str, name: str, generation: int) -> str:
        """``get_token`` when the token is due (refresh it, once across callers) or
        the connection is of a credential type (its secret, or why there is none)."""
        cache = self.token_cache
        rec = self.storage.get_connection(integration, name=name)
        if rec is None:
            raise ConnectionNotFound(integration, name=name)
        seconds: float | None = None
        if rec.type != "oauth":
            token = secret_of(rec, self.encryptor)
        else:
            now = utcnow()
            if self.is_due(rec, now):
                return self.encryptor.decrypt(self.ensure_fresh(rec, force=False).access_token_enc)
            token = self.encryptor.decrypt(rec.access_token_enc)  # refreshed meanwhile
            due_at = self.due_at(rec)
            seconds = None if due_at is None else (due_at - now).total_seconds()
        if cache is not None and not rec.needs_reauth:
            cache.put(integration, name, token, seconds, generation)
        return token

    def due_ms(self, head: TokenRead) -> float | None:
        """:meth:`due_at` of a narrow read, in epoch milliseconds (None: never)."""
        expiry = head.token_expiry_ms
        return None if expiry is None else self._due_ms(expiry, head.updated_at_ms)

    def is_fresh(self, head: TokenRead) -> bool:
        """Whether a narrow read shows an OAuth token that is not due: usable as it is."""
        if head.type != "oauth":
            return False
        due_ms = self.due_ms(head)
        return due_ms is None or due_ms > time.time() * 1000

    def due_at(self, rec: ConnectionRecord) -> datetime | None:
        """The moment :meth:`is_due` turns true for ``rec`` (None: never)."""
        expiry = rec.token_expiry
        if expiry is None:
            return None
        return from_ms(self._due_ms(to_ms(expiry), to_ms(rec.updated_at)))

    def _due_ms(self, expiry_ms: int, updated_ms: int) -> float:
        """The one rule, on the milliseconds storage keeps: the leeway before expiry, but
        never before half of the token's lifetime has passed (see :meth:`is_due`)."""
        lifetime = expiry_ms - updated_ms
        return expiry_ms - (min(self._leeway_ms, lifetime / 2) if lifetime > 0 else 0)

    # -- the token cache -------------------------------------------------------------
    def changed(self, integration: str, name: str | None) -> None:
        """After a write that changed a connection's token or existence (``name`` None:
        every connection of ``integration``): drop its cached token here at once, and
        in other processes through the cache's channel (Redis pub/sub when
        ``ZIS_TOKEN_CACHE_REDIS_URL`` is set, else the storage's, when it has one)."""
        cache = self.token_cache
        if cache is None:
            return
        cache.invalidate(integration, name)
        try:
            cache.notify_others(integration, name)
        except Exception as exc:  # the write stands; others fall back to the TTL
            log.warning("Telling other processes that %s of %s changed failed: %s", name, integration, exc)

    def forget_cached(self, integration: str, name: str) -> None:
        """Drop this process's cached token of one connection (a provider refused it)."""
        if self.token_cache is not None:
            self.token_cache.invalidate(integration, name)

    def decrypt(self, rec: ConnectionRecord) -> Connection:
        enc = self.encryptor
        return Connection(
            uuid=rec.uuid,
            integration=rec.integration,
            name=rec.name,
            oauth_client_uuid=rec.oauth_client_uuid,
            access_token=enc.decrypt(rec.access_token_enc),
            token_type=rec.token_type,
            refresh_token=enc.decrypt_optional(rec.refresh_token_enc),
            oauth_access_token_response_body=enc.decrypt_optional(rec.token_response_enc),
            token_expiry=rec.token_expiry,
            permission_scope=rec.permission_scope,
            oauth_url_subdomain=rec.oauth_url_subdomain,
            created_by=rec.created_by,
            grant_type=rec.grant_type,
            needs_reauth=rec.needs_reauth,
            version=rec.version,
            created_at=rec.created_at,
            updated_at=rec.updated_at,
            metadata=dict(rec.metadata),
            refresh_token_expiry=rec.refresh_token_expiry,
            type=rec.type,
            allowed_domain=rec.allowed_domain,
            username=rec.username,
            header_name=rec.header_name,
        )

    # -- refresh -----------------------------------------------------------------
    def ensure_fresh(self, rec: ConnectionRecord, *, force: bool) -> ConnectionRecord:
        """Refresh ``rec`` if due (or ``force``), once across all callers.

        ``rec`` is the row as the caller saw it when its request arrived.  Any write
        that lands after that (its version moved) counts as a refresh done on the
        caller's behalf, which is what lets a burst of forced refreshes make a single
        provider call.  While the connection backs off after a failed refresh, nobody
        calls the provider: see :meth:`_backed_off`.

        In one process only one caller per connection deals with storage at a time
        (:meth:`_settle`, run as a :class:`~.singleflight.SingleFlight`); the others
        wait for what it found and each decides from that what it needs
        (:meth:`_answer`) - going round again only when that was not enough (a forced
        refresh that arrived after the one just stored).
        """
        if rec.type != "oauth" and force:
            raise WrongConnectionType(
                rec.integration, rec.name, rec.type, "only OAuth connections have a token to refresh"
            )
        if not force and not self.is_due(rec):
            return rec  # also every credential connection: nothing of theirs expires
        self._raise_if_needs_reauth(rec)
        deadline = time.monotonic() + self._wait_limit()
        while True:
            settle = functools.partial(self._settle, rec, force)
            try:
                outcome, led = self._flights.run(rec.uuid, settle, deadline - time.monotonic())
            except FlightTimeout:
                raise _waited_too_long() from None
            if led and outcome.announce is not None:
                outcome.announce()
            answer = self._answer(rec, force, outcome, led=led)
            if answer is not None:
                return answer
            if outcome.record.version > rec.version:
                rec = outcome.record  # written, but not enough for this caller
            if time.monotonic() > deadline:
                raise _waited_too_long()

    def _wait_limit(self) -> float:
        """The longest a caller waits for a refresh: a holder's lease, its provider
        call and some slack."""
        return self.lease_ttl + self.http_timeout + 5

    def _settle(self, rec: ConnectionRecord, force: bool) -> _Outcome:
        """Bring the connection where ``rec``'s caller needs it, or find why not.

        Run by one thread per connection and process at a time.  It takes the lease
        and refreshes, or - when another process holds the lease - waits for that
        holder to let go (woken by the storage's release channel, polling when there
        is none or it is down) and reads what it left.
        """
        key = f"refresh:{rec.uuid}"
        # Armed first, which also starts the storage's listener for other processes'
        # releases: it connects while the lease is tried.
        with self.storage.watch_lease(key) as released:
            owner = uuidlib.uuid4().hex
            started = time.monotonic()
            deadline = started + self._wait_limit()
            releases = self.storage.lease_releases()
            tried = -math.inf
            while True:
                # An attempt is a write (on SQLite it queues on the file lock with the
                # holder's own writes): made again only once a release was heard, or a
                # while after the last one (a crashed holder's lease expires unheard).
                # In between, a poll only reads the row.
                if released.is_set() or time.monotonic() - tried >= _SAFETY_NET:
                    released.clear()  # before the attempt: a release after it is never missed
                    taken_at = tried = time.monotonic()
                    # Refused while the connection backs off, in the same step: the
                    # back-off is read only when the lease was not taken.
                    if self.storage.acquire_lease(
                        key, owner, self.lease_ttl, utcnow(), unless_backed_off=rec.uuid
                    ):
                        try:
                            return self._settle_locked(rec, force, Lease(key, owner), taken_at)
                        finally:
                            self.storage.release_lease(key, owner)
                    backoff = self._active_backoff(rec)
                    if backoff is not None:
                        return _Outcome(rec, backoff=backoff)
                released.wait(self._lease_pause(releases, time.monotonic() - started))
                current = self.find(rec.integration, uuid=rec.uuid)
                if current.version != rec.version:
                    if current.needs_reauth or not self._expired(current):
                        return _Outcome(current)  # the lease holder's result
                    rec = current  # written but already expired: take the lease and refresh
                if time.monotonic() > deadline:
                    raise _waited_too_long()

    @staticmethod
    def _lease_pause(releases: LeaseReleases, waited: float) -> float:
        """How long to wait for another process's lease holder before looking again.

        Releases heard across processes wake the waiter, so the pause is only a safety
        net (a crashed holder's lease expires unannounced).  A listener still
        connecting wakes it when it is up (a release may have been missed until then).
        Unheard, it is a poll, its pause a tenth of the wait so far: an answer that
        comes late costs at most about 10%.
        """
        if releases.across_processes.is_set() or releases.connecting.is_set():
            return _SAFETY_NET
        return min(_POLL_MAX, max(_POLL_START, waited / 10))

    def _settle_locked(self, rec: ConnectionRecord, force: bool, lease: Lease, taken_at: float) -> _Outcome:
        """Holding the lease: re-read (the row, its back-off and its client in one
        read), and refresh only if that is still needed."""
        state = self.storage.read_refresh_state(rec.integration, rec.uuid)
        if state is None:
            raise ConnectionNotFound(rec.integration, uuid=rec.uuid)
        current = state.record
        if current.needs_reauth:
            return _Outcome(current)
        if current.version != rec.version and not self._expired(current):
            return _Outcome(current)  # written after this caller arrived: use it
        if not (force or self.is_due(current)):
            return _Outcome(current)
        # A refresher that held the lease before us may have failed (after this
        # caller's lease attempt read no back-off).
        stored_backoff = state.backoff
        if stored_backoff is not None and stored_backoff.retry_at > utcnow():
            return _Outcome(current, backoff=stored_backoff)
        return self._refresh_locked(
            current, lease, taken_at, had_backoff=stored_backoff is not None, client=state.client
        )

    def _answer(
        self, rec: ConnectionRecord, force: bool, outcome: _Outcome, *, led: bool
    ) -> ConnectionRecord | None:
        """What one caller (``rec`` as it arrived, ``force``) gets from a flight's
        outcome; None when that does not serve it and it must go round again.

        The caller that led the flight gets a failed provider call's own error; the
        others find the back-off it started, as they would have had they taken the
        lease after it.
        """
        current = outcome.record if outcome.record.version >= rec.version else rec
        self._raise_if_needs_reauth(current)
        failure = outcome.failure
        if failure is not None and led:
            if not force and not self._expired(current):
                return current  # still valid: the caller keeps working meanwhile
            raise failure
        if outcome.backoff is not None:
            return self._backed_off(current, outcome.backoff, force)
        if current.version != rec.version and not self._expired(current):
            return current  # written after this caller arrived: its refresh too
        if not (force or self.is_due(current)):
            return current
        return None

    def _active_backoff(self, rec: ConnectionRecord) -> RefreshBackoff | None:
        backoff = self.storage.get_refresh_backoff(rec.uuid)
        if backoff is None or backoff.retry_at <= utcnow():
            return None
        return backoff

    def _backed_off(self, rec: ConnectionRecord, backoff: RefreshBackoff, force: bool) -> ConnectionRecord:
        """During a back-off: the token while it is still valid, else fail fast.

        A due token that has not expired still works at the provider's API, so handing
        it out is better than an error; an expired one (or an explicit refresh) gets a
        ``ProviderError`` carrying ``retry_after``, which the HTTP API sends as
        ``Retry-After`` with its 502.
        """
        retry_after = max(1, math.ceil((backoff.retry_at - utcnow()).total_seconds()))
        signals.refresh_backed_off.send(
            self.app, integration=rec.integration, name=rec.name, uuid=rec.uuid, retry_after=retry_after
        )
        if not force and not self._expired(rec):
            return rec
        raise ProviderError(
            f"Refreshing this connection failed at the provider ({backoff.reason}) "
            f"{backoff.failures} time(s) in a row; the next attempt is allowed in "
            f"{retry_after}s. Try again then.",
            retry_after=retry_after,
        )

    @staticmethod
    def _raise_if_needs_reauth(rec: ConnectionRecord) -> None:
        if rec.needs_reauth:
            raise ReauthorizationRequired(rec.integration, rec.name, "a refresh was refused")

    def _provider_for(self, rec: ConnectionRecord, client: OAuthClient | None = None) -> ProviderClient:
        if client is None:
            client = self.storage.get_client(rec.integration, uuid=rec.oauth_client_uuid)
        if client is None:
            raise ReauthorizationRequired(rec.integration, rec.name, "its OAuth client is gone")
        return ProviderClient.for_client(
            client, self.encryptor, self.outbound, rec.oauth_url_subdomain, app=self.app
        )

    def _refresh_locked(
        self,
        current: ConnectionRecord,
        lease: Lease,
        taken_at: float,
        *,
        had_backoff: bool,
        client: OAuthClient | None,
    ) -> _Outcome:
        """Call the provider and store the result; the caller holds ``lease``.

        ``client`` is the connection's OAuth client as read with it.
        """
        if current.grant_type != "client_credentials" and current.refresh_token_enc is None:
            # Not marked needs_reauth: nothing was refused, the access token may still
            # work until it expires - but only a new flow can give a refresh token.
            raise ReauthorizationRequired(
                current.integration,
                current.name,
                "it has no refresh token, so it cannot be refreshed; start the flow with "
                "allow_offline_access if the provider only issues one for offline access",
            )
        provider = self._provider_for(current, client)  # None: looked up again, then refused
        try:
            with LeaseKeeper(self.storage, lease, self.lease_ttl, taken_at) as keeper:
                if current.grant_type == "client_credentials":
                    resp = provider.client_credentials(current.permission_scope, deadline=keeper.deadline)
                else:
                    assert current.refresh_token_enc is not None
                    resp = provider.refresh(
                        self.encryptor.decrypt(current.refresh_token_enc), deadline=keeper.deadline
                    )
        except TokenRequestRejected as exc:
            refused = exc.error in REAUTH_ERRORS or exc.error in provider.client.quirks.reauth_errors
            self._send_failed(current, exc.error, needs_reauth=refused, backoff_started=not had_backoff)
            if refused:
                return _Outcome(self._mark_needs_reauth(current, exc.error, lease))
            return self._failed(current, exc, exc.error)
        except ProviderError as exc:
            self._send_failed(current, "provider_error", needs_reauth=False, backoff_started=not had_backoff)
            return self._failed(current, exc, "provider_error")
        updated = self.apply_token(current, resp, provider.client)
        stored = self.storage.update_connection(
            updated, expected_version=current.version, lease=lease, now=utcnow()
        )
        if stored is None:
            # The row moved or the lease lapsed under us: never overwrite the newer state.
            log.error(
                "A refresh of connection %s of %s finished after its lease was lost; its "
                "result was discarded.",
                current.uuid,
                current.integration,
            )
            return _Outcome(self.find(current.integration, uuid=current.uuid))
        if had_backoff:
            self.storage.clear_refresh_backoff(current.uuid)

        def announce() -> None:
            self.changed(stored.integration, stored.name)
            signals.connection_refreshed.send(
                self.app,
                integration=stored.integration,
                name=stored.name,
                uuid=stored.uuid,
                token_expiry=stored.token_expiry,
            )

        return _Outcome(stored, announce=announce)

    def _failed(self, current: ConnectionRecord, exc: ProviderError, reason: str) -> _Outcome:
        """Record the failure (starting or growing the back-off); every caller decides
        its answer from the outcome (:meth:`_answer`)."""
        backoff = self.storage.record_refresh_failure(
            current.uuid, reason, utcnow(), base=BACKOFF_BASE, cap=self.backoff_max
        )
        retry_after = max(1, math.ceil((backoff.retry_at - utcnow()).total_seconds()))
        log.warning(
            "Refreshing connection %s of %s failed (%s, %d in a row): %s Next attempt in %ss.",
            current.uuid,
            current.integration,
            reason,
            backoff.failures,
            exc.message,
            retry_after,
        )
        exc.retry_after = retry_after
        return _Outcome(current, backoff=backoff, failure=exc)

    def _mark_needs_reauth(self, current: ConnectionRecord, error: str, lease: Lease) -> ConnectionRecord:
        marked = self.storage.update_connection(
            self._rotated(current).replace(needs_reauth=True, updated_at=utcnow()),
            expected_version=current.version,
            lease=lease,
            now=utcnow(),
        )
        if marked is None:
            # The refresh token changed meanwhile (a re-authorization), or our lease
            # lapsed and another refresher owns the row now: use the newer state.
            latest = self.find(current.integration, uuid=current.uuid)
            if not latest.needs_reauth:
                return latest
        else:
            self.changed(current.integration, current.name)
            events.record(
                "connection.needs_reauth", current.integration, connection=current, app=self.app, reason=error
            )
        log.warning(
            "Connection %s of %s needs re-authorization (%s).",
            current.uuid,
            current.integration,
            error,
        )
        raise ReauthorizationRequired(current.integration, current.name, error)

    def _rotated(self, rec: ConnectionRecord) -> ConnectionRecord:
        """``rec`` with every ciphertext under the newest key, for writes that carry it on."""
        enc = self.encryptor
        return rec.replace(
            access_token_enc=enc.rotate(rec.access_token_enc),
            refresh_token_enc=None if rec.refresh_token_enc is None else enc.rotate(rec.refresh_token_enc),
            token_response_enc=(
                None if rec.token_response_enc is None else enc.rotate(rec.token_response_enc)
            ),
        )

    def _send_failed(
        self, rec: ConnectionRecord, reason: str, *, needs_reauth: bool, backoff_started: bool
    ) -> None:
        """``backoff_started``: this failure starts the connection's back-off (none was
        recorded when the lease was taken); never for a refusal, which backs nothing off."""
        signals.connection_refresh_failed.send(
            self.app,
            integration=rec.integration,
            name=rec.name,
            uuid=rec.uuid,
            reason=reason,
            needs_reauth=needs_reauth,
            backoff_started=backoff_started and not needs_reauth,
        )

    def apply_token(
        self, rec: ConnectionRecord, resp: TokenResponse, client: OAuthClient
    ) -> ConnectionRecord:
        """``rec`` with the new tokens; a response without a refresh token keeps the old one.

        ``client`` is the one the refresh was made with (already read; not read again)."""
        now = utcnow()
        quirks = client.quirks
        fields = resp.stored_fields(
            self.encryptor,
            now,
            kept_refresh_token=self.encryptor.decrypt_optional(rec.refresh_token_enc),
            kept_scope=rec.permission_scope,
            default_lifetime=quirks.default_token_lifetime,
            default_refresh_lifetime=quirks.default_refresh_token_lifetime,
        )
        fresh = resp.metadata(quirks.metadata_from_token)
        metadata = {**rec.metadata, **fresh}
        return rec.replace(**fields, needs_reauth=False, updated_at=now, metadata=metadata)

    # -- metadata ------------------------------------------------------------------
    def update_metadata(self, rec: ConnectionRecord, changes: Mapping[str, Any]) -> ConnectionRecord:
        """Merge ``changes`` into the connection's metadata (``None`` deletes a key).

        A compare-and-swap on the row's version, retried on a concurrent write, so a
        refresh landing meanwhile is never undone.  ``updated_at`` stays: it dates the
        tokens, and the refresh schedule is computed from it.
        """
        changes = metadata_changes(changes)
        for _ in range(10):
            merged = {k: val for k, val in {**rec.metadata, **changes}.items() if val is not None}
            if len(json.dumps(merged)) > METADATA_MAX_BYTES:
                raise InvalidValue("metadata", f"must stay under {METADATA_MAX_BYTES} bytes as JSON")
            stored = self.storage.update_connection(
                rec.replace(metadata=merged), expected_version=rec.version
            )
            if stored is not None:
                self.changed(stored.integration, stored.name)
                return stored
            rec = self.find(rec.integration, uuid=rec.uuid)
        raise ProviderError("The connection kept changing while its metadata was updated. Try again.")

    # -- delete ------------------------------------------------------------------
    def delete(self, rec: ConnectionRecord) -> bool | None:
        """Delete locally, revoking at the provider first when it supports RFC 7009.

        Returns whether revocation succeeded (None when not attempted).  A failed
        revocation is logged and reported, but the local delete still happens: the
        host asked to forget the connection.
        """
        revoked: bool | None = None
        client = None
        if rec.oauth_client_uuid is not None:  # credential types have nothing to revoke
            client = self.storage.get_client(rec.integration, uuid=rec.oauth_client_uuid)
        if client is not None and client.revocation_url:
            revoked = True
            try:
                provider = self._provider_for(rec, client)
                if rec.refresh_token_enc is not None:
                    provider.revoke(self.encryptor.decrypt(rec.refresh_token_enc), "refresh_token")
                provider.revoke(self.encryptor.decrypt(rec.access_token_enc), "access_token")
            except ZISError as exc:  # unreachable, refused, bad subdomain, undecryptable
                revoked = False
                log.warning("Revoking connection %s at the provider failed: %s", rec.uuid, exc.message)
        self.storage.delete_connection(rec.integration, rec.uuid)
        self.changed(rec.integration, rec.name)
        signals.connection_deleted.send(
            self.app, integration=rec.integration, name=rec.name, uuid=rec.uuid, revoked=revoked
        )
        return revoked
