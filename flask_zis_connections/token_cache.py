"""An in-process cache of decrypted access tokens for ``get_token``.

Bounded in size (``ZIS_TOKEN_CACHE_SIZE`` entries, least recently used evicted first)
and in time: an entry is served until ``ZIS_TOKEN_CACHE_TTL`` seconds have passed on
the monotonic clock, and never past the moment its token becomes due for a refresh.

Every write that changes a connection's token or existence drops its entry at once in
this process (``Lifecycle.changed``).  On PostgreSQL the same write sends
``NOTIFY zis_token_cache, '<integration>\\t<name>'`` and a daemon thread per process
(:class:`ChangeListener`) drops the entry in every other process; elsewhere there is
no channel between processes and the TTL bounds how stale an entry can be.

A hit costs one dict lookup and two clock reads (monotonic for the TTL, the wall
clock for the due time, since a token's expiry is a wall-clock moment).  A miss remembers the cache's
generation before it reads storage; every invalidation moves the generation, and an
entry read before an invalidation is never stored after it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .config import Settings
    from .storage import Storage

log = logging.getLogger("flask_zis_connections")

#: The PostgreSQL channel the invalidations travel on.
CHANNEL: Final = "zis_token_cache"
#: Separates integration and name in a notification's payload; an empty name stands
#: for every connection of the integration (its OAuth client was deleted).
SEPARATOR: Final = "\t"

_Key = tuple[str, str]


class TokenCache:
    """A thread-safe LRU of ``(integration, name) -> (token, TTL end, due time)``."""

    def __init__(
        self,
        ttl: float,
        size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        start_listener: Callable[[TokenCache], None] | None = None,
    ) -> None:
        self.ttl = float(ttl)
        self.size = int(size)
        self.clock = clock
        self.wall_clock = wall_clock
        self.generation = 0
        self._entries: OrderedDict[_Key, tuple[str, float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._start_listener = start_listener
        self._listener_pid: int | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    @classmethod
    def for_settings(cls, settings: Settings, storage: Storage) -> TokenCache | None:
        """The app's cache, or None when ``ZIS_TOKEN_CACHE_TTL`` or ``_SIZE`` is 0."""
        if settings.token_cache_ttl <= 0 or settings.token_cache_size <= 0:
            return None
        return cls(
            settings.token_cache_ttl, settings.token_cache_size, start_listener=storage.start_change_listener
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, integration: str, name: str) -> str | None:
        """The cached token, or None when absent or no longer valid."""
        key = (integration, name)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry[1] or self.wall_clock() >= entry[2]:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return entry[0]

    def put(self, integration: str, name: str, token: str, seconds: float | None, generation: int) -> None:
        """Keep ``token`` for at most the TTL, and at most ``seconds`` (until it is due).

        ``generation`` is :attr:`generation` as read before the token was read from
        storage: when an invalidation happened meanwhile the token is not kept.
        """
        self._ensure_listener()
        lifetime = self.ttl if seconds is None else min(self.ttl, seconds)
        if lifetime <= 0:
            return
        until = self.clock() + lifetime
        # The due time also on the wall clock, which the token's expiry is measured on.
        due = math.inf if seconds is None else self.wall_clock() + seconds
        key = (integration, name)
        with self._lock:
            if generation != self.generation:
                return
            self._entries[key] = (token, until, due)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

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

    def _ensure_listener(self) -> None:
        start = self._start_listener
        if start is None:
            return
        pid = os.getpid()
        if self._listener_pid == pid:
            return
        with self._lock:
            if self._listener_pid == pid:
                return
            self._listener_pid = pid
        start(self)


def _after_fork(ref: weakref.ref[TokenCache]) -> None:
    """A forked child starts empty, and starts its own listener on first use."""
    cache = ref()
    if cache is not None:
        cache._lock = threading.Lock()
        cache._entries = OrderedDict()
        cache.generation += 1


def payload(integration: str, name: str | None) -> str:
    return f"{integration}{SEPARATOR}{name or ''}"


class ChangeListener(threading.Thread):
    """``LISTEN zis_token_cache`` on its own autocommit connection; invalidates the cache.

    When the connection drops it reconnects with a growing pause (up to 5 seconds);
    after every (re)connection it clears the whole cache, since notifications sent
    while it was away are lost.
    """

    def __init__(self, connect: Callable[[], Any], cache: TokenCache) -> None:
        super().__init__(name="zis-token-cache-listener", daemon=True)
        self._connect = connect
        self._cache = weakref.ref(cache)
        self.stopped = threading.Event()
        self.listening = threading.Event()

    def run(self) -> None:
        pause = 0.1
        while not self.stopped.is_set() and self._cache() is not None:
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    cache = self._cache()
                    if cache is None:
                        return
                    cache.clear()
                    del cache
                    self.listening.set()
                    pause = 0.1
                    while not self.stopped.is_set():
                        for note in conn.notifies(timeout=1.0):
                            cache = self._cache()
                            if cache is None:
                                return
                            cache.handle_notification(note.payload)
                            del cache
                        if self._cache() is None:
                            return
            except Exception as exc:  # any failure: reconnect after a pause
                self.listening.clear()
                log.warning("The token cache listener lost its connection (%s); reconnecting.", exc)
                self.stopped.wait(pause)
                pause = min(pause * 2, 5.0)
