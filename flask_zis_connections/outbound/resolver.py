"""Name lookups for outbound calls, on a few long-lived threads.

``socket.getaddrinfo`` cannot be interrupted: a resolver that does not answer holds the
calling thread for as long as the C library's own timeouts (``resolv.conf``'s timeout
times its attempts times the name servers: ten seconds and more by default).  An
outbound call must still give up at its deadline, so its lookup runs on another thread
and the caller waits no longer than the deadline for it.

A thread per lookup did that, at two costs.  ``Thread.start`` returns only once the new
thread has run, which under load means waiting for the GIL behind every busy thread of
the process - on the way to the provider, while a burst of requests waits for that
call (see :mod:`..timers`).  And a resolver outage left one stuck thread behind per
call, without bound.  Here:

* lookups share at most :data:`MAX_THREADS` daemon threads, started only when every
  one is busy, with :func:`_thread.start_new_thread` (which does not wait for the new
  thread to run); idle ones wait for the next lookup, for the life of the process;
* callers looking up the same host, port and address family at the same moment share
  one lookup (a burst of refreshes against one provider makes one), and a lookup no
  caller waits for any more is dropped before it starts;
* during an outage at most :data:`MAX_THREADS` threads are stuck; past that, lookups
  wait in line and fail at their caller's deadline, as they would have had their own
  thread hung.

Answers are not kept: each call resolves again, so a name's DNS TTL is honoured and
its answer is checked afresh (see :mod:`.adapter`).
"""

from __future__ import annotations

import _thread
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from ..forks import reset_in_child
from ..singleflight import copied
from .errors import DeadlineExceeded
from .policy import DEADLINE_POLL_SECONDS

__all__ = ["MAX_THREADS", "RESOLVER", "Resolver"]

#: Most lookup threads a process keeps (and most a resolver outage can hold).
MAX_THREADS: Final = 16

AddrInfo = list[tuple[Any, ...]]
_Key = tuple[str, int, int]


class _Lookup:
    """One ``getaddrinfo`` and the callers waiting for it."""

    __slots__ = ("done", "error", "key", "result", "waiters")

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.done = threading.Event()
        self.result: AddrInfo | None = None
        self.error: BaseException | None = None
        self.waiters = 0

    def run(self) -> None:
        host, port, family = self.key
        try:
            # Looked up on the module at each call: a test may replace it.
            self.result = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except BaseException as exc:
            self.error = exc

    def answer(self) -> AddrInfo:
        """The addresses, or the lookup's failure raised as a copy of its own (several
        callers may raise it at once: each gets an exception with its own traceback)."""
        error = self.error
        if error is not None:
            raise copied(error) if isinstance(error, Exception) else error
        assert self.result is not None
        return self.result


class Resolver:
    """``getaddrinfo`` for :class:`~.call.OutboundCall`, bounded by each caller's deadline."""

    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[_Lookup] = deque()
        #: Lookups queued or running, by key: a caller asking the same joins them.
        self._pending: dict[_Key, _Lookup] = {}
        #: Threads started, and those of them not running a lookup.
        self.threads = 0
        self._idle = 0
        reset_in_child(self, Resolver._after_fork)

    def resolve(self, host: str, port: int, family: int, remaining: Callable[[], float]) -> AddrInfo:
        """``getaddrinfo(host, port, family, SOCK_STREAM)``; :class:`.DeadlineExceeded`
        once ``remaining()`` (seconds left, re-read every 50 ms) is no longer positive."""
        key = (host, port, int(family))
        with self._lock:
            lookup = self._pending.get(key)
            if lookup is None:
                lookup = self._pending[key] = _Lookup(key)
                self._queue.append(lookup)
                if len(self._queue) > self._idle and self.threads < self.max_threads:
                    self._add_thread(lookup)
                self._work.notify()
            lookup.waiters += 1
        try:
            while not lookup.done.wait(max(0.0, min(remaining(), DEADLINE_POLL_SECONDS))):
                if remaining() <= 0:
                    raise DeadlineExceeded(f"Resolving {host} took longer than the deadline.", host=host)
        finally:
            self._leave(lookup)
        return lookup.answer()

    def _add_thread(self, lookup: _Lookup) -> None:
        """Start one more thread for ``lookup`` (under the lock).  Not with
        ``threading.Thread.start``, which waits for the new thread to run.  When the
        process has no thread to give, the lookup is taken back and the caller gets the
        error, as it did when it started a thread of its own."""
        self.threads += 1
        self._idle += 1
        try:
            _thread.start_new_thread(self._serve, ())
        except BaseException:
            self.threads -= 1
            self._idle -= 1
            self._queue.remove(lookup)
            del self._pending[lookup.key]
            raise

    def _leave(self, lookup: _Lookup) -> None:
        """A caller stops waiting: a lookup nobody waits for any more, still in line,
        is dropped (its thread is kept for the next one)."""
        with self._lock:
            lookup.waiters -= 1
            if lookup.waiters == 0 and not lookup.done.is_set() and lookup in self._queue:
                self._queue.remove(lookup)
                del self._pending[lookup.key]

    def _serve(self) -> None:
        threading.current_thread().name = "zis-resolver"
        while True:
            with self._lock:
                while not self._queue:
                    self._work.wait()
                lookup = self._queue.popleft()
                self._idle -= 1
            lookup.run()
            with self._lock:
                if self._pending.get(lookup.key) is lookup:
                    del self._pending[lookup.key]
                self._idle += 1
            lookup.done.set()

    def _after_fork(self) -> None:
        """A forked child has none of its parent's lookup threads, nor their callers."""
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue = deque()
        self._pending = {}
        self.threads = 0
        self._idle = 0


#: The process's resolver, shared by every outbound call.
RESOLVER: Final = Resolver()
