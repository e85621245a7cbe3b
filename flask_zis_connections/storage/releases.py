"""Waking the callers that wait for a refresh lease to be released.

A caller that lost the race for a lease has nothing to do until its holder lets go
(its write, or its failure, is then in storage).  Polling the row for that costs a
database round trip per look and answers late by half a poll interval on average; a
wake-up costs nothing while waiting and answers at once.  The storage calls
:meth:`LeaseReleases.released` when this process releases a lease, and - where the
backend has a channel between processes (PostgreSQL ``LISTEN``/``NOTIFY``, see
:class:`ReleaseListener`) - when another process does.

A leaf module: the storage base class and every backend import it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..forks import reset_in_child

log = logging.getLogger("flask_zis_connections")


class LeaseReleases:
    """The watchers of this process, per lease key.

    A watch is registered *before* the lease is tried, so a release that lands between
    the failed attempt and the wait is never missed.  :attr:`across_processes` is set
    while releases made anywhere reach this process; while it is clear a waiter must
    keep polling, since a release elsewhere never wakes it.
    """

    def __init__(self, *, one_process: bool = False) -> None:
        """``one_process``: every holder of these leases lives in this process (an
        in-memory store), so every release is seen here and none is ever missed."""
        self._lock = threading.Lock()
        self._watchers: dict[str, set[threading.Event]] = {}
        #: Set while every release - this process's and the others' - reaches
        #: :meth:`released` here.
        self.across_processes = threading.Event()
        if one_process:
            self.across_processes.set()
        #: Set while a listener is making its first connection: it wakes every waiter
        #: when it is up (or gives up), so they need not poll meanwhile.
        self.connecting = threading.Event()
        self._one_process = one_process
        reset_in_child(self, LeaseReleases._after_fork)

    @contextmanager
    def watch(self, key: str) -> Iterator[threading.Event]:
        """An event set when the lease ``key`` is released while the block runs."""
        event = threading.Event()
        with self._lock:
            self._watchers.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._watchers.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._watchers[key]

    def released(self, key: str) -> None:
        with self._lock:
            for event in self._watchers.get(key, ()):
                event.set()

    def _after_fork(self) -> None:
        """A forked child has none of its parent's waiting threads, nor its listener."""
        self._lock = threading.Lock()
        self._watchers = {}
        if not self._one_process:
            self.across_processes.clear()
        self.connecting.clear()

    def released_all(self) -> None:
        """Wake every waiter: releases may have been missed (a channel reconnected)."""
        with self._lock:
            for waiting in self._watchers.values():
                for event in waiting:
                    event.set()


class ReleaseListener(threading.Thread):
    """``LISTEN`` on a PostgreSQL channel whose payloads are released lease keys.

    Its own autocommit connection: a pooled one would be handed to other work between
    notifications.  When the connection drops it reconnects with a growing pause, up to
    5 seconds; while it is away :attr:`LeaseReleases.across_processes` is clear, so
    waiters poll, and after every (re)connection every waiter is woken once to look,
    since a release sent meanwhile was lost.
    """

    def __init__(self, connect: Callable[[], Any], channel: str, releases: LeaseReleases) -> None:
        super().__init__(name="zis-lease-release-listener", daemon=True)
        self._connect = connect
        self._channel = channel
        self._releases = weakref.ref(releases)
        self.stopped = threading.Event()

    def run(self) -> None:
        pause = 0.1
        while not self.stopped.is_set() and self._releases() is not None:
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    if not self._heard(None, listening=True):
                        return
                    pause = 0.1
                    while not self.stopped.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if not self._heard(note.payload, listening=True):
                                return
                        if self._releases() is None:
                            return
            except Exception as exc:  # any failure: waiters poll until we are back
                self._heard(None, listening=False)
                log.warning("The refresh lease listener lost its connection (%s); reconnecting.", exc)
                self.stopped.wait(pause)
                pause = min(pause * 2, 5.0)
        self._heard(None, listening=False)

    def unavailable(self) -> None:
        """The thread could not start: the waiters poll, as while it reconnects."""
        self._heard(None, listening=False)

    def _heard(self, key: str | None, *, listening: bool) -> bool:
        """Pass one happening on; False when the storage is gone (the thread ends)."""
        releases = self._releases()
        if releases is None:
            return False
        if not listening:
            releases.across_processes.clear()
            if releases.connecting.is_set():  # its waiters slept on it: they poll now
                releases.connecting.clear()
                releases.released_all()
        elif key is None:
            releases.across_processes.set()
            releases.connecting.clear()
            releases.released_all()
        else:
            releases.released(key)
        return True
