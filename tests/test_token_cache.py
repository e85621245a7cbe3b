"""The in-process token cache of ``get_token``: hits, bounds, and every invalidation.

A hit must not touch storage (``get_connection`` is wrapped with a counter).  The
cache's monotonic clock is injected where a test needs time to pass, since
time-machine leaves ``time.monotonic`` alone.  Every write reaching another process's
cache (PostgreSQL's ``LISTEN/NOTIFY``, Redis pub/sub) is in ``test_token_cache_processes``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask

from flask_zis_connections import ConnectionNotFound, ZISConnections, get_token
from flask_zis_connections.domain import utcnow
from flask_zis_connections.errors import ConfigurationError
from flask_zis_connections.lifecycle import Lifecycle
from flask_zis_connections.storage import Storage
from flask_zis_connections.token_cache import TokenCache

from .flow_driver import auth_header, connect, import_access_token, register, zis_of
from .helpers import PREFIX, change_listener, run_threads
from .live_provider import LiveProvider

POSTGRES = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Env:
    """A host app with OAuth connection ``main`` of ``acme``; storage reads are counted."""

    def __init__(self, app: Flask, provider: LiveProvider) -> None:
        self.app = app
        self.provider = provider
        self.headers = auth_header(app)
        self.reads = 0
        storage = self.storage
        # get_token reads a fresh token's columns with read_token, anything else whole.
        storage.get_connection = self._counted(storage.get_connection)  # type: ignore[method-assign]
        storage.read_token = self._counted(storage.read_token)  # type: ignore[method-assign]

    def _counted(self, read: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return read(*args, **kwargs)

        return counted

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    @property
    def lifecycle(self) -> Lifecycle:
        return self.app.extensions["zis_connections"].lifecycle  # type: ignore[no-any-return]

    @property
    def cache(self) -> TokenCache:
        cache = self.lifecycle.token_cache
        assert cache is not None
        return cache

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    def connect(self, name: str = "main") -> dict[str, Any]:
        return connect(self.app, self.provider, self.headers, name=name, allow_offline_access=True)

    def token(self, name: str = "main") -> str:
        with self.app.app_context():
            return get_token("acme", name)

    def stored_token(self, name: str = "main") -> str:
        with self.app.app_context():
            return self.zis.get_connection("acme", name, refresh_if_due=False).access_token

    def cached_then_counted(self, name: str = "main") -> str:
        """Cache the token of ``name``, check a later call is a hit; reset the counter.

        On PostgreSQL this process's own earlier writes come back as notifications a
        moment later and may drop the entry once more: a few tries let them land."""
        first = self.token(name)
        for _ in range(20):
            self.reads = 0
            assert self.token(name) == first
            if self.reads == 0:
                break
            time.sleep(0.05)
        assert self.reads == 0
        return first


@pytest.fixture
def make_env(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> Callable[..., Env]:
    def build(connect_main: bool = True, **config: Any) -> Env:
        provider = provider_factory()
        app = make_app(**config)
        register(app, provider)
        env = Env(app, provider)
        if connect_main:
            env.connect()
        return env

    return build


# -- hits and bounds -----------------------------------------------------------------------
def test_a_second_get_token_reads_nothing(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.reads = 0
    token = env.token()
    assert env.reads == 1
    for _ in range(5):
        assert env.token() == token
    assert env.reads == 1
    assert token == env.stored_token()


def test_an_entry_lives_for_the_ttl_on_the_monotonic_clock(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=5)
    clock = Clock()
    env.cache.clock = clock
    env.cached_then_counted()
    clock.now += 4.9
    env.token()
    assert env.reads == 0
    clock.now += 0.2
    env.token()
    assert env.reads == 1


def test_a_token_is_never_served_past_its_due_time(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60, ZIS_REFRESH_LEEWAY=60)
    rec = env.storage.get_connection("acme", name="main")
    assert rec is not None
    # Due 2 s from now: the leeway (60 s) before an expiry 62 s away.
    due_soon = env.storage.update_connection(
        rec.replace(token_expiry=utcnow() + timedelta(seconds=62), updated_at=utcnow() - timedelta(hours=1)),
        expected_version=rec.version,
    )
    assert due_soon is not None
    clock = Clock()
    env.cache.clock = clock
    env.cached_then_counted()
    clock.now += 1.5
    env.token()
    assert env.reads == 0
    clock.now += 0.6  # past the due time, long before the TTL
    env.token()
    assert env.reads == 1


def test_a_due_token_is_not_cached(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_REFRESH_LEEWAY=60)
    rec = env.storage.get_connection("acme", name="main")
    assert rec is not None
    due = rec.replace(token_expiry=utcnow() + timedelta(seconds=30), updated_at=utcnow() - timedelta(hours=1))
    assert env.storage.update_connection(due, expected_version=rec.version) is not None
    env.provider.state.reset_counters()
    fresh = env.token()  # refreshed on the way
    assert env.provider.state.refresh_call_count == 1
    assert fresh == env.stored_token()
    assert len(env.cache) == 0


def test_the_cache_is_bounded_and_evicts_an_entry_not_used_first() -> None:
    cache = TokenCache(5, 2)
    for name in ("a", "b"):
        cache.put("acme", name, f"tok-{name}", None, cache.generation)
    assert cache.get("acme", "a") == "tok-a"  # "b" is now the one not used
    cache.put("acme", "c", "tok-c", None, cache.generation)
    assert len(cache) == 2
    assert cache.get("acme", "b") is None
    assert cache.get("acme", "a") == "tok-a"
    assert cache.get("acme", "c") == "tok-c"


def test_eviction_gives_a_used_entry_a_second_chance_and_only_one() -> None:
    """Second chance (CLOCK): eviction passes over an entry used since it last came by
    (moving it to the end, unmarked) and takes the first one not used."""
    cache = TokenCache(5, 3)
    for name in ("a", "b", "c"):
        cache.put("acme", name, f"tok-{name}", None, cache.generation)
    cache.get("acme", "a")
    cache.get("acme", "c")
    cache.put("acme", "d", "tok-d", None, cache.generation)  # passes "a", takes "b"
    assert [cache.get("acme", n) for n in "abcd"] == ["tok-a", None, "tok-c", "tok-d"]
    # All three were used just now: one round unmarks them, then the oldest goes, and
    # never the entry being put.
    cache.put("acme", "e", "tok-e", None, cache.generation)
    assert len(cache) == 3
    assert cache.get("acme", "c") is None
    assert [cache.get("acme", n) for n in "ade"] == ["tok-a", "tok-d", "tok-e"]


def test_many_threads_hitting_and_filling_the_cache_keep_it_bounded_and_right() -> None:
    """Hits take no lock: under threads that read and write at once every answer is the
    name's own token or nothing, and the cache never holds more than its size."""
    cache = TokenCache(60, 100)
    names = [f"n{i}" for i in range(1_000)]
    stop = time.monotonic() + 0.5
    wrong: list[tuple[str, str]] = []
    sizes: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            name = rng.choice(names)
            token = cache.get("acme", name)
            if token is None:
                cache.put("acme", name, f"tok-{name}", None, cache.generation)
            elif token != f"tok-{name}":
                wrong.append((name, token))
            sizes.append(len(cache))

    _, errors = run_threads(8, work)
    assert errors == []
    assert not wrong
    assert sizes and max(sizes) <= 100
    assert len(cache) == 100


def test_a_read_from_before_an_invalidation_is_not_kept() -> None:
    cache = TokenCache(5, 10)
    generation = cache.generation
    cache.invalidate("acme", "main")  # a write lands while the old token was being read
    cache.put("acme", "main", "old", None, generation)
    assert cache.get("acme", "main") is None


def test_the_size_setting_bounds_the_app_cache(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_SIZE=2)
    for name in ("two", "three"):
        env.connect(name)
    for name in ("main", "two", "three"):
        env.token(name)
    assert len(env.cache) == 2
    env.reads = 0
    env.token("main")  # the oldest: evicted
    assert env.reads == 1


def test_ttl_zero_turns_the_cache_off(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=0)
    assert env.lifecycle.token_cache is None
    env.reads = 0
    for _ in range(3):
        env.token()
    assert env.reads == 3


@pytest.mark.parametrize("key", ["ZIS_TOKEN_CACHE_TTL", "ZIS_TOKEN_CACHE_SIZE"])
@pytest.mark.parametrize("value", [-1, "soon", True])
def test_the_settings_are_checked_at_start(make_app: Callable[..., Flask], key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        make_app(**{key: value})


# -- invalidation in this process ----------------------------------------------------------
def test_a_refresh_over_http_is_seen_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    old = env.cached_then_counted()
    resp = env.app.test_client().get(
        f"{PREFIX}/connections/refresh/acme", query_string={"name": "main"}, headers=env.headers
    )
    assert resp.status_code == 200, resp.get_json()
    new = resp.get_json()["access_token"]
    assert new != old
    assert env.token() == new


def test_a_reauthorization_is_seen_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    old = env.cached_then_counted()
    new = env.connect()["access_token"]
    assert new != old
    assert env.token() == new


def test_a_metadata_change_drops_the_entry(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    token = env.cached_then_counted()
    with env.app.app_context():
        env.zis.update_connection_metadata("acme", "main", {"team": "blue"})
    env.reads = 0
    assert env.token() == token
    assert env.reads == 1


def test_a_delete_is_seen_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    env.cached_then_counted()
    with env.app.app_context():
        env.zis.delete_connection("acme", "main")
    with pytest.raises(ConnectionNotFound):
        env.token()


def test_deleting_the_oauth_client_drops_its_connections(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    env.cached_then_counted()
    with env.app.app_context():
        client = env.zis.list_oauth_clients("acme")[0]
        env.zis.delete_oauth_client("acme", client.uuid)
    with pytest.raises(ConnectionNotFound):
        env.token()


@pytest.mark.parametrize("kind", ["bearer_token", "api_key"])
def test_a_credential_update_and_delete_are_seen_at_once(make_env: Callable[..., Env], kind: str) -> None:
    env = make_env(connect_main=False, ZIS_TOKEN_CACHE_TTL=60)
    field = "token" if kind == "bearer_token" else "api_key"
    extra = {"header_name": "X-Api-Key"} if kind == "api_key" else {}
    with env.app.app_context():
        env.zis.create_connection(
            "acme", "cred", type=kind, allowed_domain="api.example.com", **{field: "first-secret"}, **extra
        )
    assert env.cached_then_counted("cred") == "first-secret"
    with env.app.app_context():
        env.zis.update_connection("acme", "cred", type=kind, **{field: "second-secret"})
    assert env.token("cred") == "second-secret"
    with env.app.app_context():
        env.zis.delete_connection("acme", "cred")
    with pytest.raises(ConnectionNotFound):
        env.token("cred")


def test_an_import_over_a_connection_is_seen_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    env.cached_then_counted()
    import_access_token(env.app, "main", "imported")
    assert env.token() == "imported"


def test_a_401_in_a_session_drops_the_cached_token_before_refreshing(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    with env.app.app_context():
        env.zis.update_oauth_client(
            "acme", env.zis.list_oauth_clients("acme")[0].uuid, api_base_url=env.provider.url
        )
    old = env.cached_then_counted()
    with env.app.app_context():
        session = env.zis.session("acme", "main")
    seen: list[str | None] = []
    ensure_fresh = env.lifecycle.ensure_fresh

    def spy(rec: Any, *, force: bool) -> Any:
        seen.append(env.cache.get("acme", "main"))
        return ensure_fresh(rec, force=force)

    monkeypatch.setattr(env.lifecycle, "ensure_fresh", spy)
    _revoke(env, old)
    with session:
        assert session.get("/api/me").status_code == 200
    assert seen == [None]
    assert env.token() != old


def _revoke(env: Env, token: str) -> None:
    answer = requests.post(
        env.provider.revocation_url,
        data={"token": token, "token_type_hint": "access_token"},
        auth=("demo-client", "demo-secret"),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


# -- the PostgreSQL listener (writes across processes: test_token_cache_processes.py) ---
@POSTGRES
def test_the_listener_reconnects_after_losing_its_connection_and_clears_the_cache(
    make_env: Callable[..., Env], postgres_url: str
) -> None:
    """Notifications sent while the LISTEN connection was down are lost: the cache is
    cleared once it listens again, even though no one told it about any write."""
    import sqlalchemy as sa

    env = make_env(ZIS_TOKEN_CACHE_TTL=60)
    env.token()  # the first put starts the listener
    listener = change_listener(env.storage)
    assert listener.listening.wait(20)
    env.cached_then_counted()
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query = 'LISTEN zis_token_cache' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            ).all()
    finally:
        admin.dispose()
    assert killed
    deadline = time.monotonic() + 15
    while not (listener.subscriptions == 2 and listener.listening.is_set()):
        assert time.monotonic() < deadline, "the listener did not reconnect"
        time.sleep(0.01)
    assert len(env.cache) == 0
