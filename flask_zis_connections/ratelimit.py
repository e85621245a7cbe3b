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
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.errors import StorageError
from limits.storage import MovingWindowSupport, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from . import config as cfg
from .crypto import hash_secret
from .errors import ConfigurationError, StorageUnavailable, TooManyRequests
from .forks import fresh_lock_in_child

log = logging.getLogger("flask_zis_connections")

#: Seconds the in-memory fallback answers alone after the storage failed, so a dead or
#: unreachable Redis costs one failed call per interval and process, not one per request.
STORAGE_RETRY_INTERVAL = 5.0
#: Seconds between sweeps of idle windows out of the in-process counters.
SWEEP_INTERVAL = 10.0

_NAMESPACE = "zis"
T = TypeVar("T")
_Ids = tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Limit:
    """One parsed limit with what every check needs, worked out once at start-up."""

    item: RateLimitItem
    amount: int = field(init=False)
    seconds: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", int(self.item.amount))
        object.__setattr__(self, "seconds", int(self.item.get_expiry()))


class Windows(Protocol):
    """Counters of requests in moving (or, on a storage without them, fixed) windows."""

    def hit(self, limit: Limit, ids: _Ids) -> bool:
        """Count one request, unless the window is full (then False, nothing counted)."""

    def test(self, limit: Limit, ids: _Ids) -> bool:
        """Whether one more request would be admitted; counts nothing."""

    def stats(self, limit: Limit, ids: _Ids) -> tuple[float, int]:
        """Seconds until the window next frees a slot, and how many slots are left."""


class LocalWindows:
    """Moving windows in this process's memory: ``memory://`` and the fail-open fallback.

    The same rule as ``limits``' moving window (a request counts while its timestamp is
    within the last ``seconds``), kept as one deque of timestamps per key, oldest first:
    a check drops what left the window from the left and compares the length, so a hit
    costs the same at 10 requests in the window as at 100,000.  ``limits``'
    ``MemoryStorage`` inserts an object per hit at the front of a list (a copy of the
    whole window per request) and starts a timer thread every 10 ms under load, which
    made the limiter the largest single cost of a cheap request.  Idle keys are swept
    every :data:`SWEEP_INTERVAL` seconds, so an address seen once does not stay.  Time is
    the monotonic clock: a wall clock set back cannot leave requests "in the future"
    counting against a window.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[Limit, dict[_Ids, deque[float]]] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + SWEEP_INTERVAL
        fresh_lock_in_child(self)

    def hit(self, limit: Limit, ids: _Ids) -> bool:
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            keyed = self._windows.get(limit)
            if keyed is None:
                keyed = self._windows[limit] = {}
            window = keyed.get(ids)
            if window is None:
                window = keyed[ids] = deque()
            else:
                _drop_older(window, now - limit.seconds)
            if len(window) >= limit.amount:
                return False
            window.append(now)
            return True

    def test(self, limit: Limit, ids: _Ids) -> bool:
        return self.stats(limit, ids)[1] > 0

    def stats(self, limit: Limit, ids: _Ids) -> tuple[float, int]:
        now = self._clock()
        with self._lock:
            window = self._windows.get(limit, {}).get(ids)
            if not window:
                return limit.seconds, limit.amount
            start = now - limit.seconds
            _drop_older(window, start)
            if not window:
                return limit.seconds, limit.amount
            return window[0] - start, limit.amount - len(window)

    def _sweep(self, now: float) -> None:
        """Drop every window whose newest request left it (under the lock)."""
        self._next_sweep = now + SWEEP_INTERVAL
        for limit, keyed in self._windows.items():
            start = now - limit.seconds
            for ids in [ids for ids, window in keyed.items() if not window or window[-1] < start]:
                del keyed[ids]

    def __len__(self) -> int:
        """How many keys are held (for tests of the sweep)."""
        with self._lock:
            return sum(len(keyed) for keyed in self._windows.values())


def _drop_older(window: deque[float], start: float) -> None:
    """Drop the timestamps before ``start`` (the oldest are on the left)."""
    while window and window[0] < start:
        window.popleft()


class SharedWindows:
    """Windows in a ``limits`` storage shared by every process (Redis): the moving
    window where the storage has one, else the fixed window."""

    def __init__(self, storage: Storage) -> None:
        self._limiter: RateLimiter = (
            MovingWindowRateLimiter(storage)
            if isinstance(storage, MovingWindowSupport)
            else FixedWindowRateLimiter(storage)
        )

    def hit(self, limit: Limit, ids: _Ids) -> bool:
        return self._limiter.hit(limit.item, *ids)

    def test(self, limit: Limit, ids: _Ids) -> bool:
        return self._limiter.test(limit.item, *ids)

    def stats(self, limit: Limit, ids: _Ids) -> tuple[float, int]:
        found = self._limiter.get_window_stats(limit.item, *ids)
        return found.reset_time - time.time(), found.remaining


class RateLimits:
    """The blueprint's rate limits for one app, built once from its config.

    Views call :meth:`test_address`, :meth:`hit_address`, :meth:`hit_caller` and
    :meth:`hit_token_proxy`; each raises :class:`~flask_zis_connections.errors.TooManyRequests`
    (429, with ``retry_after``) when the budget is spent.  An empty tuple of limits turns
    that budget off.  Everything a check needs but the caller's key (the parsed limits,
    their window lengths, the storage) is worked out here once, not per request.
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
        self.caller_limits = tuple(Limit(item) for item in caller)
        self.address_limits = tuple(Limit(item) for item in address)
        self.token_proxy_limits = tuple(Limit(item) for item in token_proxy)
        self._primary: Windows
        if storage_uri.split("://", 1)[0] == "memory":
            self._primary = LocalWindows()
        else:
            try:
                storage = storage_from_string(storage_uri, wrap_exceptions=True)
            except LimitsConfigurationError as exc:
                # The message names the scheme or the missing driver, never the URI's password.
                raise ConfigurationError(
                    f"ZIS_RATELIMIT_STORAGE_URI cannot be used: {exc}. Use 'memory://' or "
                    "'redis://host:6379/0' (install the 'redis' extra)."
                ) from None
            assert isinstance(storage, Storage)  # a sync URI gives a sync storage
            self._primary = SharedWindows(storage)
        # The primary is already in memory: nothing to fall back to.
        self._fallback: Windows | None = (
            LocalWindows() if fail_open and not isinstance(self._primary, LocalWindows) else None
        )
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
        if self.caller_limits:
            ids = _caller_ids(integration, token, identity)
            self._raise_if_waiting(self._run(_hit_all, self.caller_limits, ids, True), "for this caller")

    def test_address(
        self, address: str | None, integration: str | None = None, token: str | None = None
    ) -> None:
        """Refuse, without charging, a client ``address`` (the request's ``remote_addr``)
        that spent its budget.

        Called before a bearer token is looked up, so a guesser's spent address costs
        no database query.  ``token`` is exempt when it authenticated for
        ``integration`` within its caller window: only a real token can have charged
        that bucket, so the exemption opens nothing to guessing.
        """
        if not self.address_limits:
            return
        # The token's key is only worked out when the address is spent (a hash per request saved).
        exempt = None if integration is None or token is None else (integration, token)
        ids = _address_ids(address)
        wait = self._run(_test_address, self.address_limits, ids, (self.caller_limits, exempt))
        self._raise_if_waiting(wait, "from this address")

    def hit_address(self, address: str | None, *, refuse: bool = True) -> None:
        """Charge one request to the client ``address`` (the request's ``remote_addr``).

        ``refuse=False`` only counts (a failed authentication, which already answers
        401/403); the next request from a spent address is refused by
        :meth:`test_address`.
        """
        if self.address_limits:
            wait = self._run(_hit_all, self.address_limits, _address_ids(address), refuse)
            self._raise_if_waiting(wait, "from this address")

    def hit_token_proxy(self) -> None:
        """Charge one request to the token proxy's single, global bucket."""
        if self.token_proxy_limits:
            wait = self._run(_hit_all, self.token_proxy_limits, _TOKEN_PROXY_IDS, True)
            self._raise_if_waiting(wait, "to the token proxy")

    # -- machinery -------------------------------------------------------------------------
    @staticmethod
    def _raise_if_waiting(wait: int | None, whose: str) -> None:
        if wait is not None:
            raise TooManyRequests(
                f"Too many requests {whose}: the rate limit is exhausted. Retry after {wait} seconds.",
                retry_after=wait,
            )

    def _run(
        self,
        op: Callable[[Windows, tuple[Limit, ...], _Ids, Any], T],
        limits: tuple[Limit, ...],
        ids: _Ids,
        arg: Any,
    ) -> T:
        """``op(windows, limits, ids, arg)`` on the configured storage, or on the
        in-memory fallback while that storage fails (fail open), or answer 503 (fail
        closed).  In-process windows cannot fail: they are called directly."""
        fallback = self._fallback
        if fallback is None:
            if isinstance(self._primary, LocalWindows):
                return op(self._primary, limits, ids, arg)
        elif time.monotonic() < self._down_until:
            return op(fallback, limits, ids, arg)
        try:
            result = op(self._primary, limits, ids, arg)
        except StorageError as exc:
            if fallback is None:
                raise StorageUnavailable(
                    "The rate-limit storage (ZIS_RATELIMIT_STORAGE_URI) is unavailable. Try again later."
                ) from None
            self._storage_failed(exc)
            return op(fallback, limits, ids, arg)
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


_TOKEN_PROXY_IDS: _Ids = (_NAMESPACE, "token-proxy")


def _hit_all(windows: Windows, limits: tuple[Limit, ...], ids: _Ids, refuse: bool) -> int | None:
    """Charge every limit; the seconds to wait when one is full and ``refuse``."""
    for limit in limits:
        if not windows.hit(limit, ids) and refuse:
            return _retry_after(windows, limit, ids)
    return None


def _test_address(
    windows: Windows,
    limits: tuple[Limit, ...],
    ids: _Ids,
    exemption: tuple[tuple[Limit, ...], tuple[str, str] | None],
) -> int | None:
    """The seconds to wait when the address spent a limit, unless the token's own
    bucket (``exemption``: the caller limits, and the integration and token) was charged."""
    caller_limits, exempt = exemption
    for limit in limits:
        if not windows.test(limit, ids):
            if exempt is not None and _charged(windows, caller_limits, _caller_ids(*exempt, "")):
                return None
            return _retry_after(windows, limit, ids)
    return None


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


def _caller_ids(integration: str, token: str | None, identity: str) -> _Ids:
    # A digest of its own purpose: the storage never holds the token, nor the hash the
    # database looks tokens up by.
    who = (
        "token:" + hash_secret("zis-ratelimit:" + token)[:32]
        if token is not None
        else ("session:" + identity)
    )
    return (_NAMESPACE, "caller", integration, who)


def _address_ids(address: str | None) -> _Ids:
    return (_NAMESPACE, "address", address or "-")


def _charged(windows: Windows, limits: tuple[Limit, ...], ids: _Ids) -> bool:
    """Whether any request was charged to ``ids`` within the limits' windows."""
    return any(windows.stats(limit, ids)[1] < limit.amount for limit in limits)


def _retry_after(windows: Windows, limit: Limit, ids: _Ids) -> int:
    return max(1, math.ceil(windows.stats(limit, ids)[0]))
