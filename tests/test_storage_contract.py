"""The storage contract on every shipped backend, plus what only the SQL backend shows.

:class:`~flask_zis_connections.testing.StorageContract` holds the backend-independent
tests; each ``Test*Storage`` class below runs all of them against one backend - in
memory, a SQLite file, PostgreSQL - so a behaviour that holds for one backend is
proven for all of them.  The rest is the SQL backend's own: a lease race between
processes, its engine set-up, and how an unreachable database surfaces.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from flask_zis_connections.errors import StorageUnavailable
from flask_zis_connections.storage import MemoryStorage, SQLAlchemyStorage, Storage
from flask_zis_connections.storage.sqlalchemy.schema import metadata
from flask_zis_connections.testing import T0, StorageContract


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Storage:
        return MemoryStorage()


class SQLStorageContract(StorageContract):
    """The contract on :class:`SQLAlchemyStorage`, plus a race between processes.

    Subclasses say which database through ``empty_database_url``.
    """

    @pytest.fixture
    def empty_database_url(self) -> str:
        raise NotImplementedError("define an `empty_database_url` fixture")

    @pytest.fixture
    def storage(self, empty_database_url: str) -> Iterator[Storage]:
        backend = SQLAlchemyStorage(empty_database_url)
        try:
            backend.create_tables()
            yield backend
        finally:
            backend.close()

    @pytest.fixture
    def database_url(self, empty_database_url: str) -> str:
        """A URL with the tables created, for tests that open their own connections."""
        backend = SQLAlchemyStorage(empty_database_url)
        try:
            backend.create_tables()
        finally:
            backend.close()
        return empty_database_url

    @pytest.mark.slow
    def test_race_acquire_lease_across_processes(self, database_url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(4)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_lease_worker, args=(database_url, f"proc-{i}", 25, barrier, results))
            for i in range(4)
        ]
        for proc in procs:
            proc.start()
        try:
            outcome = dict(results.get(timeout=60) for _ in procs)
        finally:
            for proc in procs:
                proc.join(timeout=30)
            results.close()
            results.join_thread()
        assert all(proc.exitcode == 0 for proc in procs)
        assert sorted(outcome.values()) == [0, 0, 0, 1]
        winner = next(owner for owner, wins in outcome.items() if wins)
        storage = SQLAlchemyStorage(database_url)
        try:
            assert storage.lease_holder("refresh:shared", T0) == winner
        finally:
            storage.close()


class TestSQLiteStorage(SQLStorageContract):
    @pytest.fixture
    def empty_database_url(self, tmp_path: Any) -> str:
        return f"sqlite:///{tmp_path / 'zis.db'}"


class TestPostgreSQLStorage(SQLStorageContract):
    @pytest.fixture
    def empty_database_url(self, postgres_url: str) -> str:
        engine = sa.create_engine(postgres_url)
        try:
            metadata.drop_all(engine)
        finally:
            engine.dispose()
        return postgres_url


def _lease_worker(
    url: str, owner: str, attempts: int, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    storage = SQLAlchemyStorage(url)
    try:
        storage.healthcheck()  # connect before the start signal
        barrier.wait(timeout=30)
        wins = sum(storage.acquire_lease("refresh:shared", owner, 60, T0) for _ in range(attempts))
        results.put((owner, wins))
    finally:
        storage.close()


# -- SQL backend specifics --------------------------------------------------------------
def test_sql_storage_takes_exactly_one_of_url_and_engine() -> None:
    with pytest.raises(TypeError):
        SQLAlchemyStorage()
    engine = sa.create_engine("sqlite://")
    try:
        with pytest.raises(TypeError):
            SQLAlchemyStorage("sqlite://", engine=engine)
    finally:
        engine.dispose()


def test_sqlite_connections_are_configured(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    storage = SQLAlchemyStorage(engine=engine)
    try:
        storage.create_tables()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        # The host's own use of the engine still gets working transactions.
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE host_things (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO host_things VALUES (1)")
        with pytest.raises(RuntimeError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO host_things VALUES (2)")
            raise RuntimeError("roll back")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM host_things").scalar() == 1
    finally:
        storage.close()


def test_unreachable_database_raises_storage_unavailable() -> None:
    storage = SQLAlchemyStorage("postgresql+psycopg://zis:hunter2secret@127.0.0.1:1/nowhere")
    try:
        for call in (
            storage.healthcheck,
            lambda: storage.get_connection("acme_crm", name="main"),
            lambda: storage.acquire_lease("k", "o", 1, T0),
        ):
            with pytest.raises(StorageUnavailable) as info:
                call()
            assert "ZIS_DATABASE_URI" in info.value.message
            assert "hunter2secret" not in info.value.message
            assert info.value.status == 503
        assert "hunter2secret" not in repr(storage)
    finally:
        storage.close()


def test_missing_sqlite_tables_raise_storage_unavailable(tmp_path: Any) -> None:
    storage = SQLAlchemyStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(StorageUnavailable):
            storage.get_connection("acme_crm", name="main")
    finally:
        storage.close()
