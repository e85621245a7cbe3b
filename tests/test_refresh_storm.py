"""A burst of callers for one due connection: one caller per process deals with storage.

:class:`~flask_zis_connections.singleflight.SingleFlight` on its own (real threads), then
the token lifecycle on every backend against the real in-process provider: one provider
call *and one lease attempt* for a burst of threads, failures handed to every waiter,
the lease taken without a database error, its release heard across processes
(PostgreSQL ``NOTIFY``), and two OS processes sharing one refresh.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event as sa_event

from flask_zis_connections import ProviderError, ReauthorizationRequired, get_token
from flask_zis_connections.domain import utcnow
from flask_zis_connections.errors import ConnectionNotFound, StorageUnavailable
from flask_zis_connections.singleflight import FlightTimeout, SingleFlight, _Flight
from flask_zis_connections.storage import SQLAlchemyStorage, Storage
from flask_zis_connections.storage.sqlalchemy.coordination import LEASE_CHANNEL

from . import lifecycle_worker
from .flow_driver import auth_header, connect, register
from .helpers import JOIN_TIMEOUT, PREFIX, gather_processes, run_threads
from .live_provider import LiveProvider

THREADS = 12


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- SingleFlight ----------------------------------------------------------------------------------
def test_one_caller_runs_the_work_and_every_waiter_gets_its_result() -> None:
    flights: SingleFlight[object] = SingleFlight()
    release = threading.Event()
    runs: list[int] = []
    result = object()

    def work() -> object:
        runs.append(1)
        _wait_for(lambda: flights.waiting("k") == THREADS - 1, "every waiter")
        release.wait(JOIN_TIMEOUT)
        return result

    def call(_: int) -> tuple[object, bool]:
        return flights.run("k", work, JOIN_TIMEOUT)

    threading.Timer(0.05, release.set).start()
    answers, errors = run_threads(THREADS, call)
    assert errors == []
    assert runs == [1]
    assert all(got is result for got, _ in answers)
    assert sorted(led for _, led in answers) == [False] * (THREADS - 1) + [True]
    assert flights.waiting("k") == 0
    # The flight is over: the next caller runs the work again.
    assert flights.run("k", lambda: "again", JOIN_TIMEOUT) == ("again", True)


def _queue_waiters(
    flights: SingleFlight[str], count: int, got: list[int], timeouts: dict[int, float]
) -> list[threading.Thread]:
    """Start ``count`` waiters of flight "k" one after another (each counted before the
    next starts); each appends its index to ``got`` when it has the outcome."""
    lock = threading.Lock()
    threads = []
    for i in range(count):

        def wait(i: int = i) -> None:
            try:
                flights.run("k", lambda: "not me", timeouts.get(i, JOIN_TIMEOUT))
            except FlightTimeout:
                return
            with lock:
                got.append(i)

        thread = threading.Thread(target=wait)
        thread.start()
        threads.append(thread)
        _wait_for(lambda: flights.waiting("k") == len(threads), f"waiter {i}")
    return threads


def _held_flight() -> tuple[SingleFlight[str], threading.Event, threading.Thread]:
    """A flight of "k" whose leader holds it until the event is set."""
    flights: SingleFlight[str] = SingleFlight()
    release = threading.Event()
    leader = threading.Thread(
        target=lambda: flights.run("k", lambda: release.wait(JOIN_TIMEOUT) and "done", 60)
    )
    leader.start()
    _wait_for(lambda: "k" in flights._flights, "the leader")
    return flights, release, leader


def test_the_outcome_is_handed_to_the_waiters_in_arrival_order() -> None:
    """Each waiter wakes the next, so they get the outcome one after another in the
    order they came (woken all at once, 20 threads would return in a scrambled order)."""
    flights, release, leader = _held_flight()
    got: list[int] = []
    waiters = _queue_waiters(flights, 20, got, {})
    release.set()
    for thread in [leader, *waiters]:
        thread.join(JOIN_TIMEOUT)
    assert got == list(range(20))
    assert flights.waiting("k") == 0


def test_a_waiter_leaving_the_queue_strands_nobody_behind_it() -> None:
    """Waiter 1 gives up before the outcome: the hand-off skips it and waiters 2 and 3
    get the outcome at once, not after the second a stranded waiter would look again."""
    flights, release, leader = _held_flight()
    got: list[int] = []
    # Not a multiple of the waiters' one-second look at their leader, which would have
    # them find the outcome by themselves, in any order, just as waiter 1 leaves.
    waiters = _queue_waiters(flights, 4, got, {1: 0.4})
    waiters[1].join(JOIN_TIMEOUT)  # timed out, left the queue
    assert len(flights._flights["k"].queue) == 3
    started = time.monotonic()
    release.set()
    for thread in [leader, *waiters]:
        thread.join(JOIN_TIMEOUT)
    assert got == [0, 2, 3]
    assert time.monotonic() - started < 0.5


def test_a_turn_handed_to_a_waiter_that_is_leaving_goes_on_to_the_next() -> None:
    """The race of a waiter timing out just as its turn comes: popped from the queue but
    gone, it passes the turn on rather than swallow it."""
    flights: SingleFlight[str] = SingleFlight()
    flight: _Flight[str] = _Flight(None)
    leaving, behind = threading.Event(), threading.Event()
    flight.queue.extend([leaving, behind])
    assert flight.queue.popleft() is leaving  # its predecessor's hand-off, not yet set
    flights._leave(flight, leaving)
    assert behind.is_set() and not flight.queue
    # One still queued just leaves: nothing is handed to anybody.
    later = threading.Event()
    flight.queue.append(later)
    flights._leave(flight, later)
    assert not later.is_set() and not flight.queue


def test_other_keys_fly_apart() -> None:
    flights: SingleFlight[str] = SingleFlight()
    inside = threading.Barrier(2)

    def work(key: str) -> str:
        inside.wait(JOIN_TIMEOUT)  # both run at once, or this never returns
        return key

    answers, errors = run_threads(2, lambda i: flights.run(f"k{i}", lambda: work(f"k{i}"), JOIN_TIMEOUT))
    assert errors == [] and answers == [("k0", True), ("k1", True)]


def test_a_waiter_gets_a_copy_of_the_leaders_error() -> None:
    flights: SingleFlight[None] = SingleFlight()
    raised: list[BaseException] = []

    def work() -> None:
        _wait_for(lambda: flights.waiting("k") == THREADS - 1, "every waiter")
        exc = ProviderError("The provider is down. Try again.", retry_after=7)
        raised.append(exc)
        raise exc

    _, errors = run_threads(THREADS, lambda _: flights.run("k", work, JOIN_TIMEOUT))
    assert len(raised) == 1 and len(errors) == THREADS
    for error in errors:
        assert type(error) is ProviderError
        assert error.message == "The provider is down. Try again." and error.retry_after == 7
    # Each thread raised its own object (a shared one would collect every thread's
    # traceback); the waiters' copies name the leader's error as their cause.
    assert len({id(e) for e in errors}) == THREADS
    copies = [e for e in errors if e is not raised[0]]
    assert len(copies) == THREADS - 1 and all(e.__cause__ is raised[0] for e in copies)


def test_an_interrupted_leader_hands_the_work_to_a_waiter() -> None:
    """``SystemExit`` and its kin end the leader's thread, not its waiters' requests."""

    class Interrupted(BaseException):
        pass

    flights: SingleFlight[str] = SingleFlight()
    runs: list[str] = []

    def work() -> str:
        runs.append(threading.current_thread().name)
        waiters = THREADS - len(runs)  # the interrupted leader's thread is gone
        _wait_for(lambda: flights.waiting("k") == waiters, "every waiter")
        if len(runs) == 1:
            raise Interrupted
        return "done"

    answers, errors = run_threads(THREADS, lambda _: flights.run("k", work, JOIN_TIMEOUT))
    assert [type(e) for e in errors] == [Interrupted]
    assert len(runs) == 2 and runs[0] != runs[1]
    assert sorted(a for a in answers if a is not None) == [("done", False)] * (THREADS - 2) + [("done", True)]


def test_a_leader_gone_without_an_outcome_is_replaced() -> None:
    """A flight whose leader thread ended without finishing (what a fork leaves in the
    child) strands nobody: a waiter notices within a second and runs the work."""
    flights: SingleFlight[str] = SingleFlight()
    orphan: list[_Flight[str]] = []
    gone = threading.Thread(target=lambda: orphan.append(_Flight(None)))
    gone.start()
    gone.join()
    flights._flights["k"] = orphan[0]
    started = time.monotonic()
    assert flights.run("k", lambda: "mine", JOIN_TIMEOUT) == ("mine", True)
    assert time.monotonic() - started < JOIN_TIMEOUT
    assert not orphan[0].done.is_set()


def test_a_waiter_gives_up_after_its_timeout() -> None:
    flights: SingleFlight[bool] = SingleFlight()
    release = threading.Event()
    leader = threading.Thread(target=lambda: flights.run("k", lambda: release.wait(JOIN_TIMEOUT), 60))
    leader.start()
    _wait_for(lambda: "k" in flights._flights, "the leader")
    try:
        with pytest.raises(FlightTimeout):
            flights.run("k", lambda: True, 0.05)
    finally:
        release.set()
        leader.join(JOIN_TIMEOUT)


def test_join_waits_for_a_running_flight_and_finds_none_otherwise() -> None:
    flights: SingleFlight[str] = SingleFlight()
    assert flights.join("k", JOIN_TIMEOUT) is None  # nothing runs: nothing waited for
    release = threading.Event()
    leader = threading.Thread(
        target=lambda: flights.run("k", lambda: release.wait(JOIN_TIMEOUT) and "done", 60)
    )
    leader.start()
    _wait_for(lambda: "k" in flights._flights, "the leader")
    joined: list[str | None] = []
    joiner = threading.Thread(target=lambda: joined.append(flights.join("k", JOIN_TIMEOUT)))
    joiner.start()
    _wait_for(lambda: flights.waiting("k") == 1, "the joiner")  # counted as a waiter
    assert joined == []
    release.set()
    leader.join(JOIN_TIMEOUT)
    joiner.join(JOIN_TIMEOUT)
    assert joined == ["done"]
    assert flights.join("k", JOIN_TIMEOUT) is None  # over: the next caller reads for itself


def test_a_flight_is_found_by_its_alias_only_while_it_runs() -> None:
    flights: SingleFlight[str] = SingleFlight()
    assert flights.key_for(("acme", "main")) is None
    release = threading.Event()
    leader = threading.Thread(
        target=lambda: flights.run(
            "uuid-1", lambda: release.wait(JOIN_TIMEOUT) and "done", 60, alias=("acme", "main")
        )
    )
    leader.start()
    _wait_for(lambda: "uuid-1" in flights._flights, "the leader")
    assert flights.key_for(("acme", "main")) == "uuid-1"
    assert flights.key_for(("acme", "other")) is None
    release.set()
    leader.join(JOIN_TIMEOUT)
    assert flights.key_for(("acme", "main")) is None and flights._aliases == {}


def test_a_dead_leaders_flight_loses_its_alias_too() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gone = threading.Thread(target=lambda: None)
    gone.start()
    gone.join()
    orphan: _Flight[str] = _Flight(("acme", "main"))
    orphan.leader = gone  # a leader that ended without an outcome (the process forked away)
    flights._flights["uuid-1"], flights._aliases[("acme", "main")] = orphan, "uuid-1"
    assert flights.join("uuid-1", JOIN_TIMEOUT) is None
    assert flights.key_for(("acme", "main")) is None and "uuid-1" not in flights._flights


def test_a_joiner_gets_a_copy_of_the_leaders_error() -> None:
    flights: SingleFlight[None] = SingleFlight()

    def work() -> None:
        _wait_for(lambda: flights.waiting("k") == 1, "the joiner")
        raise ProviderError("The provider is down. Try again.", retry_after=7)

    led: list[BaseException] = []

    def lead() -> None:
        try:
            flights.run("k", work, 60)
        except ProviderError as exc:
            led.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    _wait_for(lambda: "k" in flights._flights, "the leader")
    with pytest.raises(ProviderError) as caught:
        flights.join("k", JOIN_TIMEOUT)
    leader.join(JOIN_TIMEOUT)
    assert caught.value.retry_after == 7
    assert len(led) == 1 and caught.value is not led[0]  # a copy of its own


# -- the token lifecycle on every backend --------------------------------------------------------
class Spied:
    """The storage's lease attempts and releases, with the thread that made each."""

    def __init__(self, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[tuple[str, bool]] = []
        real_take = storage.take_lease_and_read

        def take(*args: Any, **kwargs: Any) -> Any:
            got, state = real_take(*args, **kwargs)
            self.attempts.append((threading.current_thread().name, got))
            return got, state

        monkeypatch.setattr(storage, "take_lease_and_read", take)


@pytest.fixture
def storm(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]]:
    """An app with an expired connection ``main`` at a slow provider."""

    def build(**config: Any) -> tuple[Flask, LiveProvider, dict[str, Any]]:
        provider = provider_factory(SLOW_SLEEP=0.5)
        app = make_app(**config)
        register(app, provider)
        conn = connect(app, provider, auth_header(app), allow_offline_access=True)
        storage: Storage = app.extensions["zis_connections"].storage
        rec = storage.get_connection("acme", name="main")
        assert rec is not None
        expired = storage.update_connection(
            rec.replace(token_expiry=utcnow() - timedelta(minutes=5)), expected_version=rec.version
        )
        assert expired is not None
        return app, provider, conn

    return build


def _get_token(app: Flask) -> Callable[[int], str]:
    def call(_: int) -> str:
        with app.app_context():
            return get_token("acme", "main")

    return call


def test_a_burst_makes_one_provider_call_and_one_lease_attempt(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, provider, conn = storm()
    spied = Spied(app.extensions["zis_connections"].storage, monkeypatch)
    provider.state.inject_token_fault("slow")
    tokens, errors = run_threads(THREADS, _get_token(app))
    assert errors == []
    assert provider.state.refresh_call_count == 1
    assert len(set(tokens)) == 1 and tokens[0] != conn["access_token"]
    assert [got for _, got in spied.attempts] == [True], spied.attempts


class Reads:
    """The storage reads of a connection's row each thread made (narrow or whole)."""

    def __init__(self, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_thread: dict[str, int] = {}
        for method in ("read_token", "get_connection"):
            real = getattr(storage, method)

            def counted(*args: Any, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
                name = threading.current_thread().name
                self.by_thread[name] = self.by_thread.get(name, 0) + 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(storage, method, counted)


def test_callers_arriving_during_the_refresh_join_it_without_reading(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a burst most callers arrive while the refresh is under way: they wait for it
    by the connection's name and read nothing - through ``get_token`` and through the
    HTTP API's show alike - and get the token it stored."""
    app, provider, conn = storm()
    storage: Storage = app.extensions["zis_connections"].storage
    life = app.extensions["zis_connections"].lifecycle
    provider.state.inject_token_fault("slow")  # the provider answers after 0.5 s
    leader = threading.Thread(target=_get_token(app), args=(0,), name="leader")
    leader.start()
    flights = life._refresher.flights
    _wait_for(lambda: flights.key_for(("acme", "main")) is not None, "the refresh to start")
    reads = Reads(storage, monkeypatch)
    bearer = auth_header(app)

    def show(i: int) -> str:
        resp = app.test_client().get(f"{PREFIX}/connections/acme?name=main", headers=bearer)
        assert resp.status_code == 200, resp.get_json()
        return str(resp.get_json()["access_token"])

    got, errors = run_threads(THREADS, lambda i: _get_token(app)(i) if i % 2 else show(i))
    leader.join(JOIN_TIMEOUT)
    assert errors == []
    assert provider.state.refresh_call_count == 1
    assert len(set(got)) == 1 and got[0] != conn["access_token"]
    joiners = {name: n for name, n in reads.by_thread.items() if name != "leader"}
    assert joiners == {}, joiners
    # Once the refresh is over there is nothing to join: the next caller reads.
    assert flights.key_for(("acme", "main")) is None
    with app.app_context():
        assert get_token("acme", "main") == got[0]
    assert reads.by_thread.get(threading.current_thread().name) == 1


def test_callers_finding_the_token_due_leave_the_row_to_the_lease_holder(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst that arrives before any refresh runs: each caller's narrow read finds
    the token due, and nobody reads the whole row before the lease - the holder reads
    it once, with its back-off and client - through ``get_token`` and show alike."""
    app, provider, conn = storm()
    storage: Storage = app.extensions["zis_connections"].storage
    provider.state.inject_token_fault("slow")
    whole: list[str] = []
    states: list[str] = []
    for method, seen in (("get_connection", whole), ("take_lease_and_read", states)):
        real = getattr(storage, method)

        def counted(*args: Any, _real: Callable[..., Any] = real, _seen: list[str] = seen, **kw: Any) -> Any:
            _seen.append(threading.current_thread().name)
            return _real(*args, **kw)

        monkeypatch.setattr(storage, method, counted)
    bearer = auth_header(app)
    start = threading.Barrier(THREADS)

    def call(i: int) -> str:
        start.wait(JOIN_TIMEOUT)
        if i % 2:
            return _get_token(app)(i)
        resp = app.test_client().get(f"{PREFIX}/connections/acme?name=main", headers=bearer)
        assert resp.status_code == 200, resp.get_json()
        return str(resp.get_json()["access_token"])

    got, errors = run_threads(THREADS, call)
    assert errors == []
    assert provider.state.refresh_call_count == 1
    assert len(set(got)) == 1 and got[0] != conn["access_token"]
    assert whole == [] and len(states) == 1, (whole, states)


def test_a_caller_that_saw_a_later_write_than_the_flight_gets_that_row(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller with only a narrow read joins a flight that ends on an older row (here:
    refused by the back-off) than the one it saw: it reads that row itself, and gets
    its still-valid token, not the expired one the flight started from."""
    app, provider, _ = storm()
    storage: Storage = app.extensions["zis_connections"].storage
    life = app.extensions["zis_connections"].lifecycle
    old = storage.get_connection("acme", name="main")
    assert old is not None
    storage.record_refresh_failure(old.uuid, "provider_error", utcnow(), base=60, cap=60)
    entered, go = threading.Event(), threading.Event()
    real_take = storage.take_lease_and_read

    def held(*args: Any, **kwargs: Any) -> Any:
        found = real_take(*args, **kwargs)  # refused, with the row as it is now
        entered.set()
        assert go.wait(JOIN_TIMEOUT)
        return found

    monkeypatch.setattr(storage, "take_lease_and_read", held)
    results: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                results[name] = fn()
            except Exception as exc:  # what the caller got, checked below
                results[name] = exc

        thread = threading.Thread(target=target, name=name)
        thread.start()
        return thread

    leader = run("leader", lambda: life.ensure_fresh(old, force=False))
    assert entered.wait(JOIN_TIMEOUT)
    # Written meanwhile: due (within the leeway) but not expired, and still backed off.
    soon = utcnow() + timedelta(seconds=30)
    hour_ago = utcnow() - timedelta(hours=1)
    later = storage.update_connection(
        old.replace(token_expiry=soon, updated_at=hour_ago), expected_version=old.version
    )
    assert later is not None
    head = storage.read_token("acme", "main")
    assert head is not None and head.version == later.version and not life.is_fresh(head)
    joiner = run("joiner", lambda: life.refresh_due("acme", "main", head))
    _wait_for(lambda: life._refresher.flights.waiting(old.uuid) == 1, "the joiner to wait")
    go.set()
    leader.join(JOIN_TIMEOUT)
    joiner.join(JOIN_TIMEOUT)
    assert isinstance(results["leader"], ProviderError)  # its own row has expired
    assert results["joiner"].version == later.version
    assert results["joiner"].access_token_enc == later.access_token_enc
    assert provider.state.refresh_call_count == 0


def test_a_connection_deleted_before_the_lease_is_not_found_and_leaves_no_lease(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]],
) -> None:
    """The lease is taken, the read after it finds no row: the caller gets "not
    found", the provider nothing, and the lease is released at once (not left to
    lapse)."""
    app, provider, _ = storm()
    storage: Storage = app.extensions["zis_connections"].storage
    life = app.extensions["zis_connections"].lifecycle
    head = storage.read_token("acme", "main")
    assert head is not None and not life.is_fresh(head)
    assert storage.delete_connection("acme", head.uuid)
    with pytest.raises(ConnectionNotFound):
        life.refresh_due("acme", "main", head)
    assert storage.lease_holder(f"refresh:{head.uuid}", utcnow()) is None
    assert provider.state.refresh_call_count == 0


def test_forced_refreshes_arriving_after_a_stored_one_refresh_again(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]],
) -> None:
    """A forced caller that read the row after the flight stored its refresh is not
    served by that flight: it goes round again and gets a refresh of its own."""
    app, provider, _ = storm()
    life = app.extensions["zis_connections"].lifecycle
    storage: Storage = app.extensions["zis_connections"].storage
    provider.state.inject_token_fault("slow")
    first = life.ensure_fresh(storage.get_connection("acme", name="main"), force=False)
    later = storage.get_connection("acme", name="main")
    assert later is not None and later.version == first.version
    again = life.ensure_fresh(later, force=True)
    assert again.version == first.version + 1
    assert provider.state.refresh_call_count == 2


def _until_every_other_thread_waits(life: Any, uuid: str) -> None:
    """Hold the leader until the other threads all wait for its flight."""
    _wait_for(lambda: life._refresher.flights.waiting(uuid) == THREADS - 1, "every waiter")


@pytest.mark.parametrize("fault", ["invalid_grant", "http500"])
def test_every_waiter_gets_the_failure_of_the_refresh_it_waited_for(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    app, provider, _ = storm()
    life = app.extensions["zis_connections"].lifecycle
    storage: Storage = app.extensions["zis_connections"].storage
    rec = storage.get_connection("acme", name="main")
    assert rec is not None
    real_take = storage.take_lease_and_read

    def take(*args: Any, **kwargs: Any) -> Any:
        _until_every_other_thread_waits(life, rec.uuid)
        return real_take(*args, **kwargs)

    monkeypatch.setattr(storage, "take_lease_and_read", take)
    provider.state.inject_token_fault(fault)
    _, errors = run_threads(THREADS, _get_token(app))
    assert provider.state.refresh_call_count == 1  # one call, failed, for everyone
    assert len(errors) == THREADS
    if fault == "invalid_grant":
        assert all(type(e) is ReauthorizationRequired for e in errors), errors
        assert storage.get_connection("acme", name="main").needs_reauth  # type: ignore[union-attr]
    else:
        # The one that called the provider gets its error; the others the back-off it
        # started - a 502 with Retry-After either way, and no second call.
        assert all(type(e) is ProviderError and e.retry_after is not None for e in errors), errors
        assert storage.get_refresh_backoff(rec.uuid) is not None
    assert len({id(e) for e in errors}) == THREADS


def test_a_storage_failure_in_the_leader_reaches_every_waiter(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, provider, conn = storm()
    life = app.extensions["zis_connections"].lifecycle
    storage: Storage = app.extensions["zis_connections"].storage
    rec = storage.get_connection("acme", name="main")
    assert rec is not None

    def down(*args: Any, **kwargs: Any) -> Any:
        _until_every_other_thread_waits(life, rec.uuid)
        raise StorageUnavailable("The connections database is unavailable (test). Check it.")

    monkeypatch.setattr(storage, "take_lease_and_read", down)
    _, errors = run_threads(THREADS, _get_token(app))
    assert len(errors) == THREADS and all(type(e) is StorageUnavailable for e in errors), errors
    assert provider.state.refresh_call_count == 0
    monkeypatch.undo()
    # Nothing is left behind: the next caller refreshes.
    assert _get_token(app)(0) != conn["access_token"]
    assert provider.state.refresh_call_count == 1


def test_a_lost_lease_race_logs_no_database_error(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], backend: str
) -> None:
    """The lease is an upsert: a caller that loses gets False, and on PostgreSQL the
    server logs no ``duplicate key`` error (the log is read when the test has it)."""
    if backend == "memory":
        pytest.skip("no database")
    app, _, _ = storm()
    storage: Storage = app.extensions["zis_connections"].storage
    log = _server_log(storage) if backend == "postgres" else None
    start = log.stat().st_size if log is not None else None
    now = utcnow()
    got, errors = run_threads(THREADS, lambda i: storage.acquire_lease("refresh:race", f"owner{i}", 30, now))
    assert errors == [] and sorted(got) == [False] * (THREADS - 1) + [True]
    winner = f"owner{got.index(True)}"
    assert storage.lease_holder("refresh:race", now) == winner
    # Expired, it is taken over by exactly one of many.
    later = now + timedelta(seconds=31)
    got, errors = run_threads(THREADS, lambda i: storage.acquire_lease("refresh:race", f"next{i}", 30, later))
    assert errors == [] and sorted(got) == [False] * (THREADS - 1) + [True]
    if log is not None and start is not None:
        with open(log, "rb") as f:
            f.seek(start)
            assert b"duplicate key" not in f.read()


def _server_log(storage: Storage) -> Path | None:
    """The server's log where ``.ci/services.sh`` puts it (beside the data directory),
    when this machine can read it; else None (the check is left out)."""
    assert isinstance(storage, SQLAlchemyStorage)
    with storage.engine.connect() as db:
        data = db.exec_driver_sql("SHOW data_directory").scalar()
    log = Path(str(data)).parent / "pg.log"
    return log if log.is_file() and os.access(log, os.R_OK) else None


# -- releases heard across processes ----------------------------------------------------------
@pytest.mark.postgres
def test_a_release_in_another_process_wakes_the_waiter(postgres_url: str) -> None:
    """Two storages on one database stand for two processes: a release by one reaches
    the other's watcher through ``LISTEN``/``NOTIFY``, and nothing else does."""
    waiter, holder = SQLAlchemyStorage(postgres_url), SQLAlchemyStorage(postgres_url)
    try:
        waiter.create_tables()
        now = utcnow()
        assert holder.acquire_lease("refresh:x", "holder", 30, now)
        with waiter.watch_lease("refresh:x") as released, waiter.watch_lease("refresh:other") as other:
            assert waiter.lease_releases().across_processes.wait(JOIN_TIMEOUT), "the listener never listened"
            released.clear()
            other.clear()
            holder.release_lease("refresh:x", "nobody")  # not its holder: nothing released
            assert not released.wait(0.3)
            holder.release_lease("refresh:x", "holder")
            assert released.wait(JOIN_TIMEOUT)
            assert not other.is_set()
        assert waiter.lease_holder("refresh:x", now) is None
    finally:
        waiter.close()
        holder.close()
    assert LEASE_CHANNEL == "zis_lease_released"


@pytest.mark.postgres
def test_the_release_listener_is_up_before_the_first_refresh(postgres_url: str) -> None:
    """A process's first read of a token starts its release listener, so a burst on an
    expired token does not wait for that connection, nor look again when it is up: a
    release made right after the read reaches a watcher with no lease ever tried."""
    reader, holder = SQLAlchemyStorage(postgres_url), SQLAlchemyStorage(postgres_url)
    try:
        reader.create_tables()
        releases = reader.lease_releases()
        assert not releases.connecting.is_set() and not releases.across_processes.is_set()
        assert reader.read_token("acme", "nobody") is None
        assert releases.across_processes.wait(JOIN_TIMEOUT), "the first read started no listener"
        listeners = list(reader._listeners)
        assert len(listeners) == 1
        assert holder.acquire_lease("refresh:y", "holder", 30, utcnow())
        with reader.watch_lease("refresh:y") as released:
            holder.release_lease("refresh:y", "holder")
            assert released.wait(JOIN_TIMEOUT)
        reader.read_token("acme", "nobody")
        assert reader._listeners == listeners  # one per process, however many reads
    finally:
        reader.close()
        holder.close()


def test_without_a_channel_a_waiter_polls(tmp_path: Path) -> None:
    """SQLite has no channel between processes: the registry says so, and a waiter of
    another process's lease falls back to polling (the lifecycle's pause)."""
    storage = SQLAlchemyStorage(f"sqlite:///{tmp_path / 'zis.sqlite3'}")
    try:
        storage.create_tables()
        assert storage.read_token("acme", "nobody") is None  # where PostgreSQL starts its listener
        with storage.watch_lease("refresh:x"):
            assert not storage.lease_releases().across_processes.is_set()
            assert not storage.lease_releases().connecting.is_set()
        assert storage._listeners == []
    finally:
        storage.close()


# -- two processes ----------------------------------------------------------------------
def _child(
    database_uri: str, keys: list[str], threads: int, start: Any, results: Any
) -> None:  # pragma: no cover - runs in a spawned process
    """One process: ``threads`` get_token calls at once; reports the lease attempts."""
    tokens: list[str] = []
    errors: list[str] = []
    attempts: list[tuple[str, bool]] = []
    app: Flask | None = None
    try:
        app = lifecycle_worker.build_app(database_uri, keys)
        storage: Storage = app.extensions["zis_connections"].storage
        real_take = storage.take_lease_and_read

        def take(*args: Any, **kwargs: Any) -> Any:
            got, state = real_take(*args, **kwargs)
            attempts.append((threading.current_thread().name, got))
            return got, state

        storage.take_lease_and_read = take  # type: ignore[method-assign]
        # The release listener up before the burst, as in a process that has served
        # before: its first connection is not what this test is about.
        with storage.watch_lease("refresh:warm-up"):
            storage.lease_releases().across_processes.wait(10)
        barrier = threading.Barrier(threads)

        def call() -> None:
            assert app is not None
            try:
                barrier.wait(timeout=60)
                with app.app_context():
                    tokens.append(get_token("acme", "main"))
            except Exception:
                errors.append(traceback.format_exc())

        workers = [threading.Thread(target=call) for _ in range(threads)]
        start.wait(timeout=60)
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        if app is not None:
            app.extensions["zis_connections"].storage.close()
        results.put((os.getpid(), tokens, errors, attempts))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_processes_one_refresh_one_thread_each_on_the_lease(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]], database_uri: str, backend: str
) -> None:
    app, provider, conn = storm()
    provider.state.inject_token_fault("slow")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    results: Any = ctx.Queue()
    keys = list(app.config["ZIS_ENCRYPTION_KEYS"])
    procs = [ctx.Process(target=_child, args=(database_uri, keys, 8, start, results)) for _ in range(2)]
    reports = gather_processes(procs, results)
    assert [e for _, _, errs, _ in reports for e in errs] == []
    tokens = [t for _, toks, _, _ in reports for t in toks]
    assert len(tokens) == 16 and len(set(tokens)) == 1 and tokens[0] != conn["access_token"]
    assert provider.state.refresh_call_count == 1
    for _, _, _, attempts in reports:
        # One thread per process ever touched the lease ...
        assert len({thread for thread, _ in attempts}) == 1, attempts
        if backend == "postgres":
            # ... and, hearing the other's release, tried it once.
            assert len(attempts) == 1, attempts
    assert sum(got for _, _, _, attempts in reports for _, got in attempts) == 1


def _kind(statement: str) -> str:
    """What one statement of a refresh is, by its table and verb."""
    sql = " ".join(statement.split()).lower()
    if sql.startswith("insert into zis_refresh_leases"):
        return "lease"
    if "left outer join zis_refresh_backoff" in sql:
        return "state"
    if sql.startswith("update zis_connections"):
        return "write"
    if "delete from zis_refresh_leases" in sql:
        return "release"
    if sql.startswith("insert into zis_events"):
        return "event"
    return sql.split(" ", 1)[0]  # select, begin ...


def test_a_refresh_is_four_statements(
    storm: Callable[..., tuple[Flask, LiveProvider, dict[str, Any]]],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every caller waiting for a refresh waits for the leader's round trips: the
    lease (refused in the same statement while the connection backs off), one read of
    the row with its back-off and client, the provider, the write (with the row it
    leaves, where the database has RETURNING), the release.  Before the lease only the
    narrow read (on the reader's own connections, not the engine's): the whole row is
    read by the lease holder, not before.  The lease's statements, that read and the
    write (where it returns its row) run as SQL compiled when the storage was made:
    nothing is compiled on the way to the provider or back.  On PostgreSQL the lease
    and the read go in one pipeline: one round trip; on SQLite both are sent on the
    driver's connection, past SQLAlchemy's execution.  After the release the event is
    appended by one statement of its own: in autocommit on PostgreSQL, outside
    ``BEGIN IMMEDIATE`` on SQLite."""
    if backend == "memory":
        pytest.skip("no database")
    app, provider, conn = storm(ZIS_TOKEN_CACHE_TTL=0)
    storage = app.extensions["zis_connections"].storage
    assert isinstance(storage, SQLAlchemyStorage)
    kinds: list[str] = []
    compiled: dict[str, bool] = {}
    pipelined: dict[str, bool] = {}
    #: On PostgreSQL, whether each statement sent through the engine ran in autocommit.
    autocommit: dict[str, bool] = {}

    #: What went through SQLAlchemy's execution, by kind.
    through_engine: set[str] = set()

    def seen(_c: Any, _cur: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if backend != "sqlite":  # there every statement is heard from the driver (below)
            kinds.append(_kind(statement))
        through_engine.add(_kind(statement))
        compiled[_kind(statement)] = context.compiled is not None
        if backend == "postgres":
            autocommit[_kind(statement)] = _c.connection.dbapi_connection.autocommit

    if backend == "sqlite":
        # Every statement the engine's connections run, whoever sends it; the hot
        # reader's own connections (the narrow read) are not the engine's to count.
        def heard(sql: str) -> None:
            kinds.append(_kind(sql))
            compiled.setdefault(kinds[-1], False)  # sent as SQL: unless the engine compiled it

        def traced(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.set_trace_callback(heard)

        hot = storage._hot
        assert hot is not None
        hot.close()
        opener = hot._connect

        def untraced() -> Any:
            conn = opener()
            conn.set_trace_callback(None)
            return conn

        monkeypatch.setattr(hot, "_connect", untraced)
        storage.engine.dispose()
        sa_event.listen(storage.engine, "connect", traced)

    if backend == "postgres":
        # Statements sent on the driver's own connection, past SQLAlchemy's events.
        import psycopg
        from psycopg.pq import PipelineStatus

        real_execute = psycopg.Connection.execute

        def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
            if str(query).startswith("LISTEN"):  # the release listener's own connection
                return real_execute(self, query, *args, **kwargs)
            kinds.append(_kind(str(query)))
            compiled[kinds[-1]] = False
            pipelined[kinds[-1]] = self.pgconn.pipeline_status != PipelineStatus.OFF
            return real_execute(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "execute", execute)

    sa_event.listen(storage.engine, "before_cursor_execute", seen)
    try:
        token = _get_token(app)(0)
    finally:
        sa_event.remove(storage.engine, "before_cursor_execute", seen)
        if backend == "sqlite":
            sa_event.remove(storage.engine, "connect", traced)
    assert token != conn["access_token"] and provider.state.refresh_call_count == 1
    if backend == "sqlite":
        # The lease and its release are statements of their own, not wrapped in BEGIN
        # IMMEDIATE ... COMMIT: the file's write lock is held for the statement only.
        returning = ["write"] if storage.engine.dialect.update_returning else []
        for single in ("lease", "release", "event", *returning):
            assert kinds[kinds.index(single) - 1] != "begin", kinds
    if backend == "postgres":
        # The event appended after the release is one round trip, not BEGIN, INSERT, COMMIT.
        assert autocommit["event"] is True, autocommit
    assert kinds.index("event") > kinds.index("release"), kinds
    kinds = [k for k in kinds if k != "begin"]  # SQLite's BEGIN IMMEDIATE before other writes
    start, end = kinds.index("lease"), kinds.index("release")
    stored = ["write"] if storage.engine.dialect.update_returning else ["write", "select"]  # SQLite < 3.35
    assert kinds[start : end + 1] == ["lease", "state", *stored, "release"], kinds
    assert kinds[:start] == [], kinds
    written = ["write"] if storage.engine.dialect.update_returning else []
    ahead = ["lease", "state", *written, "release"]
    assert [k for k in ahead if compiled[k]] == [], compiled
    if backend == "sqlite":  # sent on the driver's connection: SQLAlchemy never saw them
        assert through_engine.isdisjoint({"lease", "state"}), through_engine
    if backend == "postgres":
        assert pipelined == {"lease": True, "state": True}, pipelined
