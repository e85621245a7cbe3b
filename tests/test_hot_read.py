"""``get_token``'s narrow read, and a connection's whole row, on connections of their own
outside the engine's pool.

What must hold: the same answer as the engine's read, a write seen by the very next read
(no transaction or snapshot left open), a broken or exhausted reader falling back to the
engine, a bounded number of connections under many threads, and a forked child never
touching its parent's connections.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event

from flask_zis_connections import ZISConnections, get_token
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.sqlalchemy import hot as hot_module
from flask_zis_connections.storage.sqlalchemy.hot import _STATEMENT, HotReader, _PqConnection

from .helpers import client_body, in_forked_child


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _zis(app: Flask) -> ZISConnections:
    return app.extensions["zis_connections"].ext  # type: ignore[no-any-return]


def _storage(app: Flask) -> SQLAlchemyStorage:
    return app.extensions["zis_connections"].storage  # type: ignore[no-any-return]


def _hot(app: Flask) -> HotReader:
    hot = _storage(app)._hot
    assert hot is not None
    return hot


def _driver_connection(conn: Any) -> Any:
    """The driver's own connection behind one of the reader's (psycopg 3's is wrapped)."""
    return conn._conn if isinstance(conn, _PqConnection) else conn


def _add(app: Flask, name: str, token: str) -> None:
    with app.app_context():
        _zis(app).create_connection(
            "acme", name, type="bearer_token", allowed_domain="api.acme.test", token=token
        )


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    app = make_app(ZIS_TOKEN_CACHE_TTL=0)  # every get_token reads storage
    for i in range(20):
        _add(app, f"c{i}", f"token-{i}")
    return app


@pytest.fixture
def checkouts(app: Flask) -> Iterator[list[int]]:
    """How many times the engine's pool handed out a connection."""
    count = [0]
    engine = _storage(app).engine

    def seen(*_: Any) -> None:
        count[0] += 1

    event.listen(engine, "checkout", seen)
    yield count
    event.remove(engine, "checkout", seen)


def test_read_token_matches_the_record(app: Flask) -> None:
    storage = _storage(app)
    read = storage.read_token("acme", "c3")
    record = storage.get_connection("acme", name="c3")
    assert read is not None and record is not None
    assert read.type == record.type == "bearer_token"
    assert read.access_token_enc == record.access_token_enc
    assert read.token_expiry_ms is None and read.needs_reauth is False
    assert storage.read_token("acme", "missing") is None
    assert storage.read_token("other", "c3") is None


def test_reads_skip_the_engine_pool(app: Flask, checkouts: list[int]) -> None:
    with app.app_context():
        assert get_token("acme", "c1") == "token-1"  # a credential: the whole record
        before = checkouts[0]
        for _ in range(50):
            assert _storage(app).read_token("acme", "c2") is not None
    assert checkouts[0] == before  # the reader's own connection, opened once before
    assert len(_hot(app)._idle) == 1


def test_a_write_is_seen_by_the_next_read(app: Flask) -> None:
    storage = _storage(app)
    first = storage.read_token("acme", "c4")
    assert first is not None
    with app.app_context():
        _zis(app).update_connection("acme", "c4", type="bearer_token", token="replaced")
        assert get_token("acme", "c4") == "replaced"
    second = storage.read_token("acme", "c4")
    assert second is not None and second.access_token_enc != first.access_token_enc
    with app.app_context():
        _zis(app).delete_connection("acme", "c4")
    assert storage.read_token("acme", "c4") is None


def test_an_exhausted_reader_reads_through_the_engine(
    app: Flask, checkouts: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hot_module, "WAIT", 0.02)
    hot = _hot(app)
    hot.limit = 0  # as if every connection of its own stayed in use
    hot.close()
    before = checkouts[0]
    started = time.monotonic()
    with app.app_context():
        for i in range(5):
            assert _storage(app).read_token("acme", f"c{i}") is not None
    assert checkouts[0] == before + 5
    assert time.monotonic() - started >= 5 * 0.02  # each waited for one first
    assert hot._idle == [] and not hot._waiters


def test_a_read_waits_for_a_busy_connection_rather_than_take_the_pools(
    app: Flask, checkouts: list[int]
) -> None:
    """With every connection of its own busy, a read takes the next one given back:
    the engine's pool stays free for the writes of a refresh."""
    storage, hot = _storage(app), _hot(app)
    hot.limit = 1
    assert storage.read_token("acme", "c1") is not None  # opens the one connection
    busy = hot._idle.pop()  # another caller's read holds it
    before = checkouts[0]
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(storage.read_token("acme", "c2")))
    reader.start()
    deadline = time.monotonic() + 5
    while not hot._waiters:
        assert time.monotonic() < deadline, "the read did not wait"
        time.sleep(0.001)
    hot._give_back(busy)  # that read ends
    reader.join(5)
    assert got and got[0] is not None and got[0].type == "bearer_token"
    assert checkouts[0] == before
    assert hot._idle == [busy] and hot._open == 1 and not hot._waiters


def test_a_broken_connection_is_dropped_and_the_read_still_answers(app: Flask) -> None:
    storage = _storage(app)
    assert storage.read_token("acme", "c5") is not None
    hot = _hot(app)
    (broken,) = hot._idle
    broken.close()  # the server went away under it
    read = storage.read_token("acme", "c5")
    assert read is not None and read.type == "bearer_token"
    assert broken not in hot._idle and hot._open == 0
    assert storage.read_token("acme", "c5") is not None
    assert len(hot._idle) == 1 and hot._idle[0] is not broken


@pytest.mark.parametrize("backend", ["postgres"])  # a server-side disconnect needs a server
def test_postgres_backend_killed_under_the_reader(app: Flask) -> None:
    storage = _storage(app)
    assert storage.read_token("acme", "c6") is not None
    pid = _driver_connection(_hot(app)._idle[0]).info.backend_pid
    with storage.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    read = storage.read_token("acme", "c6")
    assert read is not None and read.type == "bearer_token"


WIDE = "n\u00e4me-\u6771\u4eac"


def _engine(storage: SQLAlchemyStorage, method: str, *args: Any, **kwargs: Any) -> Any:
    """``storage.<method>(...)`` through SQLAlchemy's engine (the reader set aside)."""
    hot, storage._hot = storage._hot, None
    try:
        return getattr(storage, method)(*args, **kwargs)
    finally:
        storage._hot = hot


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("prepared", [True, False])
def test_psycopg_reads_through_libpq_as_the_engine_does(
    make_app: Callable[..., Flask], prepared: bool
) -> None:
    """Every column loaded from libpq's text format equals what the engine's row holds:
    NULL and set expiries, both booleans, text beyond ASCII; prepared once per
    connection, or unprepared when the host turned psycopg's prepared statements off."""
    options = {} if prepared else {"connect_args": {"prepare_threshold": None}}
    app = make_app(ZIS_TOKEN_CACHE_TTL=0, ZIS_ENGINE_OPTIONS=options)
    _add(app, "plain", "token-plain")
    _add(app, "ascii", "token-2")
    storage = _storage(app)
    with app.app_context():
        conn = _zis(app).create_connection(
            "acme", "oauth", type="bearer_token", allowed_domain="api.acme.test", token="x"
        )
    assert conn is not None
    with storage.engine.begin() as db:  # an OAuth row with an expiry and needs_reauth set
        db.execute(
            sa.text(
                "UPDATE zis_connections SET type = 'oauth', token_expiry = 1798771828723, "
                "needs_reauth = true, version = 7 WHERE name = 'oauth'"
            )
        )
        # Names the API refuses may still be asked for: parameters and rows beyond ASCII.
        db.execute(sa.text("UPDATE zis_connections SET name = :n WHERE name = 'ascii'"), {"n": WIDE})
    for name in ("plain", WIDE, "oauth", "missing"):
        for _ in range(3):  # the first read prepares, the next ones reuse it
            assert storage.read_token("acme", name) == _engine(storage, "read_token", "acme", name), name
    (reader,) = _hot(app)._idle
    assert isinstance(reader, _PqConnection)
    assert (_STATEMENT in reader._prepared) is prepared
    oauth = storage.read_token("acme", "oauth")
    assert oauth is not None and oauth.needs_reauth is True and oauth.version == 7
    assert oauth.token_expiry_ms == 1798771828723


def _odd_rows(app: Flask) -> list[str]:
    """Rows that test each column's loading: an OAuth row with an expiry, needs_reauth
    and metadata, a name beyond ASCII; the names to read them by."""
    _add(app, "oauth", "x")
    _add(app, "ascii", "y")
    with _storage(app).engine.begin() as db:
        db.execute(
            sa.text(
                "UPDATE zis_connections SET type = 'oauth', token_expiry = 1798771828723, "
                "refresh_token_expiry = 1798771829000, needs_reauth = true, version = 7, "
                "metadata = :m WHERE name = 'oauth'"
            ),
            {"m": '{"team":"\u00e9quipe","n":1}'},
        )
        db.execute(sa.text("UPDATE zis_connections SET name = :n WHERE name = 'ascii'"), {"n": WIDE})
    return ["c1", "oauth", WIDE]


def test_whole_rows_are_read_on_the_readers_connections(app: Flask, checkouts: list[int]) -> None:
    storage = _storage(app)
    names = _odd_rows(app)
    expected = {name: _engine(storage, "get_connection", "acme", name=name) for name in names}
    before = checkouts[0]
    for name in names:
        for _ in range(3):
            rec = storage.get_connection("acme", name=name)
            assert rec == expected[name] and rec is not None, name
            assert storage.get_connection("acme", uuid=rec.uuid) == rec
    assert storage.get_connection("acme", name="missing") is None
    assert storage.get_connection("acme", uuid="0" * 32) is None
    assert storage.get_connection("other", name="c1") is None
    assert checkouts[0] == before  # none through the engine's pool
    oauth = expected["oauth"]
    assert oauth.needs_reauth is True and oauth.version == 7 and oauth.metadata["team"] == "\u00e9quipe"


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("prepared", [True, False])
def test_psycopg_whole_rows_through_libpq_as_the_engine_reads_them(
    make_app: Callable[..., Flask], prepared: bool
) -> None:
    options = {} if prepared else {"connect_args": {"prepare_threshold": None}}
    app = make_app(ZIS_TOKEN_CACHE_TTL=0, ZIS_ENGINE_OPTIONS=options)
    _add(app, "c1", "token-1")
    storage = _storage(app)
    names = _odd_rows(app)
    for name in names:
        expected = _engine(storage, "get_connection", "acme", name=name)
        assert expected is not None
        for _ in range(3):  # the first read prepares, the next ones reuse it
            assert storage.get_connection("acme", name=name) == expected, name
            assert storage.get_connection("acme", uuid=expected.uuid) == expected, name
        assert storage.read_token("acme", name) == _engine(storage, "read_token", "acme", name)
    (reader,) = _hot(app)._idle
    assert isinstance(reader, _PqConnection)
    statements = {_STATEMENT, b"zis_connection_by_name", b"zis_connection_by_uuid"}
    assert reader._prepared == (statements if prepared else set())


def test_client_rows_are_read_on_the_readers_connections(app: Flask, checkouts: list[int]) -> None:
    """Both booleans and JSON columns beyond ASCII, as the engine reads them."""
    storage = _storage(app)
    with app.app_context():
        made = [
            _zis(app).create_oauth_client("acme", **client_body(name="plain")),
            _zis(app).create_oauth_client(
                "acme",
                **client_body(
                    name="second",
                    pkce=False,
                    per_client_callback=True,
                    authorize_params={"prompt": "consent", "team": "\u00e9quipe"},
                ),
            ),
        ]
    expected = {c.uuid: _engine(storage, "get_client", "acme", uuid=c.uuid) for c in made}
    before = checkouts[0]
    for client in made:
        for _ in range(3):
            assert storage.get_client("acme", uuid=client.uuid) == expected[client.uuid]
            assert storage.get_client("acme", name=client.name) == expected[client.uuid]
    assert storage.get_client("acme", name="missing") is None
    assert storage.get_client("other", uuid=made[0].uuid) is None
    assert checkouts[0] == before
    wide = expected[made[1].uuid]
    assert wide.per_client_callback is True and wide.pkce is False
    assert wide.authorize_params["team"] == "\u00e9quipe"
    (reader,) = _hot(app)._idle
    if isinstance(reader, _PqConnection):  # psycopg 3: each read prepared once
        assert {b"zis_client_by_uuid", b"zis_client_by_name"} <= reader._prepared


def test_whole_rows_fall_back_to_the_engine(
    app: Flask, checkouts: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader with no connection to spare, or one the server dropped: the engine reads."""
    storage = _storage(app)
    expected = _engine(storage, "get_connection", "acme", name="c7")
    assert storage.get_connection("acme", name="c7") == expected
    hot = _hot(app)
    (broken,) = hot._idle
    broken.close()
    before = checkouts[0]
    assert storage.get_connection("acme", name="c7") == expected
    assert checkouts[0] == before + 1 and broken not in hot._idle and hot._open == 0
    monkeypatch.setattr(hot_module, "WAIT", 0.02)
    hot.limit = 0
    hot.close()
    assert storage.get_connection("acme", uuid=expected.uuid) == expected
    assert checkouts[0] == before + 2 and hot._idle == []


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_column_libpq_cannot_load_is_read_with_the_cursor(app: Flask) -> None:
    """A whole-row read with a column of a type the libpq path has no loader for (here a
    NUMERIC) runs through the connection's cursor on the same connection, with psycopg's
    own types, and the connection stays usable for the prepared reads."""
    from decimal import Decimal

    from flask_zis_connections.storage.sqlalchemy.schema import connections

    storage = _storage(app)
    stmt = sa.select(connections.c.name, sa.cast(connections.c.version, sa.Numeric(10, 2))).where(
        connections.c.integration == sa.bindparam("integration"),
        connections.c.name == sa.bindparam("name"),
    )
    whole = hot_module._Whole(stmt, storage.engine.dialect, "probe", "name", libpq=True)
    assert whole.pq is None  # no loader for NUMERIC: the cursor reads it
    hot = _hot(app)
    conn = hot._take()
    assert isinstance(conn, _PqConnection)
    try:
        assert whole.rows(conn, "acme", "c3") == [("c3", Decimal("1.00"))]
        assert whole.rows(conn, "acme", "missing") == []
        assert hot._pq_read is not None
        assert conn.run(hot._pq_read, "acme", "c3")[0][-1] == 1  # the prepared token read, after it
    finally:
        hot._give_back(conn)
    assert storage.read_token("acme", "c3") == _engine(storage, "read_token", "acme", "c3")


def test_many_threads_stay_within_the_limit(app: Flask) -> None:
    hot = _hot(app)
    errors: list[BaseException] = []
    peak = [0]

    def work(seed: int) -> None:
        try:
            with app.app_context():
                for j in range(100):
                    i = (seed * 7 + j) % 20
                    assert get_token("acme", f"c{i}") == f"token-{i}"
                    peak[0] = max(peak[0], hot._open)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 1 <= peak[0] <= hot.limit
    assert len(hot._idle) == hot._open <= hot.limit


def test_a_waiting_read_is_handed_the_connection_before_a_newcomer(app: Flask, checkouts: list[int]) -> None:
    """A thread reading back to back gives its one connection back and would take it
    again at once; a read waiting meanwhile is handed it first, so it never waits out
    its time and falls back to the engine."""
    storage, hot = _storage(app), _hot(app)
    hot.limit = 1
    assert storage.read_token("acme", "c1") is not None
    before = checkouts[0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy() -> None:
        try:
            while not stop.is_set():
                assert storage.read_token("acme", "c3") is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    hog = threading.Thread(target=busy)
    hog.start()
    try:
        for i in range(30):
            assert storage.read_token("acme", f"c{i % 20}") is not None
    finally:
        stop.set()
        hog.join(10)
    assert errors == []
    assert checkouts[0] == before  # not one read went through the engine
    assert hot._open == 1 and not hot._waiters


def test_closing_the_storage_closes_the_connections(app: Flask) -> None:
    storage = _storage(app)
    assert storage.read_token("acme", "c7") is not None
    conn = _hot(app)._idle[0]
    storage.close()
    with pytest.raises(Exception):  # each driver names its own error
        conn.execute("SELECT 1")


def test_a_dropped_storage_closes_its_connections_quietly(database_uri: str) -> None:
    storage = SQLAlchemyStorage(database_uri)
    storage.create_tables()
    assert storage.read_token("acme", "none") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del storage
        gc.collect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_its_parents_connections(app: Flask) -> None:
    storage = _storage(app)
    assert storage.read_token("acme", "c8") is not None
    hot = _hot(app)
    parents = list(hot._idle)

    def child_reads_on_its_own() -> bool:
        found = storage.read_token("acme", "c8")
        return found is not None and all(c not in hot._idle for c in parents) and hot._inherited == parents

    assert in_forked_child(child_reads_on_its_own)
    gc.collect()
    # The parent's connection still answers: the child neither closed nor used it.
    assert hot._idle == parents
    assert storage.read_token("acme", "c8") is not None
    assert hot._idle == parents


def test_memory_sqlite_reads_through_the_engine() -> None:
    storage = SQLAlchemyStorage("sqlite://")
    try:
        assert storage._hot is None
        storage.create_tables()
        assert storage.read_token("acme", "x") is None
    finally:
        storage.close()
