"""Fill the connections table with many fresh OAuth connections, fast.

A benchmark of a read path needs a large table, and a million OAuth flows would take
hours.  The rows are therefore written straight into the extension's own table
(``zis_connections``, as the storage's schema defines it) through the storage's engine:
``executemany`` in large batches on SQLite, ``COPY`` on PostgreSQL.  Each row carries
its own access token (``access-<i>``), encrypted beforehand with the same
:class:`~flask_zis_connections.crypto.Encryptor` the app decrypts with, so every
benchmark can check that a returned token belongs to the name it asked for.

Encrypting is the slow part (a Fernet token costs about 10 us), so the ciphertexts are
kept per process and key: a runner that fills two databases, or one module that grows
a table from 1,000 to 1,000,000 rows, encrypts each token once.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask

from flask_zis_connections import ZISConnections
from flask_zis_connections.crypto import Encryptor
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.sqlalchemy.schema import connections
from flask_zis_connections.storage.times import to_ms

INTEGRATION = "acme"
#: One key per process: a module run after another reuses the other's ciphertexts.
KEY = Fernet.generate_key().decode()
_BATCH = 20_000
_ciphertexts: dict[str, list[str]] = {}


def name_of(i: int) -> str:
    return f"conn-{i:07d}"


def token_of(i: int) -> str:
    return f"access-{i}"


def encrypted_tokens(key: str, count: int) -> list[str]:
    """The ciphertexts of ``token_of(0) .. token_of(count - 1)`` under ``key``."""
    done = _ciphertexts.setdefault(key, [])
    if len(done) < count:
        enc = Encryptor([key])
        done.extend(enc.encrypt(token_of(i)) for i in range(len(done), count))
    return done


def random_names(rng: random.Random, size: int, count: int) -> list[str]:
    """``count`` names of existing rows (of ``0 .. size - 1``), drawn with replacement."""
    return [name_of(rng.randrange(size)) for _ in range(count)]


def insert_rows(engine: sa.Engine, table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to ``table``: ``COPY ... FROM STDIN`` on PostgreSQL (several times
    faster than ``executemany`` there), ``executemany`` in large batches elsewhere."""
    it = iter(rows)
    if engine.dialect.name != "postgresql":
        while batch := list(itertools.islice(it, _BATCH)):
            with engine.begin() as conn:
                conn.execute(table.insert(), batch)
        return
    first = next(it, None)
    if first is None:
        return
    sql = f"COPY {table.name} ({', '.join(first)}) FROM STDIN"
    raw = engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
        with cur.copy(sql) as copy:
            for row in itertools.chain([first], it):
                copy.write_row([json.dumps(v) if isinstance(v, dict) else v for v in row.values()])
        raw.commit()
    finally:
        raw.close()
    # Vacuumed and analyzed before anything is measured, as pgbench vacuums its tables
    # before a run: the state autovacuum leaves a table in after it grew this much, which
    # it would otherwise reach in the background while the contenders are timed - a
    # core of a two-core machine taken from them for some seconds.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM (ANALYZE) {table.name}")


def make_app(
    url: str, instance: Path, *, cache_ttl: float, cache_size: int | None = None, key: str = KEY
) -> Flask:
    """A host app on ``url`` with the token cache as given (``cache_ttl`` 0: off)."""
    app = Flask("bench_host", instance_path=str(instance))
    app.config.update(
        SECRET_KEY="bench",
        ZIS_STORAGE="sqlalchemy",
        ZIS_DATABASE_URI=url,
        ZIS_ENCRYPTION_KEYS=[key],
        ZIS_TOKEN_CACHE_TTL=cache_ttl,
    )
    if cache_size is not None:
        app.config["ZIS_TOKEN_CACHE_SIZE"] = cache_size
    ZISConnections(app)
    return app


def storage_of(app: Flask) -> SQLAlchemyStorage:
    storage = app.extensions["zis_connections"].storage
    assert isinstance(storage, SQLAlchemyStorage)
    return storage


class Table:
    """``zis_connections`` of one database, grown on demand to ``size`` rows."""

    def __init__(self, app: Flask) -> None:
        self.engine = storage_of(app).engine
        self.key = app.config["ZIS_ENCRYPTION_KEYS"][0]
        with app.app_context():
            ext: ZISConnections = app.extensions["zis_connections"].ext
            self.client_uuid = ext.create_oauth_client(
                INTEGRATION,
                name="acme",
                client_id="bench",
                client_secret="bench-secret",
                auth_url="https://provider.test/authorize",
                token_url="https://provider.test/token",
            ).uuid
        with self.engine.connect() as conn:
            self.size = conn.execute(sa.select(sa.func.count()).select_from(connections)).scalar_one()
        enc = Encryptor([self.key])
        # A realistic row: a refresh token and a raw token response beside the access
        # token, and an expiry a month away (fresh: get_token never refreshes).
        self._refresh = enc.encrypt("refresh-token-value")
        self._body = enc.encrypt('{"access_token":"...","token_type":"bearer","expires_in":2592000}')
        now = datetime.now(UTC)
        self._now_ms, self._expiry_ms = to_ms(now), to_ms(now + timedelta(days=30))

    def grow_to(self, size: int) -> None:
        """Insert rows ``self.size .. size - 1`` (one transaction per batch)."""
        if size <= self.size:
            return
        insert_rows(self.engine, connections, self._rows(encrypted_tokens(self.key, size), self.size, size))
        self.size = size

    def _rows(self, tokens: list[str], start: int, stop: int) -> Iterator[dict[str, Any]]:
        for i in range(start, stop):
            yield {
                "uuid": str(uuid.uuid4()),
                "integration": INTEGRATION,
                "name": name_of(i),
                "oauth_client_uuid": self.client_uuid,
                "access_token_enc": tokens[i],
                "token_type": "bearer",
                "refresh_token_enc": self._refresh,
                "token_response_enc": self._body,
                "token_expiry": self._expiry_ms,
                "permission_scope": "read write",
                "oauth_url_subdomain": None,
                "created_by": "bench",
                "grant_type": "authorization_code",
                "needs_reauth": False,
                "version": 1,
                "created_at": self._now_ms,
                "updated_at": self._now_ms,
            }
