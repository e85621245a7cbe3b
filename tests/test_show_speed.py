"""The show endpoint's shortcuts stay correct: the bearer-token cache, the answer cache
and the in-process rate-limit windows.

Storage reads and decrypts are counted by wrapping the app's own objects; time passes
through injected clocks (the caches use the monotonic clock, which time-machine leaves
alone) or time-machine where the refresh schedule is what moves.  Another process is a
real spawned process on the same SQLite file or PostgreSQL database.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask

from flask_zis_connections import ZISConnections
from flask_zis_connections.api.auth import ApiTokenCache
from flask_zis_connections.api.serializers import AnswerCache
from flask_zis_connections.crypto import hash_secret
from flask_zis_connections.domain import ApiToken, ConnectionRecord
from flask_zis_connections.errors import ConfigurationError, StorageUnavailable
from flask_zis_connections.ratelimit import SWEEP_INTERVAL, Limit, LocalWindows
from flask_zis_connections.storage import Storage

from .flow_driver import connect, register, zis_of
from .helpers import PREFIX, assert_envelope
from .live_provider import LiveProvider

SHOW = f"{PREFIX}/connections/acme?name=main"
SQL_BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
ADDRESS = {"REMOTE_ADDR": "198.51.100.7"}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Env:
    """A host app with OAuth connection ``main`` of ``acme``; token lookups, connection
    reads and decrypts are counted."""

    def __init__(self, app: Flask, provider: LiveProvider) -> None:
        self.app = app
        self.provider = provider
        self.token = _issue(app)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.conn = connect(app, provider, self.headers, name="main", allow_offline_access=True)
        self.lookups = 0
        self.decrypts = 0
        st = app.extensions["zis_connections"]
        lookup, decrypt = st.storage.get_api_token, st.encryptor.decrypt

        def counted_lookup(token_hash: str) -> Any:
            self.lookups += 1
            return lookup(token_hash)

        def counted_decrypt(value: str) -> str:
            self.decrypts += 1
            return decrypt(value)  # type: ignore[no-any-return]

        st.storage.get_api_token = counted_lookup
        st.encryptor.decrypt = counted_decrypt
        if st.api_tokens is not None:  # the flow above used the token: start counting afresh
            st.api_tokens.clear()

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    @property
    def tokens(self) -> ApiTokenCache:
        cache = self.app.extensions["zis_connections"].api_tokens
        assert cache is not None
        return cache  # type: ignore[no-any-return]

    @property
    def answers(self) -> AnswerCache:
        cache = self.app.extensions["zis_connections"].answers
        assert cache is not None
        return cache  # type: ignore[no-any-return]

    def show(self, headers: dict[str, str] | None = None, **environ: str) -> Any:
        return self.app.test_client().get(SHOW, headers=headers or self.headers, environ_base=dict(environ))

    def record(self) -> ConnectionRecord:
        rec = self.storage.get_connection("acme", name="main")
        assert rec is not None
        return rec

    def count_reads(self, *methods: str) -> list[str]:
        """Wrap these storage methods: the list gets each call's method name, in order."""
        reads: list[str] = []
        storage = self.storage

        def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                reads.append(name)
                return method(*args, **kwargs)

            return call

        for name in methods:
            setattr(storage, name, counted(name, getattr(storage, name)))
        return reads


def _issue(app: Flask, integration: str = "acme") -> str:
    with app.app_context():
        return zis_of(app).issue_access_token(integration)


@pytest.fixture
def make_env(
    make_app: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> Callable[..., Env]:
    def build(**config: Any) -> Env:
        provider = provider_factory()
        app = make_app(**config)
        register(app, provider)
        return Env(app, provider)

    return build


# -- the bearer-token cache ---------------------------------------------------------------
def test_a_valid_token_is_looked_up_once_within_the_ttl(make_env: Callable[..., Env]) -> None:
    env = make_env()
    assert [env.show().status_code for _ in range(5)] == [200] * 5
    assert env.lookups == 1
    assert len(env.tokens) == 1


def test_revoking_in_this_process_is_seen_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_API_TOKEN_CACHE_TTL=3600)
    assert env.show().status_code == 200
    with env.app.app_context():
        assert env.zis.revoke_access_token(env.token)
    assert len(env.tokens) == 0
    assert_envelope(env.show(), 401, "1200")
    # By id too, as the admin console and the CLI revoke.
    other = _issue(env.app)
    headers = {"Authorization": f"Bearer {other}"}
    assert env.show(headers).status_code == 200
    token_id = next(t.id for t in env.storage.list_api_tokens("acme") if t.token_hash == hash_secret(other))
    with env.app.app_context():
        assert env.zis.revoke_access_token(token_id)
    assert_envelope(env.show(headers), 401, "1200")


def _revoke_elsewhere(database_uri: str, keys: list[str], token: str, results: Any) -> None:
    """Another process: an app of its own on the same database revokes ``token``."""
    try:
        app = Flask("revoker")
        app.config.update(
            SECRET_KEY="test-secret-key", ZIS_DATABASE_URI=database_uri, ZIS_ENCRYPTION_KEYS=keys
        )
        zis = ZISConnections(app)
        with app.app_context():
            results.put(zis.revoke_access_token(token))
        app.extensions["zis_connections"].storage.close()
    except BaseException as exc:  # report every failure to the parent
        results.put(repr(exc))


@SQL_BACKENDS
def test_a_revocation_in_another_process_is_seen_within_the_ttl(
    make_env: Callable[..., Env], database_uri: str
) -> None:
    ttl = 5.0
    env = make_env(ZIS_API_TOKEN_CACHE_TTL=ttl)
    clock = Clock()
    env.tokens.clock = clock
    assert env.show().status_code == 200  # kept until clock + ttl (the lookup's start)
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    keys = list(env.app.config["ZIS_ENCRYPTION_KEYS"])
    proc = ctx.Process(target=_revoke_elsewhere, args=(database_uri, keys, env.token, results))
    proc.start()
    try:
        assert results.get(timeout=60) is True
    finally:
        proc.join(30)
    # Nothing reaches this process: the entry is trusted up to the bound, never past it.
    clock.now += ttl - 0.01
    assert env.show().status_code == 200
    assert env.lookups == 1
    clock.now += 0.01
    assert_envelope(env.show(), 401, "1200")
    assert env.lookups == 2


def test_unknown_tokens_are_never_kept(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_RATELIMIT_UNAUTHENTICATED="100 per minute")
    unknown = {"Authorization": f"Bearer zis_{uuidlib.uuid4().hex}"}
    for _ in range(3):
        assert_envelope(env.show(unknown), 401, "1200")
    assert env.lookups == 3
    assert len(env.tokens) == 0


def test_failed_authentication_is_still_limited_per_address(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    assert env.show(**ADDRESS).status_code == 200  # cached from now on
    fresh = {"Authorization": f"Bearer {_issue(env.app)}"}  # valid, never used: not cached
    env.lookups = 0
    unknown = {"Authorization": f"Bearer zis_{uuidlib.uuid4().hex}"}
    for _ in range(2):
        assert_envelope(env.show(unknown, **ADDRESS), 401, "1200")
    assert env.lookups == 2
    # The spent address is refused before any lookup, the unknown token and the idle one alike.
    assert_envelope(env.show(unknown, **ADDRESS), 429, "1300", "from this address")
    assert_envelope(env.show(fresh, **ADDRESS), 429, "1300", "from this address")
    assert env.lookups == 2
    # The token that authenticated lately keeps working from there, from the cache.
    assert [env.show(**ADDRESS).status_code for _ in range(3)] == [200] * 3
    assert env.lookups == 2
    # Another address is untouched.
    assert env.show(fresh, REMOTE_ADDR="198.51.100.8").status_code == 200


def test_a_cached_token_of_another_integration_is_403_and_charged(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_RATELIMIT_UNAUTHENTICATED="2 per minute")
    foreign = {"Authorization": f"Bearer {_issue(env.app, 'other')}"}
    other_url = f"{PREFIX}/connections/other?name=main"
    c = env.app.test_client()
    assert c.get(other_url, headers=foreign, environ_base=ADDRESS).status_code == 404  # cached now
    for _ in range(2):
        assert_envelope(env.show(foreign, **ADDRESS), 403, "1200")
    assert env.lookups == 1
    # Two failures spent the address: the cached token gets no further than a guess would,
    # unless it authenticated for this very integration within its window (it did not).
    assert_envelope(env.show(foreign, **ADDRESS), 429, "1300")


class _RevokingStorage:
    """A storage whose lookup returns the token while a revocation lands meanwhile."""

    def __init__(self, cache: ApiTokenCache, token: ApiToken) -> None:
        self.cache = cache
        self.token = token

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        self.cache.clear()  # the revocation in this process, while the read is in flight
        return self.token


def test_a_lookup_in_flight_during_a_revocation_is_not_kept() -> None:
    cache = ApiTokenCache(60)
    token = ApiToken(id="t1", token_hash="h1", integration="acme")
    storage: Any = _RevokingStorage(cache, token)
    assert cache.lookup(storage, "h1") == token  # this request was admitted before it ...
    assert len(cache) == 0  # ... but the next one reads again


class _GatedStorage:
    """A storage whose token lookups are counted and held until ``gate`` opens."""

    def __init__(self, answer: ApiToken | Exception | None) -> None:
        self.answer = answer
        self.gate = threading.Event()
        self.calls = 0

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        self.calls += 1
        assert self.gate.wait(10)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _lookups_at_once(cache: ApiTokenCache, storage: Any, callers: int) -> list[Any]:
    """``callers`` threads look ``h1`` up together; what each got (or raised)."""
    got: list[Any] = [None] * callers

    def one(i: int) -> None:
        try:
            got[i] = cache.lookup(storage, "h1")
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    flights = cache._lookups._flights
    deadline = time.monotonic() + 10
    # Every caller but the one reading waits on its flight before the read may end.
    while not (flights and next(iter(flights.values())).waiters == callers - 1):
        assert time.monotonic() < deadline, "the callers did not meet on one lookup"
        time.sleep(0.001)
    storage.gate.set()
    for t in threads:
        t.join(10)
    return got


def test_a_burst_that_misses_the_cache_reads_the_token_once() -> None:
    cache = ApiTokenCache(60)
    token = ApiToken(id="t1", token_hash="h1", integration="acme")
    storage = _GatedStorage(token)
    assert _lookups_at_once(cache, storage, 12) == [token] * 12
    assert storage.calls == 1 and cache.get("h1") == token


def test_callers_sharing_a_failed_lookup_each_get_the_error() -> None:
    cache = ApiTokenCache(60)
    storage = _GatedStorage(StorageUnavailable("The database is unreachable."))
    got = _lookups_at_once(cache, storage, 6)
    assert storage.calls == 1 and len(cache) == 0
    assert all(isinstance(g, StorageUnavailable) for g in got)
    assert len({id(g) for g in got}) == 6  # each its own copy, with its own traceback


def test_a_caller_arriving_after_a_revocation_reads_again() -> None:
    """A lookup in flight when a token is revoked here answers only the callers that
    arrived before the revocation; a later one reads the token itself."""
    cache = ApiTokenCache(60)
    token = ApiToken(id="t1", token_hash="h1", integration="acme")
    first = _GatedStorage(token)
    early = threading.Thread(target=cache.lookup, args=(first, "h1"))
    early.start()
    deadline = time.monotonic() + 10
    while first.calls == 0:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    cache.clear()
    later = _GatedStorage(None)  # revoked: the storage no longer finds it
    later.gate.set()
    assert cache.lookup(later, "h1") is None and later.calls == 1
    first.gate.set()
    early.join(10)
    assert len(cache) == 0  # the earlier lookup, begun before the revocation, is not kept


def test_the_token_cache_is_bounded_and_expires() -> None:
    clock = Clock()
    cache = ApiTokenCache(5, size=2, clock=clock)
    tokens = {f"h{i}": ApiToken(id=f"t{i}", token_hash=f"h{i}", integration="acme") for i in range(3)}

    class Found:
        def get_api_token(self, token_hash: str) -> ApiToken | None:
            return tokens.get(token_hash)

    storage: Any = Found()
    for h in tokens:
        cache.lookup(storage, h)
    assert len(cache) == 2 and cache.get("h0") is None and cache.get("h2") == tokens["h2"]
    assert cache.lookup(storage, "nope") is None and cache.get("nope") is None
    clock.now += 5
    assert cache.get("h2") is None


def test_ttl_zero_looks_every_token_up(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_API_TOKEN_CACHE_TTL=0)
    assert env.app.extensions["zis_connections"].api_tokens is None
    assert [env.show().status_code for _ in range(3)] == [200] * 3
    assert env.lookups == 3


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("key", "value"), [("ZIS_API_TOKEN_CACHE_TTL", -1), ("ZIS_API_RESPONSE_CACHE_BYTES", "lots")]
)
def test_the_settings_are_checked_at_start(make_app: Callable[..., Flask], key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        make_app(**{key: value})


# -- the answer cache ---------------------------------------------------------------------
def test_an_unchanged_connection_is_decrypted_once(make_env: Callable[..., Env]) -> None:
    env = make_env()
    first = env.show()
    assert first.status_code == 200
    assert env.decrypts == 3  # access token, refresh token, token response body
    again = [env.show() for _ in range(3)]
    assert env.decrypts == 3
    # Byte for byte the same answer, with the same headers.
    for resp in again:
        assert resp.get_data() == first.get_data()
        assert resp.headers["Content-Type"] == first.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Content-Length"] == first.headers["Content-Length"]
    body = first.get_json()
    assert body["access_token"] == env.conn["access_token"]
    assert body["uuid"] == env.conn["uuid"]


def test_an_unchanged_fresh_connection_is_shown_from_a_narrow_read(make_env: Callable[..., Env]) -> None:
    env = make_env()
    first = env.show().get_data()
    storage = env.storage
    whole, narrow = storage.get_connection, storage.read_token
    seen = {"whole": 0, "narrow": 0}

    def counted(kind: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[kind] += 1
            return read(*args, **kwargs)

        return call

    storage.get_connection = counted("whole", whole)  # type: ignore[method-assign]
    storage.read_token = counted("narrow", narrow)  # type: ignore[method-assign]
    for _ in range(3):
        assert env.show().get_data() == first
    assert seen == {"whole": 0, "narrow": 3} and env.decrypts == 3
    # By uuid (not the narrow read's key), the whole row is read: the same answer.
    by_uuid = env.app.test_client().get(
        f"{PREFIX}/connections/acme?uuid={env.conn['uuid']}", headers=env.headers
    )
    assert by_uuid.get_data() == first and seen["whole"] == 1
    # A write that keeps the access token (new metadata) moves the version: a miss.
    with env.app.app_context():
        env.zis.update_connection_metadata("acme", "main", {"team": "blue"})
    before = seen["whole"]
    assert env.show().get_json()["metadata"] == {"team": "blue"}
    assert seen["whole"] == before + 1


def test_the_cached_answer_equals_an_uncached_one(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_API_RESPONSE_CACHE_BYTES=0)
    assert env.app.extensions["zis_connections"].answers is None
    uncached = env.show()
    assert env.decrypts == 3 and env.show().get_data() == uncached.get_data()
    assert env.decrypts == 6
    answers = AnswerCache(1 << 20)
    env.app.extensions["zis_connections"].answers = answers
    assert env.show().get_data() == uncached.get_data()  # the miss, encoded here
    assert env.show().get_data() == uncached.get_data()  # the hit
    assert len(answers) == 1 and env.decrypts == 9


def test_a_metadata_change_is_answered_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env()
    before = env.show().get_json()
    with env.app.app_context():
        env.zis.update_connection_metadata("acme", "main", {"instance_url": "https://eu.example.com"})
    after = env.show().get_json()
    assert after["metadata"]["instance_url"] == "https://eu.example.com"
    assert before["metadata"].get("instance_url") is None
    assert len(env.answers) == 1  # one entry per connection: the old answer was replaced


def test_a_refresh_is_answered_at_once(make_env: Callable[..., Env]) -> None:
    env = make_env()
    old = env.show().get_json()
    refreshed = env.app.test_client().get(f"{PREFIX}/connections/refresh/acme?name=main", headers=env.headers)
    assert refreshed.status_code == 200
    new = env.show().get_json()
    assert new["access_token"] == refreshed.get_json()["access_token"] != old["access_token"]
    assert new == refreshed.get_json()


@SQL_BACKENDS
def test_a_write_by_another_app_on_the_database_is_answered_at_once(
    make_env: Callable[..., Env], make_app: Callable[..., Flask]
) -> None:
    env = make_env()
    old = env.show().get_json()
    # A second app on the same database stands for another worker: no message reaches
    # this one, whose next read simply sees a different row.
    other = make_app(ZIS_ENCRYPTION_KEYS=env.app.config["ZIS_ENCRYPTION_KEYS"], ZIS_CREATE_TABLES=False)
    with other.app_context():
        new_token = zis_of(other).refresh("acme", "main").access_token
    assert new_token != old["access_token"]
    assert env.show().get_json()["access_token"] == new_token


def test_show_still_refreshes_when_due(make_env: Callable[..., Env]) -> None:
    env = make_env()
    cached = env.show().get_json()
    expiry = env.record().token_expiry
    assert expiry is not None
    with time_machine.travel(expiry - timedelta(seconds=30)):  # within the leeway, row unchanged
        due = env.show().get_json()
    assert env.provider.state.refresh_call_count == 1
    assert due["access_token"] != cached["access_token"]
    assert env.show().get_json() == due


def test_a_due_connection_refreshes_from_the_kept_row_without_reading_it(
    make_env: Callable[..., Env],
) -> None:
    """In a burst on an expired token nobody reads the whole row before the refresh:
    the row kept with its answer is the row the narrow read shows."""
    env = make_env()
    cached = env.show().get_json()
    expiry = env.record().token_expiry
    assert expiry is not None
    reads = env.count_reads("get_connection", "read_token", "take_lease_and_read")
    with time_machine.travel(expiry - timedelta(seconds=30)):
        due = env.show().get_json()
    assert env.provider.state.refresh_call_count == 1
    assert due["access_token"] != cached["access_token"]
    # Only the refresh's own read with its lease: neither the narrow read (the kept row
    # is due by the clock) nor the lookup by name.
    assert reads == ["take_lease_and_read"]
    assert env.show().get_json() == due
    assert reads == ["take_lease_and_read", "read_token"]  # fresh again: the narrow read decides


@SQL_BACKENDS
def test_a_burst_on_an_answer_gone_due_refreshes_once_and_reads_nothing_else(
    make_env: Callable[..., Env],
) -> None:
    """Sixteen threads show a connection whose kept answer went due by the clock: one
    provider call, one new token for all, and no read but the lease holder's."""
    env = make_env()
    cached = env.show().get_json()
    expiry = env.record().token_expiry
    assert expiry is not None
    reads = env.count_reads("get_connection", "read_token", "take_lease_and_read")
    env.provider.state.inject_token_fault("slow")  # the others arrive while it is under way
    start = threading.Barrier(16)
    answers: list[Any] = [None] * 16

    def one(i: int) -> None:
        start.wait()
        answers[i] = env.show()

    with time_machine.travel(expiry - timedelta(seconds=30)):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert all(a is not None and a.status_code == 200 for a in answers)
    assert env.provider.state.refresh_call_count == 1
    assert len({a.get_json()["access_token"] for a in answers}) == 1
    assert answers[0].get_json()["access_token"] != cached["access_token"]
    assert reads == ["take_lease_and_read"]


@SQL_BACKENDS
def test_a_row_written_elsewhere_after_its_answer_went_due_is_answered_without_a_second_refresh(
    make_env: Callable[..., Env], make_app: Callable[..., Flask]
) -> None:
    """The kept row is due, but another worker refreshed the connection meanwhile: the
    lease holder's read finds that write, which is the answer; the provider is not
    called again."""
    env = make_env()
    cached = env.show().get_json()
    expiry = env.record().token_expiry
    assert expiry is not None
    other = make_app(ZIS_ENCRYPTION_KEYS=env.app.config["ZIS_ENCRYPTION_KEYS"], ZIS_CREATE_TABLES=False)
    with time_machine.travel(expiry - timedelta(seconds=30)):
        with other.app_context():
            elsewhere = zis_of(other).get_token("acme", "main")  # due there too: refreshed there
        assert env.provider.state.refresh_call_count == 1
        shown = env.show().get_json()
    assert shown["access_token"] == elsewhere != cached["access_token"]
    assert env.provider.state.refresh_call_count == 1
    assert env.show().get_json() == shown
    assert env.provider.state.refresh_call_count == 1


def test_a_due_answer_of_a_connection_replaced_elsewhere_is_not_served(make_env: Callable[..., Env]) -> None:
    """Deleted behind this process's back (no signal reaches its answer cache) and its
    name given to a new connection: the refresh from the kept row finds no row, and the
    show reads by name as usual - the new connection, never the old answer or a 404."""
    env = make_env()
    old = env.record()
    assert env.show().get_json()["uuid"] == old.uuid
    assert old.token_expiry is not None
    assert env.storage.delete_connection("acme", old.uuid)
    with time_machine.travel(old.token_expiry - timedelta(seconds=30)):
        assert_envelope(env.show(), 404, "1302")  # gone, nothing under its name
    new = env.storage.add_connection(old.replace(uuid=str(uuidlib.uuid4()), version=1))
    with time_machine.travel(old.token_expiry - timedelta(seconds=30)):
        shown = env.show()
    assert shown.status_code == 200, shown.get_json()
    assert shown.get_json()["uuid"] == new.uuid != old.uuid


def test_a_delete_drops_the_answer(make_env: Callable[..., Env]) -> None:
    env = make_env()
    uuid = env.show().get_json()["uuid"]
    assert uuid in env.answers
    gone = env.app.test_client().delete(f"{PREFIX}/connections/acme?name=main", headers=env.headers)
    assert gone.status_code == 200
    assert uuid not in env.answers and len(env.answers) == 0
    assert_envelope(env.show(), 404, "1302")


def test_deleting_the_oauth_client_drops_its_connections_answers(make_env: Callable[..., Env]) -> None:
    env = make_env()
    uuid = env.show().get_json()["uuid"]
    client_uuid = env.record().oauth_client_uuid
    assert uuid in env.answers and client_uuid is not None
    gone = env.app.test_client().delete(
        f"{PREFIX}/connections/oauth/clients/acme/{client_uuid}", headers=env.headers
    )
    assert gone.status_code == 200, gone.get_json()
    assert uuid not in env.answers and len(env.answers) == 0 and env.answers.bytes == 0
    assert_envelope(env.show(), 404, "1302")


def test_a_delete_through_the_python_api_drops_the_answer(make_env: Callable[..., Env]) -> None:
    env = make_env()
    uuid = env.show().get_json()["uuid"]
    with env.app.app_context():
        env.zis.delete_connection("acme", "main")
    assert uuid not in env.answers


def test_a_uuid_used_again_never_gets_the_old_answer(make_env: Callable[..., Env]) -> None:
    env = make_env()
    rec = env.record()
    assert env.show().get_json()["access_token"] == env.conn["access_token"]
    # Removed behind the extension's back (no signal), then a new connection with the
    # same uuid and version: only its ciphertexts differ.
    assert env.storage.delete_connection("acme", rec.uuid)
    encryptor = env.app.extensions["zis_connections"].encryptor
    reborn = env.storage.add_connection(rec.replace(access_token_enc=encryptor.encrypt("reborn-token")))
    assert (reborn.uuid, reborn.version) == (rec.uuid, rec.version)
    assert env.show().get_json()["access_token"] == "reborn-token"


def _record(uuid: str, version: int = 1) -> ConnectionRecord:
    return ConnectionRecord(
        uuid=uuid, integration="acme", name=uuid, oauth_client_uuid="c", access_token_enc="x", version=version
    )


def test_the_answer_cache_is_bounded_in_bytes() -> None:
    cache = AnswerCache(8_000)
    body = b"x" * 1_000
    records = {f"u{i}": _record(f"u{i}") for i in range(21)}
    for i in range(20):
        cache.put(records[f"u{i}"], body)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 8
    assert "u0" not in cache and "u19" in cache
    # Served only for an equal row: the same uuid and version read again, nothing else.
    assert cache.get(records["u12"]) == body
    assert cache.get(records["u12"].replace(metadata={"changed": True})) is None
    # One served since eviction last passed it is passed over once: the oldest one not
    # served goes first.
    cache.put(records["u20"], body)
    assert "u12" in cache and "u13" not in cache
    # A body over an eighth of the budget is never kept.
    cache.put(_record("big"), b"x" * 1_001)
    assert "big" not in cache
    # A new version replaces the entry of its connection.
    v2 = records["u12"].replace(version=2)
    cache.put(v2, b"y" * 10)
    assert cache.get(records["u12"]) is None and cache.get(v2) == b"y" * 10
    assert len(cache) == 8 and cache.bytes == 7 * 1_000 + 10
    cache.drop("u12")
    assert "u12" not in cache and cache.bytes == 7_000


def test_the_answer_cache_hands_out_a_kept_row_only_once_due_and_only_under_its_name() -> None:
    cache = AnswerCache(4_000)
    first = _record("u1")  # named "u1"
    cache.put(first, b"x" * 100, due_ms=5_000)
    assert cache.due("acme", "u1", 4_999) is None  # not due yet
    assert cache.due("acme", "u1", 5_000) == first
    assert cache.due("other", "u1", 9_000) is None and cache.due("acme", "u2", 9_000) is None
    # A row no refresh serves (a credential, one that needs re-authorization) never is.
    cache.put(_record("u2"), b"x" * 100, due_ms=None)
    assert cache.due("acme", "u2", float("1e15")) is None
    # The name given to another connection: only that one is handed out.
    successor = _record("u3").replace(name="u1")
    cache.put(successor, b"x" * 100, due_ms=7_000)
    assert cache.due("acme", "u1", 6_000) is None and cache.due("acme", "u1", 7_000) == successor
    cache.drop("u1")  # the old connection's entry leaves the name to its successor
    assert cache.due("acme", "u1", 7_000) == successor
    cache.drop("u3")
    assert cache.due("acme", "u1", 7_000) is None
    # Evicted or cleared: gone from the name index too.
    cache.put(first, b"x" * 100, due_ms=5_000)
    for i in range(4, 40):
        cache.put(_record(f"u{i}"), b"x" * 400)
    assert "u1" not in cache and cache.due("acme", "u1", 9_000) is None
    cache.put(first, b"x" * 100, due_ms=5_000)
    cache.clear()
    assert cache.due("acme", "u1", 9_000) is None


def test_a_full_answer_cache_of_served_answers_evicts_the_oldest_never_the_new_one() -> None:
    cache = AnswerCache(8_000)
    body = b"x" * 1_000
    records = [_record(f"u{i}") for i in range(9)]
    for rec in records[:8]:
        cache.put(rec, body)
    for rec in reversed(records[:8]):
        assert cache.get(rec) == body  # every one served since it was kept
    cache.put(records[8], body)
    assert "u8" in cache and "u0" not in cache
    assert len(cache) == 8 and cache.bytes == 8_000


def test_no_token_reaches_a_log_or_a_repr(
    make_env: Callable[..., Env], all_logs: pytest.LogCaptureFixture
) -> None:
    env = make_env()
    bodies = [env.show().get_json() for _ in range(2)]
    env.app.test_client().get(f"{PREFIX}/connections/refresh/acme?name=main", headers=env.headers)
    bodies.append(env.show().get_json())
    env.app.test_client().delete(f"{PREFIX}/connections/acme?name=main", headers=env.headers)
    secrets = {env.token} | {b[k] for b in bodies for k in ("access_token", "refresh_token")}
    secrets |= {b["oauth_access_token_response_body"] for b in bodies}
    shown = all_logs.text + repr(env.answers) + repr(env.tokens)
    assert not [s for s in secrets if s and s in shown]


def test_bytes_zero_turns_the_answer_cache_off(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_API_RESPONSE_CACHE_BYTES=0)
    assert [env.show().status_code for _ in range(2)] == [200, 200]
    assert env.decrypts == 6


# -- the rate limiter ---------------------------------------------------------------------
def test_the_limit_still_trips_at_its_number_with_the_caches_on(make_env: Callable[..., Env]) -> None:
    env = make_env(ZIS_RATELIMIT="5 per minute")
    fresh = {"Authorization": f"Bearer {_issue(env.app)}"}  # the flow spent some of the other's
    assert [env.show(fresh).status_code for _ in range(5)] == [200] * 5
    resp = env.show(fresh)
    assert_envelope(resp, 429, "1300", "for this caller")
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    assert env.lookups == 1  # every one of them was charged with the token taken from the cache


def _limit(text: str) -> Limit:
    from limits import parse

    return Limit(parse(text))


def test_local_windows_are_moving_windows() -> None:
    clock = Clock()
    windows = LocalWindows(clock)
    three = _limit("3 per 10 seconds")
    ids = ("zis", "caller", "acme", "a")
    for _ in range(3):
        assert windows.hit(three, ids)
        clock.now += 1
    assert not windows.hit(three, ids) and not windows.test(three, ids)
    assert windows.stats(three, ids) == (7.0, 0)  # the oldest (1000) leaves at 1010
    assert windows.hit(three, ("zis", "caller", "acme", "b"))  # another key is apart
    clock.now = 1010.0  # a request counts while within the last 10 s, ends included
    assert not windows.hit(three, ids)
    clock.now = 1010.5
    assert windows.test(three, ids) and windows.hit(three, ids)
    assert not windows.hit(three, ids)
    assert windows.stats(three, ids) == (0.5, 0)  # now 1010.5; the oldest (1001) leaves at 1011


def test_local_windows_sweep_idle_keys() -> None:
    clock = Clock()
    windows = LocalWindows(clock)
    one = _limit("1 per second")
    for n in range(50):
        windows.hit(one, ("zis", "address", f"192.0.2.{n}"))
    assert len(windows) == 50
    clock.now += SWEEP_INTERVAL
    assert windows.hit(one, ("zis", "address", "192.0.2.200"))  # sweeps first
    assert len(windows) == 1


def test_local_windows_admit_exactly_the_limit_across_threads() -> None:
    windows = LocalWindows()
    limit = _limit("500 per minute")
    admitted: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        admitted.append(sum(windows.hit(limit, ("zis", "caller", "acme", "t")) for _ in range(200)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500
