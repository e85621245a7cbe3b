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

log = logging.getLogger("flask_zis_connections")


class LeaseKeeper:
    """Keeps a refresh lease alive while its holder waits on the provider.

    Renews every quarter of the TTL from a daemon thread.  :meth:`deadline` is the
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
        self._held_until = taken_at + ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zis-lease-keeper", daemon=True)

    def deadline(self) -> float:
        return self._held_until - self._margin

    def _run(self) -> None:
        while not self._stop.wait(self._ttl / 4):
            asked = time.monotonic()
            try:
                renewed = self._storage.renew_lease(self._lease.key, self._lease.owner, self._ttl, utcnow())
            except ZISError:
                renewed = False
            if not renewed:
                log.warning("Lost the refresh lease %s; the refresh in flight is cut short.", self._lease.key)
                return
            self._held_until = asked + self._ttl

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
