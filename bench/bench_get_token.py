"""Time ``get_token`` on a fresh token beside a bare indexed select of the same row.

For each size (1,000 and 100,000 connections; ``--quick``: 200 and 5,000) the script
fills a SQLite file (rows inserted in bulk through the storage's own engine, tokens
encrypted beforehand - no OAuth flows), then times, in one process and on one engine:

* **ours**: ``get_token("acme", name)`` inside an app context - the indexed read, the
  row-to-dataclass step, the due check and one Fernet decrypt;
* **bare**: a SQLAlchemy Core ``SELECT`` of that row by ``(integration, name)``
  through ``engine.connect()``, nothing else.

Names are random (a different row each call), both loops run interleaved in rounds
after a warm-up, and the per-call figure is the median round.  Targets:
ours within 2x of bare, and ours at 100k within 1.3x of ours at 1k.

    python bench/bench_get_token.py            # 1k and 100k
    python bench/bench_get_token.py --quick    # CI smoke
    python bench/bench_get_token.py --check    # exit 1 when a target is missed
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask_zis_connections import ZISConnections, get_token
from flask_zis_connections.crypto import Encryptor
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.sqlalchemy.schema import connections
from flask_zis_connections.storage.times import to_ms

INTEGRATION = "acme"
_BATCH = 5_000


def build(path: Path, size: int, key: str) -> Flask:
    app = Flask("bench_host", instance_path=str(path.parent))
    app.config.update(
        SECRET_KEY="bench",
        ZIS_STORAGE="sqlalchemy",
        ZIS_DATABASE_URI=f"sqlite:///{path}",
        ZIS_ENCRYPTION_KEYS=[key],
        ZIS_TOKEN_CACHE_TTL=0,  # times the storage read, not the in-process token cache
    )
    zis = ZISConnections(app)
    with app.app_context():
        client = zis.create_oauth_client(
            INTEGRATION,
            name="acme",
            client_id="bench",
            client_secret="bench-secret",
            auth_url="https://provider.test/authorize",
            token_url="https://provider.test/token",
        )
    storage: SQLAlchemyStorage = app.extensions["zis_connections"].storage
    fill(storage.engine, Encryptor([key]), client.uuid, size)
    return app


def fill(engine: sa.Engine, enc: Encryptor, client_uuid: str, size: int) -> None:
    """Insert ``size`` fresh connections with one executemany per batch."""
    now = datetime.now(UTC)
    now_ms, expiry_ms = to_ms(now), to_ms(now + timedelta(days=30))
    refresh = enc.encrypt("refresh-token-value")
    body = enc.encrypt('{"access_token":"...","token_type":"bearer"}')
    for start in range(0, size, _BATCH):
        rows = [
            {
                "uuid": str(uuid.uuid4()),
                "integration": INTEGRATION,
                "name": name_of(i),
                "oauth_client_uuid": client_uuid,
                "access_token_enc": enc.encrypt(f"access-{i}"),
                "token_type": "bearer",
                "refresh_token_enc": refresh,
                "token_response_enc": body,
                "token_expiry": expiry_ms,
                "permission_scope": "read write",
                "oauth_url_subdomain": None,
                "created_by": "bench",
                "grant_type": "authorization_code",
                "needs_reauth": False,
                "version": 1,
                "created_at": now_ms,
                "updated_at": now_ms,
            }
            for i in range(start, min(size, start + _BATCH))
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(connections), rows)


def name_of(i: int) -> str:
    return f"conn-{i:06d}"


def per_call_us(fn: Callable[[str], Any], names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        fn(name)
    return (time.perf_counter() - start) / len(names) * 1e6


def measure(app: Flask, size: int, iterations: int, rounds: int) -> tuple[float, float]:
    storage: SQLAlchemyStorage = app.extensions["zis_connections"].storage
    # The storage's SQLite hook emits BEGIN for connections without this option; a
    # plain SQLite engine sends no BEGIN before a SELECT, so neither does the baseline.
    engine = storage.engine.execution_options(zis_sqlite_begin=None)
    stmt = sa.select(connections).where(
        connections.c.integration == sa.bindparam("integration"),
        connections.c.name == sa.bindparam("name"),
    )

    def bare(name: str) -> Any:
        with engine.connect() as conn:
            return conn.execute(stmt, {"integration": INTEGRATION, "name": name}).first()

    def ours(name: str) -> str:
        return get_token(INTEGRATION, name)

    rng = random.Random(size)
    with app.app_context():
        # Both must find the row (a miss would be cheaper and flatter the numbers).
        probe = name_of(size - 1)
        assert bare(probe) is not None and ours(probe) == f"access-{size - 1}"
        warm = [name_of(rng.randrange(size)) for _ in range(min(iterations, 2_000))]
        per_call_us(bare, warm)
        per_call_us(ours, warm)
        ours_t, bare_t = [], []
        for _ in range(rounds):
            names = [name_of(rng.randrange(size)) for _ in range(iterations)]
            bare_t.append(per_call_us(bare, names))
            ours_t.append(per_call_us(ours, names))
    return statistics.median(ours_t), statistics.median(bare_t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    parser.add_argument("--iterations", type=int, default=None, help="calls per round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    sizes = (200, 5_000) if args.quick else (1_000, 100_000)
    iterations = args.iterations or (500 if args.quick else 5_000)
    rounds = args.rounds or (3 if args.quick else 7)
    key = Fernet.generate_key().decode()
    results: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="zis-bench-") as tmp:
        for size in sizes:
            t0 = time.perf_counter()
            app = build(Path(tmp) / f"bench-{size}.sqlite3", size, key)
            filled = time.perf_counter() - t0
            try:
                results[size] = measure(app, size, iterations, rounds)
            finally:
                app.extensions["zis_connections"].storage.close()
            print(f"# {size:,} connections inserted in {filled:.1f}s", file=sys.stderr)
    print(
        f"get_token on a fresh token, SQLite file, {iterations:,} random names x {rounds} rounds "
        "(median round)"
    )
    print(f"{'connections':>12} {'get_token us':>13} {'bare select us':>15} {'ours/bare':>10}")
    for size, (ours_us, bare_us) in results.items():
        print(f"{size:>12,} {ours_us:>13.1f} {bare_us:>15.1f} {ours_us / bare_us:>10.2f}")
    small, large = sizes
    growth = results[large][0] / results[small][0]
    print(f"get_token {large:,}/{small:,}: {growth:.2f}")
    worst = max(o / b for o, b in results.values())
    ok = worst <= 2.0 and growth < 1.3
    print(f"targets (ours/bare <= 2.0, growth < 1.3): {'met' if ok else 'MISSED'}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
