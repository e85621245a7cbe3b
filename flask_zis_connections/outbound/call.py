"""The state of one guarded call: its deadline, watchdog, sockets and pinned connect.

Everything :meth:`GuardedAdapter.send` needs to remember while a single request runs
lives in one :class:`OutboundCall`, created per call and never shared, so concurrent
calls never see each other's sockets, addresses or deadlines.  The watchdog (a timer on
the process's one timer thread, :mod:`..timers`) is what makes the total deadline hold
against a server that drips bytes: per-read socket timeouts restart with every byte,
shutting the sockets down does not.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.timeout import Timeout
from urllib3.util.wait import wait_for_write

from ..timers import TIMERS, Timer
from .policy import DEADLINE_POLL_SECONDS, OutboundPolicy
from .resolver import RESOLVER

__all__ = ["OutboundCall", "SockAddr"]

SockAddr = tuple[Any, ...]


class OutboundCall:
    """State of one :meth:`GuardedAdapter.send`: its deadline, checked addresses,
    sockets and pools.  Never shared between calls."""

    def __init__(self, policy: OutboundPolicy, deadline: Callable[[], float] | None, host: str) -> None:
        self.host = host
        self.targets: list[tuple[socket.AddressFamily, SockAddr]] = []
        self._limit = time.monotonic() + policy.timeout
        self._deadline = deadline
        self._lock = threading.Lock()
        self._expired = False
        self._finished = False  # set by finish(), under the lock
        self._watched: list[socket.socket] = []
        self._pools: list[HTTPConnectionPool] = []
        self._watchdog: Timer | None = None

    # -- deadline

    def remaining(self) -> float:
        """Seconds left before the effective deadline (re-reading the caller's)."""
        limit = self._limit
        if self._deadline is not None:
            try:
                limit = min(limit, float(self._deadline()))
            except Exception:
                return 0.0  # a deadline that cannot be read is one that has passed
        return limit - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._expired or self.remaining() <= 0

    def start(self) -> None:
        """Arm the watchdog: it shuts the call's sockets down when the deadline passes."""
        self._watch()

    def _watch(self) -> None:
        """On the timer thread (first from :meth:`start`): expire the call, or look
        again at the deadline or - when the caller's may move - within
        ``DEADLINE_POLL_SECONDS``."""
        if self._finished:
            return
        remaining = self.remaining()
        if remaining <= 0:
            self._expire()
            return
        wait = remaining if self._deadline is None else min(remaining, DEADLINE_POLL_SECONDS)
        with self._lock:
            if not self._finished:
                self._watchdog = TIMERS.call_later(wait, self._watch)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            watched = list(self._watched)
        for sock in watched:
            _shutdown(sock)

    def bounded_timeout(self, timeout: Any) -> tuple[float, float]:
        """The caller's requests ``timeout`` (per connect and per read), no longer than
        what is left of ``policy.timeout``.  Not bounded by the caller's deadline, which
        may move later; the watchdog enforces that one."""
        remaining = max(self._limit - time.monotonic(), 0.001)
        if isinstance(timeout, tuple):
            connect, read = timeout
        elif isinstance(timeout, Timeout):
            connect, read = timeout.connect_timeout, timeout.read_timeout
        else:
            connect = read = timeout
        return _at_most(connect, remaining), _at_most(read, remaining)

    # -- sockets and pools

    def _watch_socket(self, sock: socket.socket) -> socket.socket:
        # A duplicate descriptor of the same socket: TLS wrapping detaches the original
        # object, but shutdown() through any descriptor still ends the connection.
        dup = sock.dup()
        with self._lock:
            self._watched.append(dup)
            expired = self._expired
        if expired:
            _shutdown(dup)
        return dup

    def _unwatch(self, dup: socket.socket) -> None:
        with self._lock:
            if dup in self._watched:
                self._watched.remove(dup)
        dup.close()

    def connect(self, conn: HTTPConnection) -> socket.socket:
        """Open a socket for ``conn`` to one of the checked addresses, within the deadline."""
        if not self.targets:
            raise NewConnectionError(conn, f"No checked address to connect to for {self.host}.")
        timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
        failure: OSError | None = None
        for family, sockaddr in self.targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            dup: socket.socket | None = None
            try:
                for option in conn.socket_options or ():
                    sock.setsockopt(*option)
                if conn.source_address:
                    sock.bind(conn.source_address)
                dup = self._watch_socket(sock)
                self._connect_within_deadline(sock, sockaddr, timeout)
                sock.settimeout(timeout)
            except OSError as exc:
                sock.close()
                if dup is not None:
                    self._unwatch(dup)
                failure = exc
                continue
            sys.audit("http.client.connect", conn, conn.host, conn.port)
            return sock
        if isinstance(failure, TimeoutError):
            raise ConnectTimeoutError(conn, f"Connection to {self.host} timed out.")
        detail = failure.strerror if failure is not None and failure.strerror else "connection failed"
        raise NewConnectionError(conn, f"Failed to establish a new connection to {self.host}: {detail}")

    def _connect_within_deadline(
        self, sock: socket.socket, sockaddr: SockAddr, timeout: float | None
    ) -> None:
        # Non-blocking connect polled against the deadline, so that a deadline moved
        # earlier while a black-holed address is being tried is still honoured.
        started = time.monotonic()
        sock.setblocking(False)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
        while code != 0:
            left = self.remaining()
            if timeout is not None:
                left = min(left, started + timeout - time.monotonic())
            if left <= 0 or self._expired:
                raise TimeoutError("connect timed out")
            if wait_for_write(sock, timeout=min(left, DEADLINE_POLL_SECONDS)):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, errno.errorcode.get(code, "connect failed"))
                break

    def adopt(self, pool: HTTPConnectionPool) -> None:
        """Record ``pool`` as this call's, to be closed by :meth:`finish`."""
        with self._lock:
            self._pools.append(pool)

    def finish(self) -> None:
        """Stop the watchdog, close this call's pools and socket duplicates.

        A watchdog running meanwhile may still shut down a duplicate closed here: a
        closed socket object refuses that (``OSError``, ignored), it never reaches a
        descriptor number reused since."""
        with self._lock:
            self._finished = True
            if self._watchdog is not None:
                self._watchdog.cancel()
            pools, self._pools = self._pools, []
            watched, self._watched = self._watched, []
        for pool in pools:
            pool.close()
        for sock in watched:
            sock.close()

    def resolve(self, host: str, port: int, family: int) -> list[Any]:
        """``host``'s addresses, looked up on the process's resolver threads
        (:mod:`.resolver`) and given up at this call's deadline."""
        return RESOLVER.resolve(host, port, family, self.remaining)


def _at_most(value: Any, limit: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return min(float(value), limit)
    return limit


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (yet), or already gone
        sock.shutdown(socket.SHUT_RDWR)
