"""What a storage backend implements: protected hooks, one per public operation.

:class:`~.base.Storage` (the public interface) checks and normalises arguments and
then calls these, so a backend only ever sees arguments that are valid, with every
datetime truncated to whole milliseconds (:mod:`.times`); the public method of the
same name documents what each hook must do.  Hooks return what is stored.

Errors are wrapped once, here: a backend names the driver errors that mean "the
store cannot be reached" in :attr:`StorageHooks.unavailable_errors`, and every hook
it defines is wrapped when its class is created - not decorated one by one - to
raise :class:`~flask_zis_connections.errors.StorageUnavailable` (a 503 that points
at the configuration) instead of a 500 with a driver traceback.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from ..domain import (
    ApiToken,
    ConnectionRecord,
    Event,
    Lease,
    OAuthClient,
    PendingFlow,
    RefreshBackoff,
    VerificationCode,
)
from ..errors import StorageUnavailable

_R = TypeVar("_R")

#: Methods with a default body that a backend may override; guarded like the hooks.
#: ``_connection_status_counts`` reads every connection by default (see ``Storage``);
#: a backend that can count in one query overrides it.  ``_read_token`` cuts down the
#: whole record by default; a backend with a narrower read overrides it.  The two
#: refresher steps below compose other hooks by default; a backend that can do each in
#: one statement overrides them.
_OPTIONAL_HOOKS = frozenset(
    {
        "create_tables",
        "healthcheck",
        "_connection_status_counts",
        "_read_token",
        "_read_refresh_state",
        "_acquire_lease_unless_backed_off",
        "_take_lease_and_read",
    }
)


class StorageHooks(abc.ABC):
    """The abstract hooks, and the wrapping of a backend's errors around them."""

    #: Driver errors meaning "the store cannot be reached"; empty: nothing is wrapped.
    unavailable_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        errors = cls.unavailable_errors
        if not errors:
            return
        for name in StorageHooks.__abstractmethods__ | _OPTIONAL_HOOKS:
            hook = cls.__dict__.get(name)
            if hook is not None:
                setattr(cls, name, _guarded(hook, errors))

    def _unavailable(self, error: Exception) -> StorageUnavailable:
        """The error raised for one of :attr:`unavailable_errors`; the cause is chained.

        Backends override it to say what to check; the message must not carry a URL,
        host or password.
        """
        return StorageUnavailable(
            f"The connections storage is unavailable ({type(error).__name__}). "
            "Check its configuration and that it is reachable."
        )

    @abc.abstractmethod
    def _add_client(self, client: OAuthClient) -> OAuthClient: ...

    @abc.abstractmethod
    def _update_client(self, client: OAuthClient, expected_version: int | None) -> OAuthClient: ...

    @abc.abstractmethod
    def _get_client_by_uuid(self, integration: str, uuid: str) -> OAuthClient | None: ...

    @abc.abstractmethod
    def _get_client_by_name(self, integration: str, name: str) -> OAuthClient | None: ...

    @abc.abstractmethod
    def _list_clients(self, integration: str | None) -> list[OAuthClient]: ...

    @abc.abstractmethod
    def _delete_client(self, integration: str, uuid: str) -> bool: ...

    @abc.abstractmethod
    def _get_connection_by_uuid(self, integration: str, uuid: str) -> ConnectionRecord | None: ...

    @abc.abstractmethod
    def _get_connection_by_name(self, integration: str, name: str) -> ConnectionRecord | None: ...

    @abc.abstractmethod
    def _add_connection(self, record: ConnectionRecord) -> ConnectionRecord: ...

    @abc.abstractmethod
    def _upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord: ...

    @abc.abstractmethod
    def _update_connection(
        self, record: ConnectionRecord, expected_version: int, lease: Lease | None, now: datetime
    ) -> ConnectionRecord | None:
        """``now`` is when ``lease`` (if any) must still be held."""

    @abc.abstractmethod
    def _delete_connection(self, integration: str, uuid: str) -> bool: ...

    @abc.abstractmethod
    def _list_connections(
        self, integration: str, after: int, limit: int, before: int | None = None
    ) -> Sequence[tuple[int, ConnectionRecord]]:
        """At most ``limit`` connections of ``integration`` (every type) inserted after
        sequence number ``after``, each with its sequence number (a positive integer
        below 2**63 that never changes and is never reused: the cursor).

        Without ``before``: the first ``limit`` of them, in insertion order.  With it:
        only those before ``before``, the ``limit`` nearest to it, nearest first
        (reverse insertion order) - the page before a cursor."""

    @abc.abstractmethod
    def _connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]: ...

    @abc.abstractmethod
    def _add_flow(self, flow: PendingFlow) -> None: ...

    @abc.abstractmethod
    def _get_flow(self, flow_id: str) -> PendingFlow | None: ...

    @abc.abstractmethod
    def _bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None: ...

    @abc.abstractmethod
    def _consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None: ...

    @abc.abstractmethod
    def _add_verification_code(self, code: VerificationCode) -> None: ...

    @abc.abstractmethod
    def _consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None: ...

    @abc.abstractmethod
    def _add_api_token(self, token: ApiToken) -> None: ...

    @abc.abstractmethod
    def _get_api_token(self, token_hash: str) -> ApiToken | None: ...

    @abc.abstractmethod
    def _revoke_api_token(self, token_id_or_hash: str) -> bool: ...

    @abc.abstractmethod
    def _list_api_tokens(self, integration: str | None) -> list[ApiToken]: ...

    @abc.abstractmethod
    def _acquire_lease(self, key: str, owner: str, now: datetime, expires_at: datetime) -> bool: ...

    @abc.abstractmethod
    def _renew_lease(self, key: str, owner: str, now: datetime, expires_at: datetime) -> bool: ...

    @abc.abstractmethod
    def _release_lease(self, key: str, owner: str) -> None: ...

    @abc.abstractmethod
    def _lease_holder(self, key: str, now: datetime) -> str | None: ...

    @abc.abstractmethod
    def _record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, delay: Callable[[int], timedelta]
    ) -> RefreshBackoff:
        """``retry_at`` is ``now + delay(failures)`` truncated to the millisecond."""

    @abc.abstractmethod
    def _get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None: ...

    @abc.abstractmethod
    def _clear_refresh_backoff(self, connection_uuid: str) -> None: ...

    @abc.abstractmethod
    def _add_event(self, event: Event) -> Event:
        """Store ``event`` under the next id (greater than every id handed out before,
        in any integration, and never reused after a purge); return it with that id."""

    @abc.abstractmethod
    def _list_events(self, integration: str, before: int | None, limit: int) -> Sequence[Event]:
        """At most ``limit`` events of ``integration`` with an id below ``before`` (any
        id when None), newest (highest id) first."""

    @abc.abstractmethod
    def _purge_events(self, before: datetime) -> int: ...

    @abc.abstractmethod
    def _reencrypt(self, rotate: Callable[[str], str]) -> int: ...

    @abc.abstractmethod
    def _purge_expired(self, now: datetime) -> int: ...


def _guarded(hook: Callable[..., _R], errors: tuple[type[Exception], ...]) -> Callable[..., _R]:
    """``hook`` raising :meth:`StorageHooks._unavailable` instead of any of ``errors``."""

    @functools.wraps(hook)
    def guarded(self: StorageHooks, /, *args: Any, **kwargs: Any) -> _R:
        try:
            return hook(self, *args, **kwargs)
        except errors as exc:
            raise self._unavailable(exc) from exc

    return guarded
