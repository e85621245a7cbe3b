"""Keeping a refresh lease alive while its holder waits on the provider.

The lease (a storage row) is what makes one refresh at a time hold across processes.
It must be short, so a crashed refresher blocks others only briefly, yet a provider may
take longer to answer than the lease lasts; so the holder renews it while it waits, and
stops waiting - before anyone else could take over - when it cannot.
"""

from __future__ import annotations

import logging
import threading
import time

from .domain import Lease, utcnow
from .errors import ZISError
from .storage import Storage
from .timers import TIMERS, Timer

log = logging.getLogger("flask_zis_connections")


class LeaseKeeper:
    """Keeps a refresh lease alive while its holder waits on the provider.

    Renews every quarter of the TTL from its own thread, started only once the first
    renewal is due (most provider calls end well before that: no thread, and no wait
    for one to start, between the lease and the provider call).  :meth:`deadline` is the
    monotonic instant the holder must be done by: a safety margin before the lease
    could lapse, given the last successful renewal.  Outbound calls re-read it while
    they run, so a holder whose renewals fail (database gone) is cut off while it
    still holds the lease - before any other process may take over and send the same
    refresh token again.
    """

    def __init__(self, storage: Storage, lease: Lease, ttl: float, taken_at: float) -> None:
        self._storage = storage
        self._lease = lease
        self._ttl = ttl
        self._margin = min(1.0, ttl / 5)
        self._taken_at = taken_at
        self._held_until = taken_at + ttl
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._timer: Timer | None = None

    def deadline(self) -> float:
        return self._held_until - self._margin

    def _start_renewing(self) -> None:
        """On the timer thread, the first renewal due: renewals get their own thread
        (a database write may take long; the timer thread must not wait on it)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="zis-lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                renewed = self._storage.renew_lease(self._lease.key, self._lease.owner, self._ttl, utcnow())
            except ZISError:
                renewed = False
            if not renewed:
                log.warning("Lost the refresh lease %s; the refresh in flight is cut short.", self._lease.key)
                return
            self._held_until = asked + self._ttl
            if self._stop.wait(self._ttl / 4):
                return

    def __enter__(self) -> LeaseKeeper:
        self._timer = TIMERS.call_at(self._taken_at + self._ttl / 4, self._start_renewing)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stop.set()
            if self._timer is not None:
                self._timer.cancel()
            thread = self._thread
        if thread is not None:
            thread.join()
