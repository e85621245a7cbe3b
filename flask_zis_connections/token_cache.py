"""An in-process cache of decrypted access tokens for ``get_token``.

Bounded in size (``ZIS_TOKEN_CACHE_SIZE`` entries; past that, an entry not used since
eviction last passed it goes first) and in time: an entry is served until
``ZIS_TOKEN_CACHE_TTL`` seconds have passed on the monotonic clock, and never past the
moment its token becomes due for a refresh.

Every write that changes a connection's token or existence drops its entry at once in
this process (``Lifecycle.changed``) and tells the other processes through the cache's
:class:`Channel`, which a daemon thread per process (a :class:`Listener`) hears:

* with ``ZIS_TOKEN_CACHE_REDIS_URL`` set, Redis pub/sub
  (:class:`~flask_zis_connections.cache_channel.RedisChannel`), whatever the storage;
* otherwise the storage's own channel (:class:`StorageChannel`): on PostgreSQL
  ``NOTIFY zis_token_cache, '<integration>\\t<name>'`` heard by ``LISTEN``
  (:class:`ChangeListener`); elsewhere there is none and the TTL bounds how stale
  an entry can be.

A listener starts on the first ``put`` in each process, so a worker forked from a
parent that already listened (gunicorn ``--preload``) subscribes on its own connection
instead of sharing the parent's socket.  After every (re)subscription it clears the
whole cache: invalidations sent while it was away are lost.

A hit costs one dict lookup and two clock reads (monotonic for the TTL, the wall
clock for the due time, since a token's expiry is a wall-clock moment), and takes no
lock: eviction is *second chance* (:mod:`.eviction`), in which a hit only marks its
entry used.  A miss remembers the cache's
generation before it reads storage; every invalidation moves the generation, and an
entry read before an invalidation is never stored after it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from .eviction import Marked, make_room
from .forks import reset_in_child

if TYPE_CHECKING:
    from .config import Settings
    from .storage import Storage

log = logging.getLogger("flask_zis_connections")

#: The PostgreSQL (and Redis pub/sub) channel the invalidations travel on.
CHANNEL: Final = "zis_token_cache"
#: Separates integration and name in a notification's payload; an empty name stands
#: for every connection of the integration (its OAuth client was deleted).
SEPARATOR: Final = "\t"

#: First and longest pause in seconds before a listener tries to reconnect.
PAUSE_MIN: Final = 0.1
PAUSE_MAX: Final = 5.0

_Key = tuple[str, str]


@dataclass(slots=True, eq=False)
class _Entry(Marked):
    """A cached token, the monotonic instant its TTL ends and the wall-clock instant it
    becomes due."""

    token: str
    until: float
    due: float


class Channel(Protocol):
    """How a cache's invalidations reach the caches of other processes."""

    def publish(self, integration: str, name: str | None) -> None:
        """Tell the other processes (``name`` None: every connection of ``integration``)."""

    def start_listener(self, cache: TokenCache) -> None:
        """Start this process's listener that invalidates ``cache``."""

    def close(self) -> None:
        """Stop the listeners this channel started and release its connections."""


class StorageChannel:
    """The storage's own channel (PostgreSQL ``NOTIFY``; none elsewhere).

    Its listeners belong to the storage and stop with ``storage.close()``.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def publish(self, integration: str, name: str | None) -> None:
        self.storage.notify_changed(integration, name)

    def start_listener(self, cache: TokenCache) -> None:
        self.storage.start_change_listener(cache)

    def close(self) -> None:
        """Nothing of its own to release: the storage stops its listeners on close."""


class TokenCache:
    """A thread-safe bounded map of ``(integration, name)`` to a token, its TTL end and
    its due time, evicting by second chance."""

    def __init__(
        self,
        ttl: float,
        size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        channel: Channel | None = None,
    ) -> None:
        self.ttl = float(ttl)
        self.size = int(size)
        self.clock = clock
        self.wall_clock = wall_clock
        self.generation = 0
        #: In eviction order: put order, an entry used since it was last passed by
        #: eviction moved to the end then.
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.channel = channel
        #: This process's listener was started (a forked child starts its own).
        self._listening = False
        self._closed = False
        reset_in_child(self, TokenCache._after_fork)

    @classmethod
    def for_settings(cls, settings: Settings, storage: Storage) -> TokenCache | None:
        """The app's cache, or None when ``ZIS_TOKEN_CACHE_TTL`` or ``_SIZE`` is 0.

        With ``ZIS_TOKEN_CACHE_REDIS_URL`` the invalidations travel over Redis only,
        even on PostgreSQL: ``LISTEN`` holds one database connection per process
        (and does not work through a transaction-pooling proxy such as PgBouncer),
        which a deployment that runs Redis usually means to avoid, and one channel
        keeps the staleness bound one rule.
        """
        if settings.token_cache_ttl <= 0 or settings.token_cache_size <= 0:
            return None
        channel: Channel
        if settings.token_cache_redis_url:
            from .cache_channel import RedisChannel  # imports redis: only when configured

            channel = RedisChannel(settings.token_cache_redis_url)
        else:
            channel = StorageChannel(storage)
        return cls(settings.token_cache_ttl, settings.token_cache_size, channel=channel)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, integration: str, name: str) -> str | None:
        """The cached token, or None when absent or no longer valid."""
        key = (integration, name)
        try:
            entry = self._entries[key]  # an OrderedDict's get() is slower than its subscript
        except KeyError:
            return None
        if self.clock() >= entry.until or self.wall_clock() >= entry.due:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return None
        entry.used = True  # one attribute store: no lock, nothing reordered
        return entry.token

    def put(self, integration: str, name: str, token: str, seconds: float | None, generation: int) -> None:
        """Keep ``token`` for at most the TTL, and at most ``seconds`` (until it is due).

        ``generation`` is :attr:`generation` as read before the token was read from
        storage: when an invalidation happened meanwhile the token is not kept.
        """
        self._ensure_listener()
        lifetime = self.ttl if seconds is None else min(self.ttl, seconds)
        if lifetime <= 0 or self.size <= 0:
            return
        until = self.clock() + lifetime
        # The due time also on the wall clock, which the token's expiry is measured on.
        due = math.inf if seconds is None else self.wall_clock() + seconds
        key = (integration, name)
        with self._lock:
            if generation != self.generation:
                return
            entries = self._entries
            if key not in entries:
                make_room(entries, lambda: len(entries) >= self.size)
            entries[key] = _Entry(token, until, due)
            entries.move_to_end(key)

    def invalidate(self, integration: str, name: str | None = None) -> None:
        """Drop the entry of one connection, or (``name`` None) of every one of ``integration``."""
        with self._lock:
            self.generation += 1
            if name is not None:
                self._entries.pop((integration, name), None)
                return
            for key in [key for key in self._entries if key[0] == integration]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def handle_notification(self, payload: str) -> None:
        integration, _, name = payload.partition(SEPARATOR)
        self.invalidate(integration, name or None)

    def notify_others(self, integration: str, name: str | None) -> None:
        """Publish an invalidation to the other processes (may raise: the caller logs)."""
        if self.channel is not None:
            self.channel.publish(integration, name)

    def close(self) -> None:
        """Stop listening for other processes' invalidations (the cache still works
        in-process, bounded by its TTL) and release the channel's connections."""
        self._closed = True
        if self.channel is not None:
            self.channel.close()

    def _ensure_listener(self) -> None:
        channel = self.channel
        if channel is None or self._closed or self._listening:
            return
        with self._lock:
            if self._listening:
                return
            self._listening = True
        channel.start_listener(self)

    def _after_fork(self) -> None:
        """A forked child starts empty, and starts its own listener on first use (the
        parent's thread did not come along)."""
        self._lock = threading.Lock()
        self._entries = OrderedDict()
        self.generation += 1
        self._listening = False


def payload(integration: str, name: str | None) -> str:
    return f"{integration}{SEPARATOR}{name or ''}"


class Listener(threading.Thread):
    """A daemon thread that hears other processes' invalidations and applies them.

    The reconnection rule lives here, once for every channel: when the connection
    drops, wait (0.1 s, doubling, at most :data:`PAUSE_MAX`) and subscribe again;
    after every subscription, clear the whole cache, since whatever was published
    meanwhile is lost.  One warning per outage (then debug lines) keeps a long
    outage from flooding the log.  It holds the cache weakly and ends once the cache
    is gone or :attr:`stopped` is set.
    """

    def __init__(self, name: str, cache: TokenCache) -> None:
        super().__init__(name=name, daemon=True)
        self._cache = weakref.ref(cache)
        self.stopped = threading.Event()
        #: Set while subscribed; cleared while reconnecting.
        self.listening = threading.Event()
        #: How many times it subscribed (each one cleared the cache).
        self.subscriptions = 0
        self._pause = PAUSE_MIN

    def run(self) -> None:
        warned_at = -1  # self.subscriptions when the last warning was logged
        while self.alive():
            try:
                self.listen()
                return  # stopped, or the cache is gone
            except Exception as exc:  # any failure: reconnect after a pause
                self.listening.clear()
                if warned_at != self.subscriptions:  # subscribed since: a new outage
                    warned_at = self.subscriptions
                    log.warning(
                        "The token cache lost its %s (%s); reconnecting. Other processes' writes "
                        "are seen within ZIS_TOKEN_CACHE_TTL meanwhile.",
                        self.describe(),
                        self.explain(exc),
                    )
                else:
                    log.debug(
                        "The token cache's %s is still unreachable (%s).",
                        self.describe(),
                        type(exc).__name__,
                    )
            self.stopped.wait(self._pause)
            self._pause = min(self._pause * 2, PAUSE_MAX)

    def subscribed(self) -> bool:
        """Call after every (re)subscription: clears the cache.  False: the cache is gone."""
        cache = self._cache()
        if cache is None:
            return False
        cache.clear()
        if self.subscriptions:
            log.info("The token cache's %s is back; the cache was cleared.", self.describe())
        self.subscriptions += 1
        self._pause = PAUSE_MIN
        self.listening.set()
        return True

    def deliver(self, payload: str) -> bool:
        """Apply one invalidation.  False: the cache is gone (stop listening)."""
        cache = self._cache()
        if cache is None:
            return False
        cache.handle_notification(payload)
        return True

    def alive(self) -> bool:
        """Whether to keep listening: not stopped and the cache still exists."""
        return not self.stopped.is_set() and self._cache() is not None

    def listen(self) -> None:
        """Connect, subscribe (then :meth:`subscribed`), :meth:`deliver` until not
        :meth:`alive`; raise on a lost connection."""
        raise NotImplementedError

    def describe(self) -> str:
        """What it listens on, for log lines (never a password)."""
        raise NotImplementedError

    def explain(self, exc: Exception) -> str:
        """The failure, for the one warning line of an outage (never a password)."""
        return f"{type(exc).__name__}: {exc}"


class ChangeListener(Listener):
    """``LISTEN zis_token_cache`` on its own autocommit connection; invalidates the cache."""

    def __init__(self, connect: Callable[[], Any], cache: TokenCache) -> None:
        super().__init__("zis-token-cache-listener", cache)
        self._connect = connect

    def describe(self) -> str:
        return "PostgreSQL LISTEN connection"

    def listen(self) -> None:
        with self._connect() as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            if not self.subscribed():
                return
            while self.alive():
                for note in conn.notifies(timeout=1.0):
                    if not self.deliver(note.payload):
                        return
