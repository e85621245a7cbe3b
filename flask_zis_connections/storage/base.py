"""The storage interface every backend implements.

Backends speak domain values (:mod:`flask_zis_connections.models`) and own every
atomic step: consuming a flow or a verification code exactly once, the refresh lease,
and compare-and-swap writes.  Views and the token lifecycle never lock by hand.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from datetime import datetime, timedelta

from ..errors import Conflict, InvalidValue
from ..models import (
    ApiToken,
    ConnectionRecord,
    Lease,
    OAuthClient,
    Page,
    PendingFlow,
    RefreshBackoff,
    VerificationCode,
)


class Storage(abc.ABC):
    """Abstract storage.  All datetimes in and out are timezone-aware UTC."""

    # -- life cycle ------------------------------------------------------------
    def create_tables(self) -> None:  # noqa: B027 - optional hook
        """Create missing tables (no-op for backends without a schema)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections/pools."""

    def healthcheck(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~flask_zis_connections.errors.StorageUnavailable` when unusable."""

    # -- OAuth clients ---------------------------------------------------------
    @abc.abstractmethod
    def add_client(self, client: OAuthClient) -> OAuthClient:
        """Insert; raise ``Conflict`` when (integration, name) exists."""

    @abc.abstractmethod
    def update_client(self, client: OAuthClient, *, expected_version: int | None = None) -> OAuthClient:
        """Replace the row with ``client.uuid``; its version becomes the stored one + 1.

        ``Conflict`` on a duplicate name, or - when ``expected_version`` is given - when
        the stored version differs (someone else updated it since it was read);
        ``OAuthClientNotFound`` when it is gone."""

    @abc.abstractmethod
    def get_client(
        self, integration: str, *, uuid: str | None = None, name: str | None = None
    ) -> OAuthClient | None:
        """Look up by uuid or by name within the integration."""

    @abc.abstractmethod
    def list_clients(self, integration: str | None = None) -> list[OAuthClient]:
        """Clients of one integration (or all), ordered by creation."""

    @abc.abstractmethod
    def delete_client(self, integration: str, uuid: str) -> bool:
        """Delete the client *and its connections*; False when it did not exist."""

    # -- connections -----------------------------------------------------------
    @abc.abstractmethod
    def get_connection(
        self, integration: str, *, name: str | None = None, uuid: str | None = None
    ) -> ConnectionRecord | None:
        """One indexed read; the hot path of ``get_token``."""

    @abc.abstractmethod
    def upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Insert, or replace the tokens of the existing (integration, name) row.

        The existing row keeps its uuid, ``created_at`` and gets ``version + 1``;
        ``needs_reauth`` is cleared.  Returns what is stored.
        """

    @abc.abstractmethod
    def update_connection(
        self, record: ConnectionRecord, *, expected_version: int,
        lease: Lease | None = None, now: datetime | None = None,
    ) -> ConnectionRecord | None:
        """Compare-and-swap: write ``record`` (version becomes ``expected_version + 1``)
        only if the stored version is ``expected_version`` - and, when ``lease`` is
        given, only if that lease is still held by its owner at ``now``, checked in the
        same atomic step; else return None.  A refresher whose lease lapsed can thus
        never write, whatever happened meanwhile."""

    @abc.abstractmethod
    def delete_connection(self, integration: str, uuid: str) -> bool:
        """Delete one connection; False when it did not exist."""

    @abc.abstractmethod
    def list_connections(self, integration: str, *, limit: int = 100, cursor: str | None = None) -> Page:
        """Stable order (insertion), opaque ``cursor`` for the next page."""

    @abc.abstractmethod
    def connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]:
        """Connections (any integration) with ``token_expiry < moment`` and not
        ``needs_reauth``: the ``refresh-due`` job's worklist."""

    # -- flows -----------------------------------------------------------------
    @abc.abstractmethod
    def add_flow(self, flow: PendingFlow) -> None:
        """Record a new pending flow."""

    @abc.abstractmethod
    def get_flow(self, flow_id: str) -> PendingFlow | None:
        """Read without changing it."""

    @abc.abstractmethod
    def bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        """Atomically move ``pending`` -> ``redirected`` (if not expired) recording the
        browser binding; None when the flow is unknown, expired or already used."""

    @abc.abstractmethod
    def consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        """Atomically move ``redirected`` -> ``consumed`` if the binding matches and it
        has not expired.  Exactly one of many concurrent callers gets the flow."""

    # -- verification codes ----------------------------------------------------
    @abc.abstractmethod
    def add_verification_code(self, code: VerificationCode) -> None:
        """Record a new code (only its hash is stored)."""

    @abc.abstractmethod
    def consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None:
        """Atomically take the code if it belongs to ``integration`` and has not expired.
        A code of another integration is left untouched."""

    # -- API tokens --------------------------------------------------------------
    @abc.abstractmethod
    def add_api_token(self, token: ApiToken) -> None:
        """Record a new API token (hash only)."""

    @abc.abstractmethod
    def get_api_token(self, token_hash: str) -> ApiToken | None:
        """The token with that hash, if it exists and is not revoked."""

    @abc.abstractmethod
    def revoke_api_token(self, token_id_or_hash: str) -> bool:
        """Revoke by id or by hash; False when nothing matched."""

    @abc.abstractmethod
    def list_api_tokens(self, integration: str | None = None) -> list[ApiToken]:
        """Non-revoked tokens (hashes only), for the CLI."""

    # -- refresh lease -----------------------------------------------------------
    @abc.abstractmethod
    def acquire_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        """Take the lease ``key`` for ``ttl`` seconds if it is free or expired."""

    @abc.abstractmethod
    def renew_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        """Extend the lease to ``now + ttl`` if ``owner`` still holds it unexpired;
        False when it lapsed (or was taken over) - the holder must then stop."""

    @abc.abstractmethod
    def release_lease(self, key: str, owner: str) -> None:
        """Release it if ``owner`` still holds it (an expired, re-taken lease stays)."""

    @abc.abstractmethod
    def lease_holder(self, key: str, now: datetime) -> str | None:
        """The current unexpired holder, or None."""

    # -- refresh back-off ----------------------------------------------------------
    @abc.abstractmethod
    def record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, *, base: float, cap: float
    ) -> RefreshBackoff:
        """Count one more failed refresh and set ``retry_at`` to
        ``now + min(cap, base * 2 ** (failures - 1))``; return the new state."""

    @abc.abstractmethod
    def get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None:
        """The back-off state, or None after a success (or if it never failed)."""

    @abc.abstractmethod
    def clear_refresh_backoff(self, connection_uuid: str) -> None:
        """Forget the failures (a refresh or re-authorization succeeded)."""

    # -- maintenance -------------------------------------------------------------
    @abc.abstractmethod
    def reencrypt(self, rotate: Callable[[str], str]) -> int:
        """Apply ``rotate`` to every ciphertext column of every row; return rows changed.

        Each row is rewritten with a compare-and-swap on its old ciphertext, so a row
        updated concurrently (already under the newest key) is skipped, not clobbered.
        """

    @abc.abstractmethod
    def purge_expired(self, now: datetime) -> int:
        """Delete expired flows, verification codes and leases; return rows deleted."""


def client_conflict(client: OAuthClient) -> Conflict:
    """The one wording of a duplicate client name, whichever backend noticed it."""
    return Conflict(
        f"An OAuth client named {client.name!r} already exists for integration "
        f"{client.integration!r}. Choose another name or update the existing client."
    )


def stale_client(client: OAuthClient) -> Conflict:
    """The one wording of a lost update, whichever backend noticed it."""
    return Conflict(
        f"OAuth client {client.uuid!r} was changed by someone else since it was read. "
        "Read it again and re-apply your change."
    )


def backoff_delay(failures: int, *, base: float, cap: float) -> timedelta:
    """``base * 2 ** (failures - 1)`` seconds, at most ``cap``: 1, 2, 4, ... for base 1."""
    exponent = min(max(failures - 1, 0), 62)
    return timedelta(seconds=min(cap, base * 2.0**exponent))


#: Cursors are row sequence numbers that fit a signed 64-bit column.
_MAX_CURSOR = 2**63 - 1


def parse_cursor(cursor: str | None) -> int:
    """Cursors are the last row's sequence number; anything else is a client error."""
    if cursor is None:
        return 0
    # Bounded before int(): a megabyte of digits must be a 422, not CPU time or a
    # database overflow error.
    value = int(cursor) if len(cursor) <= 19 and cursor.isascii() and cursor.isdigit() else -1
    if not 0 <= value <= _MAX_CURSOR:
        raise InvalidValue("cursor", "not a cursor from a previous page; list again without a cursor")
    return value
