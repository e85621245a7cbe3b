"""The refresh protocol: one refresh of a due token across threads, processes and machines.

The refresh lock is the storage's lease (a row in SQL, so it holds across threads,
processes and machines).  The winner re-reads the row after taking the lease and
refreshes only if it is still due.  While its provider call is in flight a keeper
thread renews the lease, and the call's deadline never passes the moment the lease is
known to be held until: a refresher whose renewals fail gives up before anyone else
can take over, so a refresh token is never sent twice.  Its write is conditioned on
both the row's ``version`` and the lease, in one atomic step.  In each process one
caller per connection deals with storage while the others wait in-process for its
result, handed from one waiter to the next (:mod:`.singleflight`); when it lost the
lease to another process it waits for the release (heard through the storage's
channel, else polled) and uses the winner's result.  A crashed refresher's lease
simply expires after ``ZIS_REFRESH_LEASE_TTL`` seconds.

A refresh that fails at the provider is recorded apart from the connection row
(:class:`~flask_zis_connections.domain.RefreshBackoff`) and backs the connection off
exponentially, across every process: until ``retry_at`` callers get the still-valid
token, or fail fast with a ``Retry-After`` - the provider is not called again.

Over 400 lines on purpose: the lease, the back-off, the single flight and the failure
handling are one protocol, read together or misread.  What the refresh stores (the new
tokens of an answer) and everything else about a connection's tokens is
:mod:`.lifecycle`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import events, signals
from .domain import ConnectionRecord, Lease, OAuthClient, RefreshBackoff, RefreshState, TokenRead, utcnow
from .errors import ConnectionNotFound, ProviderError, ReauthorizationRequired, WrongConnectionType
from .lease import LeaseKeeper
from .provider_client import REAUTH_ERRORS
from .singleflight import FlightTimeout, SingleFlight
from .storage.releases import LeaseReleases
from .token_answer import TokenRequestRejected

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = logging.getLogger("flask_zis_connections")

#: Polling for another process's lease holder, when its release cannot be heard: the
#: first and the longest pause, in seconds, and the pause as a share of the wait so far.
_POLL_START = 0.005
_POLL_MAX = 0.2
_POLL_SHARE = 1 / 100
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


@dataclass(frozen=True)
class _Seen:
    """The state of a connection a caller arrived with: the whole row, or only what a
    narrow read (:class:`~.domain.TokenRead`) showed - enough to take the lease and to
    tell a newer write, so the row is read by nobody before the lease holder reads it.
    """

    integration: str
    name: str
    uuid: str
    version: int
    #: The whole row, when the caller read it.
    record: ConnectionRecord | None = None

    @classmethod
    def of(cls, rec: ConnectionRecord) -> _Seen:
        return cls(rec.integration, rec.name, rec.uuid, rec.version, rec)


def _waited_too_long() -> ProviderError:
    return ProviderError("Timed out waiting for a concurrent refresh of this connection. Try again.")


def expired(rec: ConnectionRecord) -> bool:
    """Whether ``rec``'s access token has expired (not merely become due)."""
    return rec.token_expiry is not None and rec.token_expiry <= utcnow()


class Refresher:
    """The refresh protocol of one app's :class:`~.lifecycle.Lifecycle`.

    It reads the lifecycle's settings (storage, lease TTL, timeouts) through ``life``
    and stores a refresh's answer with :meth:`~.lifecycle.Lifecycle.apply_token`.
    """

    def __init__(self, life: Lifecycle) -> None:
        self.life = life
        #: One caller per connection deals with storage at a time; the others wait for it.
        self.flights: SingleFlight[_Outcome] = SingleFlight()

    def joined(self, integration: str, name: str) -> ConnectionRecord | None:
        """What a refresh of this connection running in this process leaves, for a
        caller that has not read the row: waited for, and answered as a caller waiting
        for that flight is (its fresh row, or the back-off or error it ended in); None
        when none runs, or when its outcome does not serve such a caller (the row is
        still due): that caller reads the row as usual.

        In a burst on an expired token most requests of a process arrive while its one
        refresh is under way; joining it before reading anything spares each of them
        its reads, and the refresh itself the GIL they would hold meanwhile.  A joiner
        gets the row the refresh stored, as a caller that read it just then would have.
        """
        uuid = self.flights.key_for((integration, name))
        if uuid is None:
            return None
        try:
            outcome = self.flights.join(uuid, self._wait_limit())
        except FlightTimeout:
            raise _waited_too_long() from None
        if outcome is None or outcome.record.uuid != uuid:
            return None
        return self._answer(_Seen.of(outcome.record), False, outcome, led=False)

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
        if not force and not self.life.is_due(rec):
            return rec  # also every credential connection: nothing of theirs expires
        self._raise_if_needs_reauth(rec)
        return self._settled(_Seen.of(rec), force)

    def refresh_due(self, integration: str, name: str, head: TokenRead) -> ConnectionRecord:
        """:meth:`ensure_fresh` for a caller whose narrow read ``head`` of an OAuth
        connection found its token due: the whole row is not read first.

        The lease holder reads the row (with its back-off and client) once it holds the
        lease, so a whole-row read before is one round trip more on the way to the
        provider - and in a burst on an expired token every request that arrived before
        its process's refresh started made it, through the engine's pool, which opened
        connections for them while the refresh waited for its own.
        """
        if head.needs_reauth:
            raise ReauthorizationRequired(integration, name, "a refresh was refused")
        return self._settled(_Seen(integration, name, head.uuid, head.version), False)

    def _settled(self, seen: _Seen, force: bool) -> ConnectionRecord:
        """The row once ``seen``'s caller needs nothing more of a refresh: run or
        joined in this process (:meth:`_settle`), gone round again when what it left
        was not enough (a forced refresh that arrived after the one just stored)."""
        deadline = time.monotonic() + self._wait_limit()
        while True:
            settle = functools.partial(self._settle, seen, force)
            try:
                # Found by the connection's name meanwhile (:meth:`joined`).
                outcome, led = self.flights.run(
                    seen.uuid, settle, deadline - time.monotonic(), alias=(seen.integration, seen.name)
                )
            except FlightTimeout:
                raise _waited_too_long() from None
            if led and outcome.announce is not None:
                outcome.announce()
            answer = self._answer(seen, force, outcome, led=led)
            if answer is not None:
                return answer
            if outcome.record.version > seen.version:
                seen = _Seen.of(outcome.record)  # written, but not enough for this caller
            if time.monotonic() > deadline:
                raise _waited_too_long()

    def _wait_limit(self) -> float:
        """The longest a caller waits for a refresh: a holder's lease, its provider
        call and some slack."""
        return self.life.lease_ttl + self.life.http_timeout + 5

    def _settle(self, seen: _Seen, force: bool) -> _Outcome:
        """Bring the connection where ``seen``'s caller needs it, or find why not.

        Run by one thread per connection and process at a time.  It takes the lease
        and refreshes, or - when another process holds the lease - waits for that
        holder to let go (woken by the storage's release channel, polling when there
        is none or it is down) and reads what it left.
        """
        key = f"refresh:{seen.uuid}"
        # Armed first, which also starts the storage's listener for other processes'
        # releases: it connects while the lease is tried.
        with self.life.storage.watch_lease(key) as released:
            owner = uuidlib.uuid4().hex
            started = time.monotonic()
            deadline = started + self._wait_limit()
            releases = self.life.storage.lease_releases()
            tried = -math.inf
            while True:
                # An attempt is a write (on SQLite it queues on the file lock with the
                # holder's own writes): made again only once a release was heard, or a
                # while after the last one (a crashed holder's lease expires unheard).
                # In between, a poll only reads the row.
                if released.is_set() or time.monotonic() - tried >= _SAFETY_NET:
                    released.clear()  # before the attempt: a release after it is never missed
                    taken_at = tried = time.monotonic()
                    # Refused while the connection backs off, in the same step; the row,
                    # its back-off and its client are read just after (with it where the
                    # storage can), for the holder to refresh from and for the others
                    # to find the back-off that may have refused them.
                    taken, state = self._take_lease(key, owner, seen)
                    try:
                        if state is None:
                            raise ConnectionNotFound(seen.integration, uuid=seen.uuid)
                        if taken:
                            return self._settle_locked(seen, force, Lease(key, owner), taken_at, state)
                    finally:
                        if taken:
                            self.life.storage.release_lease(key, owner)
                    backoff = state.backoff
                    if backoff is not None and backoff.retry_at > utcnow():
                        return _Outcome(state.record, backoff=backoff)
                heard = released.wait(self._lease_pause(releases, time.monotonic() - started))
                # A look is the narrow read, and the whole row only once the version
                # moved - or at once when a release was heard: its holder most likely
                # wrote the row, and every waiter of this process waits for that read.
                moved = heard
                if not moved:
                    head = self.life.storage.read_token(seen.integration, seen.name)
                    moved = head is None or head.uuid != seen.uuid or head.version != seen.version
                if moved:
                    current = self.life.find(seen.integration, uuid=seen.uuid)
                    if current.version != seen.version:
                        if current.needs_reauth or not expired(current):
                            return _Outcome(current)  # the lease holder's result
                        seen = _Seen.of(current)  # written but already expired: take the lease and refresh
                if time.monotonic() > deadline:
                    raise _waited_too_long()

    @staticmethod
    def _lease_pause(releases: LeaseReleases, waited: float) -> float:
        """How long to wait for another process's lease holder before looking again.

        Releases heard across processes wake the waiter, so the pause is only a safety
        net (a crashed holder's lease expires unannounced).  A listener still
        connecting wakes it when it is up (a release may have been missed until then).
        Unheard (SQLite, or PostgreSQL without psycopg 3's ``LISTEN``), it is a poll
        whose pause is a hundredth of the wait so far (at least 5 ms): an answer that
        comes late costs at most about 1%, and a look is the narrow read of
        ``get_token``, made by one caller per process.  Behind a provider answering in
        0.5 s, the other processes' waiters learned of the release 13-15 ms after it on
        average at a fortieth and 7-8 ms at a hundredth, for about 100 looks per
        process instead of 75.
        """
        if releases.across_processes.is_set() or releases.connecting.is_set():
            return _SAFETY_NET
        return min(_POLL_MAX, max(_POLL_START, waited * _POLL_SHARE))

    def _take_lease(self, key: str, owner: str, seen: _Seen) -> tuple[bool, RefreshState | None]:
        """One lease attempt and the state read after it; a failure (the lease may
        have been taken before it) releases the lease first."""
        storage = self.life.storage
        try:
            return storage.take_lease_and_read(
                key, owner, self.life.lease_ttl, utcnow(), integration=seen.integration, uuid=seen.uuid
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the failure itself is what the caller gets
                storage.release_lease(key, owner)
            raise

    def _settle_locked(
        self, seen: _Seen, force: bool, lease: Lease, taken_at: float, state: RefreshState
    ) -> _Outcome:
        """Holding the lease, with the state read after taking it (the row, its
        back-off and its client): refresh only if that is still needed."""
        current = state.record
        if current.needs_reauth:
            return _Outcome(current)
        if current.version != seen.version and not expired(current):
            return _Outcome(current)  # written after this caller arrived: use it
        if not (force or self.life.is_due(current)):
            return _Outcome(current)
        # A refresher that held the lease before us may have failed (after this
        # caller's lease attempt read no back-off).
        stored_backoff = state.backoff
        if stored_backoff is not None and stored_backoff.retry_at > utcnow():
            return _Outcome(current, backoff=stored_backoff)
        return self._refresh_locked(
            current, lease, taken_at, had_backoff=stored_backoff is not None, client=state.client
        )

    def _answer(self, seen: _Seen, force: bool, outcome: _Outcome, *, led: bool) -> ConnectionRecord | None:
        """What one caller (``seen`` as it arrived, ``force``) gets from a flight's
        outcome; None when that does not serve it and it must go round again.

        The caller that led the flight gets a failed provider call's own error; the
        others find the back-off it started, as they would have had they taken the
        lease after it.
        """
        current = outcome.record
        if current.version < seen.version:
            # The caller saw a later write than the flight did: its own row, read now
            # if it came with a narrow read only.
            current = seen.record or self.life.find(seen.integration, uuid=seen.uuid)
        self._raise_if_needs_reauth(current)
        failure = outcome.failure
        if failure is not None and led:
            if not force and not expired(current):
                return current  # still valid: the caller keeps working meanwhile
            raise failure
        if outcome.backoff is not None:
            return self._backed_off(current, outcome.backoff, force)
        if current.version != seen.version and not expired(current):
            return current  # written after this caller arrived: its refresh too
        if not (force or self.life.is_due(current)):
            return current
        return None

    def _backed_off(self, rec: ConnectionRecord, backoff: RefreshBackoff, force: bool) -> ConnectionRecord:
        """During a back-off: the token while it is still valid, else fail fast.

        A due token that has not expired still works at the provider's API, so handing
        it out is better than an error; an expired one (or an explicit refresh) gets a
        ``ProviderError`` carrying ``retry_after``, which the HTTP API sends as
        ``Retry-After`` with its 502.
        """
        retry_after = max(1, math.ceil((backoff.retry_at - utcnow()).total_seconds()))
        signals.refresh_backed_off.send(
            self.life.app, integration=rec.integration, name=rec.name, uuid=rec.uuid, retry_after=retry_after
        )
        if not force and not expired(rec):
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
        provider = self.life.provider_for(current, client)  # None: looked up again, then refused
        try:
            with LeaseKeeper(self.life.storage, lease, self.life.lease_ttl, taken_at) as keeper:
                if current.grant_type == "client_credentials":
                    resp = provider.client_credentials(current.permission_scope, deadline=keeper.deadline)
                else:
                    assert current.refresh_token_enc is not None
                    resp = provider.refresh(
                        self.life.encryptor.decrypt(current.refresh_token_enc), deadline=keeper.deadline
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
        updated = self.life.apply_token(current, resp, provider.client)
        stored = self.life.storage.update_connection(
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
            return _Outcome(self.life.find(current.integration, uuid=current.uuid))
        if had_backoff:
            self.life.storage.clear_refresh_backoff(current.uuid)

        def announce() -> None:
            self.life.changed(stored.integration, stored.name)
            signals.connection_refreshed.send(
                self.life.app,
                integration=stored.integration,
                name=stored.name,
                uuid=stored.uuid,
                token_expiry=stored.token_expiry,
            )

        return _Outcome(stored, announce=announce)

    def _failed(self, current: ConnectionRecord, exc: ProviderError, reason: str) -> _Outcome:
        """Record the failure (starting or growing the back-off); every caller decides
        its answer from the outcome (:meth:`_answer`)."""
        backoff = self.life.storage.record_refresh_failure(
            current.uuid, reason, utcnow(), base=BACKOFF_BASE, cap=self.life.backoff_max
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
        marked = self.life.storage.update_connection(
            self.life.rotated(current).replace(needs_reauth=True, updated_at=utcnow()),
            expected_version=current.version,
            lease=lease,
            now=utcnow(),
        )
        if marked is None:
            # The refresh token changed meanwhile (a re-authorization), or our lease
            # lapsed and another refresher owns the row now: use the newer state.
            latest = self.life.find(current.integration, uuid=current.uuid)
            if not latest.needs_reauth:
                return latest
        else:
            self.life.changed(current.integration, current.name)
            events.record(
                "connection.needs_reauth",
                current.integration,
                connection=current,
                app=self.life.app,
                reason=error,
            )
        log.warning(
            "Connection %s of %s needs re-authorization (%s).",
            current.uuid,
            current.integration,
            error,
        )
        raise ReauthorizationRequired(current.integration, current.name, error)

    def _send_failed(
        self, rec: ConnectionRecord, reason: str, *, needs_reauth: bool, backoff_started: bool
    ) -> None:
        """``backoff_started``: this failure starts the connection's back-off (none was
        recorded when the lease was taken); never for a refusal, which backs nothing off."""
        signals.connection_refresh_failed.send(
            self.life.app,
            integration=rec.integration,
            name=rec.name,
            uuid=rec.uuid,
            reason=reason,
            needs_reauth=needs_reauth,
            backoff_started=backoff_started and not needs_reauth,
        )
