"""Rate limits on the extension's blueprint, with the ``limits`` library.

Only the blueprint is limited: nothing is installed on the host app and no
``RATELIMIT_*`` key is read, so a host that runs Flask-Limiter for its own routes keeps
exactly the limits it configured.  Three budgets, each keyed by something the caller
cannot choose freely:

``ZIS_RATELIMIT``
    per integration and *authenticated* caller (a digest of the bearer token, or the
    admin's id), charged after authentication succeeded.  A header or path the caller
    makes up never opens a fresh bucket, because nothing is charged to it before it
    proved to be a real token of that integration.
``ZIS_RATELIMIT_UNAUTHENTICATED``
    per client address (``request.remote_addr``, which a host's ``ProxyFix`` sets from
    ``X-Forwarded-For``), charged by failed authentication and by the endpoints that need
    none.  Once it is spent, requests that must authenticate get 429 *before* the token
    is looked up, so guessing tokens cannot turn into database load.  A bearer token
    that authenticated within its own window is still looked up, so a real integration
    sharing an address with a guesser keeps working; a token idle for longer waits for
    the address window like any other request.
``ZIS_RATELIMIT_TOKEN_PROXY``
    one bucket shared by every caller of the unauthenticated token proxy, which cannot
    tell callers apart and would otherwise relay any number of requests to the host's
    token endpoint from many addresses.

The moving-window strategy is used where the storage supports it (memory, Redis): "600
per minute" then means at most 600 in any 60 seconds, with no double burst at a window
edge.  When the storage (Redis) fails, ``ZIS_RATELIMIT_FAIL_OPEN`` decides: per-process
in-memory limits with the same numbers and one warning per outage (refusing every call
because a counter store is down would turn a Redis outage into an outage of every
integration), or 503 with code 1306 for hosts that prefer to refuse.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import request
from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.errors import StorageError
from limits.storage import MemoryStorage, MovingWindowSupport, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from . import config as cfg
from .crypto import hash_secret
from .errors import ConfigurationError, StorageUnavailable, TooManyRequests

log = logging.getLogger("flask_zis_connections")

#: Seconds the in-memory fallback answers alone after the storage failed, so a dead or
#: unreachable Redis costs one failed call per interval and process, not one per request.
STORAGE_RETRY_INTERVAL = 5.0

_NAMESPACE = "zis"
T = TypeVar("T")
_Op = Callable[[RateLimiter], T]


class RateLimits:
    """The blueprint's rate limits for one app, built once from its config.

    Views call :meth:`test_address`, :meth:`hit_address`, :meth:`hit_caller` and
    :meth:`hit_token_proxy`; each raises :class:`~flask_zis_connections.errors.TooManyRequests`
    (429, with ``retry_after``) when the budget is spent.  An empty tuple of limits turns
    that budget off.
    """

    def __init__(
        self,
        *,
        caller: tuple[RateLimitItem, ...],
        address: tuple[RateLimitItem, ...] = (),
        token_proxy: tuple[RateLimitItem, ...] = (),
        storage_uri: str = "memory://",
        fail_open: bool = True,
    ) -> None:
        self.caller_limits = caller
        self.address_limits = address
        self.token_proxy_limits = token_proxy
        try:
            storage = storage_from_string(storage_uri, wrap_exceptions=True)
        except LimitsConfigurationError as exc:
            # The message names the scheme or the missing driver, never the URI's password.
            raise ConfigurationError(
                f"ZIS_RATELIMIT_STORAGE_URI cannot be used: {exc}. Use 'memory://' or "
                "'redis://host:6379/0' (install the 'redis' extra)."
            ) from None
        assert isinstance(storage, Storage)  # a sync URI gives a sync storage
        self._primary = _limiter(storage)
        self._fallback = _limiter(MemoryStorage()) if fail_open else None
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic time until which the fallback answers alone
        self._degraded = False  # warned about the current outage already

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RateLimits | None:
        """The limits ``config`` asks for, or None when ``ZIS_RATELIMIT`` is falsy.

        A falsy ``ZIS_RATELIMIT`` turns every limit off (the host limits elsewhere); a
        falsy ``ZIS_RATELIMIT_UNAUTHENTICATED`` or ``ZIS_RATELIMIT_TOKEN_PROXY`` turns
        off just that budget.
        """
        if not config[cfg.RATELIMIT]:
            return None
        return cls(
            caller=_parse(config, cfg.RATELIMIT),
            address=_parse(config, cfg.RATELIMIT_UNAUTHENTICATED),
            token_proxy=_parse(config, cfg.RATELIMIT_TOKEN_PROXY),
            storage_uri=str(config[cfg.RATELIMIT_STORAGE_URI] or "memory://"),
            fail_open=bool(config[cfg.RATELIMIT_FAIL_OPEN]),
        )

    # -- what the views call ---------------------------------------------------------------
    def hit_caller(self, integration: str, *, token: str | None, identity: str) -> None:
        """Charge one request to an authenticated caller of ``integration``.

        A token caller is keyed by a digest of the token (one token, one budget, on
        every worker that shares the storage); a session caller by the admin's id.
        """
        self._hit(self.caller_limits, _caller_ids(integration, token, identity), "for this caller")

    def test_address(self, integration: str | None = None, token: str | None = None) -> None:
        """Refuse, without charging, a client address that spent its budget.

        Called before a bearer token is looked up, so a guesser's spent address costs
        no database query.  ``token`` is exempt when it authenticated for
        ``integration`` within its caller window: only a real token can have charged
        that bucket, so the exemption opens nothing to guessing.
        """
        if not self.address_limits:
            return
        ids = _address_ids()

        def op(limiter: RateLimiter) -> int | None:
            for item in self.address_limits:
                if not limiter.test(item, *ids):
                    if (
                        integration is not None
                        and token is not None
                        and _charged(limiter, self.caller_limits, _caller_ids(integration, token, ""))
                    ):
                        return None
                    return _retry_after(limiter, item, ids)
            return None

        self._raise_if_waiting(self._run(op), "from this address")

    def hit_address(self, *, refuse: bool = True) -> None:
        """Charge one request to the client address.

        ``refuse=False`` only counts (a failed authentication, which already answers
        401/403); the next request from a spent address is refused by
        :meth:`test_address`.
        """
        if not self.address_limits:
            return
        ids = _address_ids()

        def op(limiter: RateLimiter) -> int | None:
            for item in self.address_limits:
                if not limiter.hit(item, *ids) and refuse:
                    return _retry_after(limiter, item, ids)
            return None

        self._raise_if_waiting(self._run(op), "from this address")

    def hit_token_proxy(self) -> None:
        """Charge one request to the token proxy's single, global bucket."""
        self._hit(self.token_proxy_limits, (_NAMESPACE, "token-proxy"), "to the token proxy")

    # -- machinery -------------------------------------------------------------------------
    def _hit(self, items: tuple[RateLimitItem, ...], ids: tuple[str, ...], whose: str) -> None:
        if not items:
            return

        def op(limiter: RateLimiter) -> int | None:
            for item in items:
                if not limiter.hit(item, *ids):
                    return _retry_after(limiter, item, ids)
            return None

        self._raise_if_waiting(self._run(op), whose)

    @staticmethod
    def _raise_if_waiting(wait: int | None, whose: str) -> None:
        if wait is not None:
            raise TooManyRequests(
                f"Too many requests {whose}: the rate limit is exhausted. Retry after {wait} seconds.",
                retry_after=wait,
            )

    def _run(self, op: _Op[T]) -> T:
        """Run ``op`` on the configured storage, or on the in-memory fallback while that
        storage fails (fail open), or answer 503 (fail closed)."""
        fallback = self._fallback
        if fallback is not None and time.monotonic() < self._down_until:
            return op(fallback)
        try:
            result = op(self._primary)
        except StorageError as exc:
            if fallback is None:
                raise StorageUnavailable(
                    "The rate-limit storage (ZIS_RATELIMIT_STORAGE_URI) is unavailable. Try again later."
                ) from None
            self._storage_failed(exc)
            return op(fallback)
        if self._degraded:
            self._storage_recovered()
        return result

    def _storage_failed(self, exc: StorageError) -> None:
        with self._lock:
            self._down_until = time.monotonic() + STORAGE_RETRY_INTERVAL
            if self._degraded:
                return
            self._degraded = True
        # The error's type only: its text may carry the storage URI and its password.
        log.warning(
            "Rate-limit storage unavailable (%s): enforcing the same limits per process in "
            "memory until it answers again (ZIS_RATELIMIT_FAIL_OPEN).",
            type(exc.storage_error).__name__,
        )

    def _storage_recovered(self) -> None:
        with self._lock:
            if not self._degraded:
                return
            self._degraded = False
        log.info("Rate-limit storage answers again; limits are shared across processes again.")


def _limiter(storage: Storage) -> RateLimiter:
    """Moving window where the storage has it (memory, Redis), else fixed window."""
    if isinstance(storage, MovingWindowSupport):
        return MovingWindowRateLimiter(storage)
    return FixedWindowRateLimiter(storage)


def _parse(config: Mapping[str, Any], key: str) -> tuple[RateLimitItem, ...]:
    value = config[key]
    if not value:
        return ()
    try:
        return tuple(parse_many(str(value)))
    except ValueError:
        raise ConfigurationError(
            f"{key} must be a rate limit such as '600 per minute' (several separated by ';'), "
            f"or a falsy value to turn it off; got {value!r}."
        ) from None


def _caller_ids(integration: str, token: str | None, identity: str) -> tuple[str, ...]:
    # A digest of its own purpose: the storage never holds the token, nor the hash the
    # database looks tokens up by.
    who = (
        "token:" + hash_secret("zis-ratelimit:" + token)[:32]
        if token is not None
        else ("session:" + identity)
    )
    return (_NAMESPACE, "caller", integration, who)


def _address_ids() -> tuple[str, ...]:
    return (_NAMESPACE, "address", request.remote_addr or "-")


def _charged(limiter: RateLimiter, items: tuple[RateLimitItem, ...], ids: tuple[str, ...]) -> bool:
    """Whether any request was charged to ``ids`` within the limits' windows."""
    return any(limiter.get_window_stats(item, *ids).remaining < item.amount for item in items)


def _retry_after(limiter: RateLimiter, item: RateLimitItem, ids: tuple[str, ...]) -> int:
    reset = limiter.get_window_stats(item, *ids).reset_time
    return max(1, math.ceil(reset - time.time()))
