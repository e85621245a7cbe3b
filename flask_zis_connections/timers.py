"""One timer thread per process for short callbacks at set instants.

An outbound call's deadline watch and a refresh lease's renewals each used to start a
thread.  ``Thread.start`` returns only once the new thread has run, and under load that
means waiting for the GIL behind every other busy thread of the process: in a refresh
storm two such starts sat between taking the lease and calling the provider, 2-17 ms
each, while every other request of the burst waited on that call.  One long-lived
thread now serves them all; scheduling a callback is a heap push and a notify.  Even
that thread's own start, once per process, cost the first refresh 2-65 ms in later
traces, so it is started with :func:`_thread.start_new_thread`, which returns at once:
the thread has to run only by the time its first timer is due.

Callbacks share that thread, so they must be quick and must not block: set a flag,
shut a socket down, start a thread for anything slow.  One that raises is logged and
does not stop the others.
"""

from __future__ import annotations

import _thread
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from .forks import reset_in_child

log = logging.getLogger("flask_zis_connections")


def start_soon(thread: threading.Thread, *, failed: Callable[[], None] | None = None) -> None:
    """Start ``thread`` without waiting for it to run.

    ``thread.start()`` is called from a short-lived helper thread of its own (started
    with :func:`_thread.start_new_thread`, which returns at once), so it is that helper,
    not the caller, that waits for the GIL until the new thread has run.  For the
    process's listener threads, started by the first request that needs one - in a
    refresh storm, the one request every other one waits for.  Until it runs, the
    thread is not alive; it must end by itself when told to stop before it ran (a
    listener looks at its ``stopped`` event first).  Should the start fail (the
    process is out of threads), it is logged and ``failed()`` called.
    """

    def start() -> None:
        try:
            thread.start()
        except Exception:
            log.exception("Could not start the %s thread of flask-zis-connections.", thread.name)
            if failed is not None:
                failed()

    _thread.start_new_thread(start, ())


class Timer:
    """A scheduled callback; :meth:`cancel` keeps it from running (if it has not yet)."""

    __slots__ = ("cancelled", "fn", "queued", "timers", "when")

    def __init__(self, timers: Timers, when: float, fn: Callable[[], None]) -> None:
        self.timers = timers
        self.when = when
        self.fn = fn
        self.cancelled = False
        #: Still in its registry's heap (cleared when it is taken off).
        self.queued = True

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.queued:
                self.timers.cancelled += 1


class Timers:
    """Callbacks at monotonic instants, run in order by one daemon thread.

    The thread starts with the first callback scheduled and lives as long as the
    process.  Cancelled timers stay in the heap until they come due or until they are
    more than half of it (then it is rebuilt), so cancelling is O(1) and a burst of
    short calls leaves no lasting garbage.  :attr:`cancelled` counts them as they are
    cancelled, so finding out costs nothing; it is a heuristic (two threads may
    cancel at once), reset by each rebuild.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        #: Whether this process's timer thread was started.
        self._started = False
        #: Cancelled timers still in the heap (about: see the class docstring).
        self.cancelled = 0
        reset_in_child(self, Timers._after_fork)

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn()`` on the timer thread at ``when`` (``time.monotonic()``), or soon
        after: at once when that has passed."""
        timer = Timer(self, when, fn)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), timer))
            if not self._started:
                # Not threading.Thread.start, which waits for the new thread to run (see
                # the module docstring).  Such a thread is a daemon one: never joined.
                _thread.start_new_thread(self._run, ())
                self._started = True
            elif self._heap[0][2] is timer:
                self._cond.notify()  # earlier than what the thread sleeps towards
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, fn)

    def pending(self) -> int:
        """Timers not cancelled and not yet run (for tests and diagnostics)."""
        with self._cond:
            return sum(1 for _, _, timer in self._heap if not timer.cancelled)

    def _next_due(self) -> Timer:
        """Wait for the earliest live timer to come due and take it off the heap."""
        with self._cond:
            while True:
                heap = self._heap
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)[2].queued = False
                    self.cancelled = max(0, self.cancelled - 1)
                if not heap:
                    self._cond.wait()
                    continue
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    if len(heap) > 64 and self.cancelled * 2 > len(heap):
                        for _, _, timer in heap:
                            timer.queued = not timer.cancelled
                        self._heap = [entry for entry in heap if not entry[2].cancelled]
                        heapq.heapify(self._heap)
                        self.cancelled = 0
                    self._cond.wait(delay)
                    continue
                timer = heapq.heappop(heap)[2]
                timer.queued = False
                return timer

    def _run(self) -> None:
        threading.current_thread().name = "zis-timers"
        while True:
            timer = self._next_due()
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except Exception:
                log.exception("A timer callback of flask-zis-connections failed.")

    def _after_fork(self) -> None:
        """A forked child has no timer thread, and its parent's timers are not its own."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._started = False
        self.cancelled = 0


#: The process's timers.
TIMERS = Timers()
