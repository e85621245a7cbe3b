"""Token cache invalidations between processes: over Redis pub/sub, and over
PostgreSQL's ``NOTIFY`` where no Redis URL is set.

Two processes share one database and a channel - a SQLite file and a real Redis
(``ZIS_TEST_REDIS_URL``; ``.ci/services.sh`` starts one, CI always sets it), or a real
PostgreSQL and its ``LISTEN``: process B caches a token for 60 s, process A writes, and B
must drop the entry within 2 s - only the channel's message can do that.  Outages use a
throwaway ``redis-server`` of the test's own (with a password, to check it never reaches
a log line), stopped and started again mid-test.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from flask import Flask

from flask_zis_connections import ConnectionNotFound, ReauthorizationRequired, ZISConnections, get_token
from flask_zis_connections.cache_channel import RedisChannel
from flask_zis_connections.errors import ConfigurationError
from flask_zis_connections.token_cache import CHANNEL, ChangeListener, Listener, StorageChannel, TokenCache

from .conftest import free_port
from .flow_driver import auth_header, connect, import_access_token, register, zis_of
from .helpers import change_listener, require_redis
from .live_provider import LiveProvider

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
POSTGRES = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
KEY = "ZIS_TOKEN_CACHE_REDIS_URL"
PASSWORD = "pubsub-pw-7c1e9d"  # the throwaway server's: must never be logged


@pytest.fixture
def redis_url() -> str:
    return require_redis()


def cache_of(app: Flask) -> TokenCache:
    cache = app.extensions["zis_connections"].lifecycle.token_cache
    assert cache is not None
    return cache  # type: ignore[no-any-return]


def listener_of(app: Flask) -> Listener:
    """The cache's one listener: Redis's, or the storage's ``LISTEN`` connection."""
    channel = cache_of(app).channel
    if isinstance(channel, StorageChannel):
        return change_listener(channel.storage)
    assert isinstance(channel, RedisChannel)
    (listener,) = channel.listeners
    return listener


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.01)


def subscribers(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        counts = client.pubsub_numsub(CHANNEL)
    return int(counts[0][1])


@pytest.fixture
def closing(make_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    """``make_app`` whose apps are closed with ``zis.close(app)`` after the test, and
    which must leave no listener thread behind."""
    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        app = make_app(**config)
        apps.append(app)
        return app

    yield build
    for app in apps:
        zis_of(app).close(app)
    left = [t.name for t in threading.enumerate() if t.name.startswith("zis-token-cache")]
    assert left == [], left


# -- configuration -------------------------------------------------------------------------
@SQLITE
@pytest.mark.parametrize(
    "value",
    [
        "http://:hunter2@localhost:6379/0",
        "localhost:6379",
        "hunter2@localhost",
        "redis://:hunter2@localhost:port/0",
        "redis://localhost/0?socket_timeout=soon&password=hunter2",
        42,
    ],
)
def test_a_bad_url_is_a_start_up_error_that_does_not_repeat_it(
    make_app: Callable[..., Flask], value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=KEY) as info:
        make_app(**{KEY: value})
    assert "hunter2" not in str(info.value)


@SQLITE
def test_without_the_redis_package_the_error_names_it(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis.connection", None)  # import fails as if absent
    with pytest.raises(ConfigurationError, match=r"'redis' package.*\[redis\]"):
        make_app(**{KEY: "redis://localhost:6379/0"})


@SQLITE
def test_without_a_url_the_storage_channel_is_used(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    assert isinstance(cache_of(app).channel, StorageChannel)
    assert app.extensions["zis_connections"].settings.token_cache_redis_url is None


# -- the processes of one app --------------------------------------------------------------
def _reader(database_uri: str, keys: list[str], url: str | None, commands: Any, results: Any) -> None:
    """Process B: caches tokens on request, then reports how soon a write elsewhere
    dropped them.  ``url``: Redis's; None, the storage's own channel."""
    try:
        app = Flask("cache_reader")
        app.config.update(
            SECRET_KEY="test-secret-key",
            ZIS_DATABASE_URI=database_uri,
            ZIS_ENCRYPTION_KEYS=keys,
            ZIS_ALLOW_INSECURE_HTTP=True,
            ZIS_TOKEN_CACHE_TTL=60,
        )
        if url is not None:
            app.config[KEY] = url
        zis = ZISConnections(app)
        storage = app.extensions["zis_connections"].storage
        cache = cache_of(app)
        reads = [0]
        read = storage.get_connection

        def counted(*args: Any, **kwargs: Any) -> Any:
            reads[0] += 1
            return read(*args, **kwargs)

        storage.get_connection = counted
        with app.app_context():
            while True:
                command, names = commands.get(timeout=120)
                if command == "stop":
                    break
                if command == "cache":
                    for name in names:
                        get_token("acme", name)  # the first put starts the listener
                    listener = listener_of(app)
                    assert listener.listening.wait(20), "the listener never subscribed"
                    tokens = {}
                    for name in names:
                        tokens[name] = get_token("acme", name)  # after the subscription's clear
                        before = reads[0]
                        assert get_token("acme", name) == tokens[name]
                        assert reads[0] == before, "the second call read storage"
                    results.put(("cached", tokens))
                elif command == "watch":
                    started = time.monotonic()
                    while any(cache.get("acme", n) is not None for n in names):
                        if time.monotonic() - started > 10:
                            break
                        time.sleep(0.002)
                    seconds = time.monotonic() - started
                    results.put(("seen", seconds, {n: _outcome(n) for n in names}))
        zis.close(app)
        results.put(("stopped", None))
    except BaseException as exc:  # report every failure to the parent
        results.put(("error", repr(exc)))


def _outcome(name: str) -> tuple[str, str]:
    try:
        return ("token", get_token("acme", name))
    except ConnectionNotFound:
        return ("gone", "")
    except ReauthorizationRequired:
        return ("reauth", "")


class Reader:
    """Process B, spawned (a fresh interpreter, as another worker would be)."""

    def __init__(self, database_uri: str, keys: list[str], url: str | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.commands: Any = ctx.Queue()
        self.results: Any = ctx.Queue()
        self.process = ctx.Process(
            target=_reader, args=(database_uri, keys, url, self.commands, self.results)
        )
        self.process.start()

    def _answer(self, kind: str) -> Any:
        try:
            answer = self.results.get(timeout=60)
        except queue.Empty:
            pytest.fail(f"process B did not answer ({kind})")
        assert answer[0] == kind, answer
        return answer[1:]

    def cache(self, *names: str) -> dict[str, str]:
        self.commands.put(("cache", names))
        (tokens,) = self._answer("cached")
        return tokens  # type: ignore[no-any-return]

    def watch(self, *names: str) -> tuple[float, dict[str, tuple[str, str]]]:
        self.commands.put(("watch", names))
        seconds, outcome = self._answer("seen")
        return seconds, outcome

    def stop(self) -> None:
        if self.process.is_alive():
            self.commands.put(("stop", ()))
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class Writer:
    """Process A: the test process, with OAuth connection ``main`` of ``acme``."""

    def __init__(self, app: Flask, provider: LiveProvider) -> None:
        self.app = app
        self.provider = provider
        self.headers = auth_header(app)
        self.zis = zis_of(app)

    def connect(self, name: str = "main") -> dict[str, Any]:
        return connect(self.app, self.provider, self.headers, name=name, allow_offline_access=True)


#: The two channels between processes, each on the database it is meant for: Redis
#: beside SQLite (which has none of its own), PostgreSQL's ``NOTIFY`` on its own.
CHANNELS = pytest.mark.parametrize(
    ("backend", "channel"), [("sqlite", "redis"), ("postgres", "notify")], indirect=["backend"]
)


@pytest.fixture
def pair(
    closing: Callable[..., Flask],
    provider_factory: Callable[..., LiveProvider],
    database_uri: str,
    channel: str,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Writer, Reader]]:
    keys = [Fernet.generate_key().decode()]
    url: str | None = request.getfixturevalue("redis_url") if channel == "redis" else None
    app = closing(ZIS_TOKEN_CACHE_TTL=60, ZIS_ENCRYPTION_KEYS=keys, **({KEY: url} if url else {}))
    provider = provider_factory()
    register(app, provider)
    expected = RedisChannel if url else StorageChannel
    assert isinstance(cache_of(app).channel, expected)
    writer = Writer(app, provider)
    reader = Reader(database_uri, keys, url)
    try:
        yield writer, reader
    finally:
        reader.stop()


def _refresh(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    with a.app.app_context():
        return {"main": ("token", a.zis.refresh("acme", "main").access_token)}


def _reauth_marking(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    a.provider.state.revoke_refresh_token(conn["refresh_token"])  # the provider refuses it
    with a.app.app_context(), pytest.raises(ReauthorizationRequired):
        a.zis.refresh("acme", "main")
    rec = a.app.extensions["zis_connections"].storage.get_connection("acme", name="main")
    assert rec is not None and rec.needs_reauth
    return {}


def _new_flow(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {"main": ("token", a.connect()["access_token"])}


def _metadata(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    with a.app.app_context():
        a.zis.update_connection_metadata("acme", "main", {"team": "blue"})
    return {"main": ("token", conn["access_token"])}


def _delete(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    with a.app.app_context():
        a.zis.delete_connection("acme", "main")
    return {"main": ("gone", "")}


def _client_delete(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    with a.app.app_context():
        a.zis.delete_oauth_client("acme", a.zis.list_oauth_clients("acme")[0].uuid)
    return {"main": ("gone", ""), "two": ("gone", "")}


def _import(a: Writer, conn: dict[str, Any]) -> dict[str, tuple[str, str]]:
    import_access_token(a.app, "main", "imported")
    return {"main": ("token", "imported")}


WRITES: dict[str, tuple[Callable[[Writer, dict[str, Any]], dict[str, tuple[str, str]]], tuple[str, ...]]] = {
    "refresh": (_refresh, ("main",)),
    "re-authorization marking": (_reauth_marking, ("main",)),
    "re-authorization through a new flow": (_new_flow, ("main",)),
    "metadata change": (_metadata, ("main",)),
    "delete": (_delete, ("main",)),
    "OAuth client delete (the whole integration)": (_client_delete, ("main", "two")),
    "import over the connection": (_import, ("main",)),
}


@CHANNELS
@pytest.mark.slow
@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_in_one_process_reaches_the_other_within_2_s(
    pair: tuple[Writer, Reader], write: str
) -> None:
    a, b = pair
    action, names = WRITES[write]
    conn = a.connect()
    for name in names[1:]:
        a.connect(name)
    cached = b.cache(*names)
    assert cached["main"] == conn["access_token"]
    expected = action(a, conn)
    seconds, outcome = b.watch(*names)
    assert seconds < 2.0, f"{write}: B still served its cached token after {seconds:.2f} s"
    for name, answer in expected.items():
        assert outcome[name] == answer
    if write == "refresh":
        assert outcome["main"][1] != cached["main"]


@CHANNELS
@pytest.mark.slow
def test_a_credential_change_and_delete_reach_the_other_process(pair: tuple[Writer, Reader]) -> None:
    a, b = pair
    with a.app.app_context():
        a.zis.create_connection(
            "acme", "cred", type="bearer_token", allowed_domain="api.example.com", token="first-secret"
        )
    assert b.cache("cred") == {"cred": "first-secret"}
    with a.app.app_context():
        a.zis.update_connection("acme", "cred", type="bearer_token", token="second-secret")
    seconds, outcome = b.watch("cred")
    assert seconds < 2.0
    assert outcome == {"cred": ("token", "second-secret")}
    assert b.cache("cred") == {"cred": "second-secret"}
    with a.app.app_context():
        a.zis.delete_connection("acme", "cred")
    seconds, outcome = b.watch("cred")
    assert seconds < 2.0
    assert outcome == {"cred": ("gone", "")}


# -- a forked worker (gunicorn --preload) ----------------------------------------------------
def _forked_child(app: Flask, url: str, ready: Any, go: Any, results: Any) -> None:
    try:
        cache = cache_of(app)
        # SQLAlchemy's advice for a fork: do not reuse the parent's pooled connections.
        app.extensions["zis_connections"].storage.engine.dispose(close=False)
        assert len(cache) == 0, "the child inherited the parent's entries"
        assert cache_of(app).channel.listeners == []  # type: ignore[union-attr]
        with app.app_context():
            get_token("acme", "main")  # this process's first put: its own listener
            listener = listener_of(app)
            assert listener.is_alive()  # started here: a thread seen across a fork is not
            assert listener.listening.wait(20), "the child's listener never subscribed"
            token = get_token("acme", "main")
        ready.put(token)
        go.get(timeout=60)
        started = time.monotonic()
        while cache.get("acme", "main") is not None and time.monotonic() - started < 10:
            time.sleep(0.002)
        results.put(("seen", time.monotonic() - started))
        zis_of(app).close(app)
    except BaseException as exc:
        results.put(("error", repr(exc)))


@SQLITE
@pytest.mark.slow
def test_a_forked_worker_subscribes_on_its_own_connection(
    closing: Callable[..., Flask], provider_factory: Callable[..., LiveProvider], redis_url: str
) -> None:
    app = closing(ZIS_TOKEN_CACHE_TTL=60, ZIS_TOKEN_CACHE_REDIS_URL=redis_url)
    provider = provider_factory()
    register(app, provider)
    a = Writer(app, provider)
    a.connect()
    with app.app_context():
        get_token("acme", "main")
    parent_listener = listener_of(app)
    assert parent_listener.listening.wait(20)
    before = subscribers(redis_url)
    ctx = multiprocessing.get_context("fork")
    ready: Any = ctx.Queue()
    go: Any = ctx.Queue()
    results: Any = ctx.Queue()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads: that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=_forked_child, args=(app, redis_url, ready, go, results))
        child.start()
    try:
        try:
            ready.get(timeout=60)
        except queue.Empty:
            pytest.fail(f"the child never cached: {results.get(timeout=1) if not results.empty() else ''}")
        assert subscribers(redis_url) == before + 1  # its own subscription, not the parent's
        with app.app_context():
            a.zis.refresh("acme", "main")
        go.put(True)
        kind, value = results.get(timeout=60)
        assert kind == "seen", value
        assert value < 2.0
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    # The child is gone; the parent's subscription still works.
    assert parent_listener.is_alive() and parent_listener.listening.is_set()
    assert subscribers(redis_url) == before
    with app.app_context():
        get_token("acme", "main")
    assert cache_of(app).get("acme", "main") is not None
    RedisChannel(redis_url).publish("acme", "main")
    wait_for(lambda: cache_of(app).get("acme", "main") is None, 2.0, "the parent heard the message")


# -- PostgreSQL with Redis -----------------------------------------------------------------
@POSTGRES
def test_on_postgresql_redis_replaces_notify(
    closing: Callable[..., Flask], provider_factory: Callable[..., LiveProvider], redis_url: str
) -> None:
    app = closing(ZIS_TOKEN_CACHE_TTL=60, ZIS_TOKEN_CACHE_REDIS_URL=redis_url)
    provider = provider_factory()
    register(app, provider)
    storage = app.extensions["zis_connections"].storage
    notified: list[Any] = []
    storage.notify_changed = lambda *args: notified.append(args)
    Writer(app, provider).connect()
    with app.app_context():
        get_token("acme", "main")
    assert listener_of(app).listening.wait(20)
    # No LISTEN connection for the cache (the lease release listener has its own).
    assert not any(isinstance(listener, ChangeListener) for listener in storage._listeners)
    with app.app_context():
        zis_of(app).refresh("acme", "main")
    assert notified == []


# -- closing ---------------------------------------------------------------------------------
@SQLITE
def test_close_stops_and_joins_the_listener(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider], redis_url: str
) -> None:
    app = make_app(ZIS_TOKEN_CACHE_REDIS_URL=redis_url)
    provider = provider_factory()
    register(app, provider)
    Writer(app, provider).connect()
    with app.app_context():
        get_token("acme", "main")
    listener = listener_of(app)
    assert listener.listening.wait(20)
    before = subscribers(redis_url)
    zis_of(app).close(app)
    assert not listener.is_alive()
    assert subscribers(redis_url) == before - 1
    cache_of(app).put("acme", "main", "x", None, cache_of(app).generation)  # no new listener
    assert [t for t in threading.enumerate() if t.name.startswith("zis-token-cache")] == []


def test_a_listener_ends_when_its_cache_is_gone(redis_url: str) -> None:
    cache = TokenCache(60, 10, channel=RedisChannel(redis_url))
    cache.put("acme", "main", "tok", None, cache.generation)
    channel = cache.channel
    assert isinstance(channel, RedisChannel)
    (listener,) = channel.listeners
    assert listener.listening.wait(20)
    del cache
    listener.join(5)
    assert not listener.is_alive()
    channel.close()


# -- Redis down ------------------------------------------------------------------------------
class ThrowawayRedis:
    """A ``redis-server`` of this test's own, on a free port, with a password."""

    def __init__(self, tmp: Any) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tmp
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--logfile", "redis.log"],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(self.url) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def throwaway(tmp_path: Any) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _no_password(records: list[logging.LogRecord]) -> None:
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        assert PASSWORD not in text, text


@SQLITE
@pytest.mark.slow
def test_redis_down_mid_run_writes_succeed_then_the_listener_reconnects_and_clears(
    closing: Callable[..., Flask],
    provider_factory: Callable[..., LiveProvider],
    throwaway: ThrowawayRedis,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    keys = [Fernet.generate_key().decode()]
    config = {"ZIS_TOKEN_CACHE_TTL": 60, KEY: throwaway.url, "ZIS_ENCRYPTION_KEYS": keys}
    a_app, b_app = closing(**config), closing(**config)  # two caches, two listeners
    provider = provider_factory()
    register(a_app, provider)
    a = Writer(a_app, provider)
    old = a.connect()["access_token"]
    with a_app.app_context():
        get_token("acme", "main")  # A listens too
    assert listener_of(a_app).listening.wait(20)
    b_cache = cache_of(b_app)
    with b_app.app_context():
        get_token("acme", "main")
        b_listener = listener_of(b_app)
        assert b_listener.listening.wait(20)
        assert get_token("acme", "main") == old

    throwaway.stop()
    wait_for(lambda: not b_listener.listening.is_set(), 10, "B noticed that Redis is gone")
    with a_app.app_context():
        new = a.zis.refresh("acme", "main").access_token  # the write succeeds
        a.zis.update_connection_metadata("acme", "main", {"team": "blue"})
    publish_warnings = [r for r in all_logs.records if "Could not publish" in r.getMessage()]
    assert len(publish_warnings) == 1, [r.getMessage() for r in publish_warnings]  # one per outage
    assert publish_warnings[0].levelno == logging.WARNING
    assert f"127.0.0.1:{throwaway.port}" in publish_warnings[0].getMessage()
    lost = [r for r in all_logs.records if "lost its Redis subscription" in r.getMessage()]
    assert len(lost) == 2, [r.getMessage() for r in lost]  # A's and B's listener, once each
    assert b_cache.get("acme", "main") == old  # meanwhile only the TTL bounds B

    throwaway.start()
    wait_for(lambda: b_listener.subscriptions == 2 and b_listener.listening.is_set(), 15, "B resubscribed")
    assert b_cache.get("acme", "main") is None  # cleared: what was published meanwhile is lost
    assert len(b_cache) == 0
    with b_app.app_context():
        assert get_token("acme", "main") == new

    # Publishing works again and reaches B.
    with a_app.app_context():
        newer = a.zis.refresh("acme", "main").access_token
    wait_for(lambda: b_cache.get("acme", "main") is None, 2.0, "B heard the refresh after the outage")
    with b_app.app_context():
        assert get_token("acme", "main") == newer
    assert any("again" in r.getMessage() for r in all_logs.records)
    _no_password(all_logs.records)


@SQLITE
def test_a_wrong_password_is_logged_without_it(
    closing: Callable[..., Flask],
    provider_factory: Callable[..., LiveProvider],
    throwaway: ThrowawayRedis,
    all_logs: pytest.LogCaptureFixture,
) -> None:
    wrong = throwaway.url.replace(PASSWORD, PASSWORD[::-1])
    app = closing(**{KEY: wrong})
    provider = provider_factory()
    register(app, provider)
    Writer(app, provider).connect()  # publishes: refused
    with app.app_context():
        get_token("acme", "main")  # starts the listener: refused
    wait_for(
        lambda: any("lost its Redis subscription" in r.getMessage() for r in all_logs.records),
        10,
        "the listener reported the refusal",
    )
    assert any("Could not publish" in r.getMessage() for r in all_logs.records)
    for record in all_logs.records:
        text = record.getMessage() + (record.exc_text or "")
        assert PASSWORD[::-1] not in text, text
    _no_password(all_logs.records)
