"""The token lifecycle: read a token (from the cache, a narrow read or the whole row),
and everything else that changes a connection's tokens - metadata, delete with
revocation, the new tokens of a refresh.

The refresh itself - once across threads, processes and machines, with its lease, its
back-off and its single flight per process - is :mod:`.refresh`; :meth:`Lifecycle.ensure_fresh`
hands a due connection to it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask

from . import signals
from .credentials import secret_of
from .crypto import Encryptor
from .domain import (
    Connection,
    ConnectionRecord,
    OAuthClient,
    TokenRead,
    utcnow,
)
from .errors import (
    ConnectionNotFound,
    InvalidValue,
    ProviderError,
    ReauthorizationRequired,
    ZISError,
)
from .outbound import OutboundPolicy
from .provider_client import ProviderClient
from .refresh import Refresher
from .storage import Storage
from .storage.times import from_ms, to_ms
from .token_answer import TokenResponse
from .token_cache import TokenCache
from .validation import METADATA_MAX_BYTES as METADATA_MAX_BYTES
from .validation import metadata_changes as metadata_changes

log = logging.getLogger("flask_zis_connections")


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
    #: The in-process cache of decrypted tokens (None: ``ZIS_TOKEN_CACHE_TTL`` is 0).
    token_cache: TokenCache | None = field(default=None, repr=False)
    _leeway_ms: float = field(init=False, repr=False)
    #: What :meth:`time_get_token` installed (None: metrics are off).
    _observe: Callable[[float], None] | None = field(default=None, init=False, repr=False)
    #: The refresh protocol (:mod:`.refresh`), one per app.
    _refresher: Refresher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._leeway_ms = self.leeway * 1000
        self._refresher = Refresher(self)

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

    def get_token(self, integration: str, name: str) -> str:
        """The hot path: a cache hit, else one indexed read and one decrypt while the
        token is fresh.

        A hit returns from here, with no call layer below it: each one more was about a
        tenth of a hit's time.  Metrics time the calls by wrapping this method
        (:meth:`time_get_token`), not by a check in it.
        """
        cache = self.token_cache
        if cache is None:
            return self._read_token(integration, name, None, 0)
        token = cache.get(integration, name)
        if token is not None:
            return token
        # Before the read: a write meanwhile wins.
        return self._read_token(integration, name, cache, cache.generation)

    @property
    def observe_get_token(self) -> Callable[[float], None] | None:
        """What gets the seconds of every :meth:`get_token` call (None: nothing does)."""
        return self._observe

    def time_get_token(self, observe: Callable[[float], None] | None) -> None:
        """Pass the seconds of every :meth:`get_token` call to ``observe`` from now on
        (None: stop).

        The timed call is set on this instance over the method, so an app without
        metrics runs :meth:`get_token` with no branch for them.
        """
        self._observe = observe
        if observe is None:
            self.__dict__.pop("get_token", None)
            return
        plain = Lifecycle.get_token

        def timed(integration: str, name: str) -> str:
            started = time.perf_counter()
            try:
                return plain(self, integration, name)
            finally:
                observe(time.perf_counter() - started)

        self.__dict__["get_token"] = timed

    def _read_token(self, integration: str, name: str, cache: TokenCache | None, generation: int) -> str:
        """``get_token`` from storage (``cache`` missed, as of ``generation``)."""
        # A refresh of it under way in this process: its result, without a read.
        running = self._refresher.joined(integration, name)
        if running is not None:
            return self.encryptor.decrypt(running.access_token_enc)
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
            return self.encryptor.decrypt(self.refresh_due(integration, name, head).access_token_enc)
        return self._get_token_of_record(integration, name, generation)

    def _get_token_of_record(self, integration: str, name: str, generation: int) -> str:
        """``get_token`` of a credential connection (its secret, or why there is none),
        or of an OAuth one whose row changed since its narrow read."""
        cache = self.token_cache
        rec = self.storage.get_connection(integration, name=name)
        if rec is None:
            raise ConnectionNotFound(integration, name=name)
        seconds: float | None = None
        if rec.type != "oauth":
            token = secret_of(rec, self.encryptor)
        else:
            now = utcnow()
            due_at = self.due_at(rec)  # what is_due() compares, worked out once
            if due_at is not None and due_at <= now:
                return self.encryptor.decrypt(self.ensure_fresh(rec, force=False).access_token_enc)
            token = self.encryptor.decrypt(rec.access_token_enc)  # refreshed meanwhile
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
        due_ms = self.record_due_ms(rec)
        return None if due_ms is None else from_ms(due_ms)

    def record_due_ms(self, rec: ConnectionRecord) -> float | None:
        """:meth:`due_at` in epoch milliseconds (None: never)."""
        expiry = rec.token_expiry
        return None if expiry is None else self._due_ms(to_ms(expiry), to_ms(rec.updated_at))

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
        """Refresh ``rec`` if due (or ``force``), once across all callers: see
        :meth:`.refresh.Refresher.ensure_fresh`."""
        return self._refresher.ensure_fresh(rec, force=force)

    def refresh_due(self, integration: str, name: str, head: TokenRead) -> ConnectionRecord:
        """The row of a connection whose narrow read ``head`` found its OAuth token due,
        refreshed once across all callers without reading the whole row first: see
        :meth:`.refresh.Refresher.refresh_due`."""
        return self._refresher.refresh_due(integration, name, head)

    def joined_refresh(self, integration: str, name: str) -> ConnectionRecord | None:
        """The fresh row a refresh of this connection running in this process leaves,
        waited for; None when there is none to join (read the row as usual)."""
        return self._refresher.joined(integration, name)

    def provider_for(self, rec: ConnectionRecord, client: OAuthClient | None = None) -> ProviderClient:
        if client is None:
            client = self.storage.get_client(rec.integration, uuid=rec.oauth_client_uuid)
        if client is None:
            raise ReauthorizationRequired(rec.integration, rec.name, "its OAuth client is gone")
        return ProviderClient.for_client(
            client, self.encryptor, self.outbound, rec.oauth_url_subdomain, app=self.app
        )

    def rotated(self, rec: ConnectionRecord) -> ConnectionRecord:
        """``rec`` with every ciphertext under the newest key, for writes that carry it on."""
        enc = self.encryptor
        return rec.replace(
            access_token_enc=enc.rotate(rec.access_token_enc),
            refresh_token_enc=None if rec.refresh_token_enc is None else enc.rotate(rec.refresh_token_enc),
            token_response_enc=(
                None if rec.token_response_enc is None else enc.rotate(rec.token_response_enc)
            ),
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
                provider = self.provider_for(rec, client)
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
