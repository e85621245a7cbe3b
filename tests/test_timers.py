"""The process's timer thread: callbacks in order, cancellation, failures, forks; and the
outbound watchdog and lease keeper that run on it without a thread of their own."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import pytest

from flask_zis_connections.domain import Lease
from flask_zis_connections.lease import LeaseKeeper
from flask_zis_connections.storage.releases import LeaseReleases, ReleaseListener
from flask_zis_connections.timers import TIMERS, Timers, start_soon


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_callbacks_run_in_order_of_their_instants_on_one_thread() -> None:
    timers = Timers()
    ran: list[tuple[str, str]] = []
    now = time.monotonic()
    for label, delay in (("c", 0.09), ("a", 0.03), ("b", 0.06), ("now", -1.0)):
        timers.call_at(now + delay, lambda label=label: ran.append((label, threading.current_thread().name)))
    _wait_for(lambda: len(ran) == 4)
    assert [label for label, _ in ran] == ["now", "a", "b", "c"]
    assert {name for _, name in ran} == {"zis-timers"}


def test_the_first_timer_does_not_wait_for_the_thread_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scheduling returns before the new timer thread has run a line: under load that
    run waits for the GIL behind every busy thread (``Thread.start`` would wait with
    it).  With a long switch interval nothing takes the GIL from this thread until it
    blocks, so the timer thread can only have run if scheduling waited for it."""
    timers = Timers()
    entered = threading.Event()
    real_run = timers._run

    def run() -> None:
        entered.set()
        real_run()

    monkeypatch.setattr(timers, "_run", run)
    ran = threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        timers.call_later(0, ran.set)
        ran_before_return = entered.is_set()
    finally:
        sys.setswitchinterval(interval)
    assert not ran_before_return
    assert ran.wait(5)


class _Entered(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="zis-test-started", daemon=True)
        self.entered = threading.Event()

    def run(self) -> None:
        self.entered.set()


def test_start_soon_returns_before_the_thread_has_run() -> None:
    """As the timer thread's own start: ``Thread.start`` would wait for the new thread to
    run (with a long switch interval only a caller that blocks lets it run)."""
    thread = _Entered()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        start_soon(thread)
        ran_before_return = thread.entered.is_set()
    finally:
        sys.setswitchinterval(interval)
    assert not ran_before_return
    assert thread.entered.wait(5)
    thread.join(5)


def test_start_soon_logs_a_start_that_fails_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    thread = _Entered()
    thread.start()
    thread.join(5)
    failed = threading.Event()
    with caplog.at_level(logging.ERROR, logger="flask_zis_connections"):
        start_soon(thread, failed=failed.set)  # a thread starts only once
        assert failed.wait(5)
    assert "Could not start the zis-test-started thread" in caplog.text


def test_a_lease_listener_that_cannot_start_lets_its_waiters_poll() -> None:
    """Waiters sleep while the listener connects (it wakes them once it is up); one that
    never starts wakes them at once and leaves them polling."""
    releases = LeaseReleases()
    listener = ReleaseListener(lambda: None, "channel", releases)
    releases.connecting.set()
    with releases.watch("refresh:1") as released:
        listener.unavailable()
        assert released.is_set()
    assert not releases.connecting.is_set() and not releases.across_processes.is_set()


def test_an_earlier_timer_wakes_a_thread_sleeping_towards_a_later_one() -> None:
    timers = Timers()
    timers.call_later(30, lambda: None)
    time.sleep(0.02)  # the thread now sleeps towards +30 s
    ran = threading.Event()
    started = time.monotonic()
    timers.call_later(0.01, ran.set)
    assert ran.wait(2)
    assert time.monotonic() - started < 1


def test_a_cancelled_timer_does_not_run_and_does_not_count() -> None:
    timers = Timers()
    ran: list[int] = []
    keep = timers.call_later(0.05, lambda: ran.append(1))
    dropped = timers.call_later(0.02, lambda: ran.append(2))
    dropped.cancel()
    assert timers.pending() == 1
    _wait_for(lambda: ran == [1])
    time.sleep(0.05)
    assert ran == [1] and not keep.cancelled and timers.pending() == 0


def test_many_cancelled_timers_are_dropped_from_the_heap() -> None:
    timers = Timers()
    for _ in range(500):
        timers.call_later(60, lambda: None).cancel()
    timers.call_later(0.01, lambda: None)
    _wait_for(lambda: len(timers._heap) < 100)


def test_a_failing_callback_is_logged_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    timers = Timers()
    ran = threading.Event()

    def boom() -> None:
        raise RuntimeError("secret-free failure")

    with caplog.at_level(logging.ERROR, logger="flask_zis_connections"):
        timers.call_later(0.0, boom)
        timers.call_later(0.01, ran.set)
        assert ran.wait(2)
    assert "A timer callback of flask-zis-connections failed." in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_its_own_timers_and_none_of_its_parents() -> None:
    timers = Timers()
    parent_ran: list[int] = []
    timers.call_later(0.3, lambda: parent_ran.append(os.getpid()))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only what it schedules itself runs here
        try:
            mine = threading.Event()
            timers.call_later(0.01, mine.set)
            ok = mine.wait(2) and timers.pending() == 0
            time.sleep(0.5)  # past the parent's timer: it must not run in the child
            os.write(write, b"ok" if ok and parent_ran == [] else b"no")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and status == 0
    os.close(read)
    _wait_for(lambda: parent_ran == [os.getpid()])


class _Renewals:
    """A storage stand-in that only counts renewals (the keeper calls nothing else)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def renew_lease(self, key: str, owner: str, ttl: float, now: object) -> bool:
        self.calls.append(threading.current_thread().name)
        return True


def _keeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zis-lease-keeper"]


def test_a_short_hold_starts_no_keeper_thread_and_leaves_no_timer() -> None:
    storage = _Renewals()
    before = TIMERS.pending()
    with LeaseKeeper(storage, Lease("refresh:x", "me"), 10.0, time.monotonic()):  # type: ignore[arg-type]
        assert _keeper_threads() == []
    time.sleep(0.05)
    assert storage.calls == [] and _keeper_threads() == [] and TIMERS.pending() == before


def test_a_long_hold_renews_every_quarter_ttl_from_its_own_thread() -> None:
    storage = _Renewals()
    taken = time.monotonic()
    with LeaseKeeper(storage, Lease("refresh:y", "me"), 0.4, taken) as keeper:  # type: ignore[arg-type]
        first = keeper.deadline()
        _wait_for(lambda: len(storage.calls) >= 3)
        assert keeper.deadline() > first  # each renewal moves the deadline on
    assert set(storage.calls) == {"zis-lease-keeper"}
    assert _keeper_threads() == []  # joined on exit
    renewed = len(storage.calls)
    time.sleep(0.25)
    assert len(storage.calls) == renewed  # none after the holder let go
