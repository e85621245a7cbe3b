"""A forked worker (gunicorn ``--preload``) starts each in-process registry afresh.

The parent holds every registry's lock while it forks - as another of its threads
might at that moment - and the child must still be able to take it and find nothing of
its parent's in flight.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from flask_zis_connections.api.auth import ApiTokenCache
from flask_zis_connections.api.serializers import AnswerCache
from flask_zis_connections.cache_channel import RedisChannel
from flask_zis_connections.forks import reset_in_child
from flask_zis_connections.ratelimit import LocalWindows
from flask_zis_connections.singleflight import SingleFlight
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.releases import LeaseReleases, ReleaseListener
from flask_zis_connections.token_cache import TokenCache

from .helpers import in_forked_child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _registries() -> list[tuple[str, Any, Callable[[Any], bool]]]:
    """Each registry, and what its child must find besides a free lock (``_lock``, or
    the storage's ``_start_lock`` that starts its listener threads)."""
    flights: SingleFlight[int] = SingleFlight()
    flights._flights["k"] = object()  # type: ignore[assignment]  # a flight of a parent thread
    releases = LeaseReleases()
    releases._watchers["k"] = set()
    releases.across_processes.set()
    cache = TokenCache(ttl=60, size=10)
    cache.put("acme", "main", "token", None, cache.generation)
    cache._listening = True  # the parent's listener thread, which the child has not
    answers = AnswerCache(1024)
    storage = SQLAlchemyStorage("sqlite://")
    storage._listeners.append(ReleaseListener(lambda: None, "channel", LeaseReleases()))
    storage._lease_listening = True
    return [
        ("single flights", flights, lambda f: f._flights == {}),
        ("lease watchers", releases, lambda r: r._watchers == {} and not r.across_processes.is_set()),
        ("token cache", cache, lambda c: c.get("acme", "main") is None and not c._listening),
        ("answer cache", answers, lambda a: True),
        ("bearer tokens", ApiTokenCache(5), lambda t: True),
        ("rate-limit windows", LocalWindows(), lambda w: True),
        ("storage listeners", storage, lambda s: s._listeners == [] and not s._lease_listening),
    ]


@pytest.mark.parametrize(
    "index", range(7), ids=["flights", "releases", "tokens", "answers", "bearer", "ratelimit", "storage"]
)
def test_a_forked_child_starts_each_registry_afresh(index: int) -> None:
    _, registry, fresh = _registries()[index]
    name = "_start_lock" if isinstance(registry, SQLAlchemyStorage) else "_lock"
    with getattr(registry, name):  # held by "another thread" of the parent while it forks

        def check() -> bool:
            lock = getattr(registry, name)
            taken = lock.acquire(timeout=2)
            if taken:
                lock.release()
            return bool(taken and fresh(registry))

        assert in_forked_child(check)
    lock = getattr(registry, name)
    assert lock.acquire(timeout=2)  # the parent's own lock is untouched
    lock.release()


def test_a_forked_child_publishes_on_a_redis_client_of_its_own() -> None:
    """The parent's publisher (its sockets) is not the child's to write on or close; the
    parent's listener threads did not come along."""
    channel = RedisChannel("redis://127.0.0.1:1/0")
    parents = channel._publisher = channel.client()
    channel._listeners.append(object())  # type: ignore[arg-type]  # a thread of the parent

    def check() -> bool:
        return channel._publisher is None and channel.listeners == [] and channel._inherited == [parents]

    assert in_forked_child(check)
    assert channel._publisher is parents and channel._inherited == []


def test_the_hook_keeps_nothing_alive() -> None:
    class Owner:
        pass

    owner = Owner()
    seen: list[int] = []
    reset_in_child(owner, lambda o: seen.append(1))
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None
    assert in_forked_child(lambda: seen == [])  # the dropped owner's reset did not run
