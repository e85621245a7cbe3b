"""``get_token`` on a fresh token, cached and uncached, beside the baselines a host could use.

For each size (1,000, 10,000, 100,000 and 1,000,000 connections; ``--quick``: 200 and
2,000) one table is grown in place (rows written in bulk, tokens encrypted beforehand:
no OAuth flows), on a SQLite file and, when there is one, on PostgreSQL.  Then, in one
process, interleaved in rounds (the order shuffled each round), on random names of
existing rows, and taking the median round of each:

* **get_token, cached**: ``ZIS_TOKEN_CACHE_TTL`` on, every name of the working set
  already cached (a hit: no storage read, no decrypt);
* **dict lookup**: the same call shape served by a plain ``dict`` of those tokens, the
  floor any in-process cache can reach in Python;
* **get_token, uncached**: ``ZIS_TOKEN_CACHE_TTL=0``: the storage read, the due check and
  one Fernet decrypt;
* **raw driver read**: the same row (every column) on one persistent connection of the
  driver itself (:mod:`sqlite3`, psycopg in autocommit), no SQLAlchemy;
* **SQLAlchemy Core select**: the same row through ``engine.connect()`` on a plain engine;
* **Flask-Dance get**: ``SQLAlchemyStorage.get`` on the model its documentation suggests
  (``OAuthConsumerMixin`` plus a ``user_id`` column, no index on the columns it filters
  on), and the same with an index on ``(provider, user_id)``.

    python -m bench.bench_get_token [--quick] [--postgres-url URL] [--check]
"""

from __future__ import annotations

import gc
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_dance.consumer import OAuth2ConsumerBlueprint
from flask_dance.consumer.storage.sqla import OAuthConsumerMixin
from flask_dance.consumer.storage.sqla import SQLAlchemyStorage as DanceStorage
from flask_sqlalchemy import SQLAlchemy

# ``python bench/bench_get_token.py`` from a checkout: the repository root holds both packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _fill
from bench.report import Context, Goal, Section, table
from flask_zis_connections import get_token
from flask_zis_connections.crypto import Encryptor
from flask_zis_connections.storage.sqlalchemy.schema import connections

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (200, 2_000)
#: The cached contenders' working set: this many distinct names (fewer in a smaller
#: table), all cached beforehand: the default ``ZIS_TOKEN_CACHE_SIZE``, what a worker
#: holds with default settings.  Warming costs one uncached call per name (minutes for
#: a million on PostgreSQL).  A larger working set slows the dict as much as the cache,
#: once it outgrows the CPU's caches: the ratio holds, the microseconds grow.
WORKING_SET = 10_000

CACHED = "get_token, cached"
DICT = "dict lookup"
UNCACHED = "get_token, uncached"
RAW = "raw driver read"
CORE = "SQLAlchemy Core select"
DANCE = "Flask-Dance get, no index"
DANCE_INDEXED = "Flask-Dance get, indexed"
CONTENDERS = (CACHED, DICT, UNCACHED, RAW, CORE, DANCE, DANCE_INDEXED)

#: Targets.  The cached call reads Flask's app context variable and runs the
#: extension's methods and the cache's two clock reads around the dict lookup: 60x a
#: bare dict is about 2 us on this kind of machine.  Uncached, the row read dominates: the
#: rest (dataclass, due check, decrypt) may cost 2x the read on SQLite, where the
#: read is a few microseconds in-process, but only 30% on PostgreSQL, where a
#: read is a network round trip.
CACHED_US_MAX = 2.0
CACHED_VS_DICT_MAX = 60.0
UNCACHED_VS_RAW_MAX = {"SQLite": 3.0, "PostgreSQL": 1.3}

# Flask-Dance's storage, set up as its documentation shows: a Flask-SQLAlchemy model
# from OAuthConsumerMixin with a user_id column.  The documented model also has a
# foreign key to the host's User table; a foreign key adds no index (neither SQLite nor
# PostgreSQL creates one) and the read never joins the users, so it is left out here.
db = SQLAlchemy()


class DanceToken(OAuthConsumerMixin, db.Model):  # type: ignore[name-defined,misc]
    user_id = sa.Column(sa.Integer)


class DanceTokenIndexed(OAuthConsumerMixin, db.Model):  # type: ignore[name-defined,misc]
    __table_args__ = (sa.Index("ix_dance_indexed_provider_user", "provider", "user_id"),)
    user_id = sa.Column(sa.Integer)


@dataclass
class Contender:
    """One way of reading a token: ``run(args)`` times a loop over prepared arguments."""

    name: str
    #: The per-call arguments for row indexes (built outside the timed loop).
    args: Callable[[list[int]], list[Any]]
    #: Seconds for the whole loop.
    run: Callable[[list[Any]], float]
    #: Whether the value read for row ``i`` is row ``i``'s token.
    check: Callable[[int], bool]
    #: The app whose context the loop runs in.
    app: Flask | None = None
    #: Draws from the cached working set instead of every row.
    cached: bool = False
    calls: int = 0
    rounds: list[float] = field(default_factory=list)

    def timed(self, indexes: list[int]) -> float:
        args = self.args(indexes)
        with self.app.app_context() if self.app is not None else nullcontext():
            return self.run(args)


def _loop_get_token(names: list[str]) -> float:
    integration, call = _fill.INTEGRATION, get_token
    start = time.perf_counter()
    for name in names:
        call(integration, name)
    return time.perf_counter() - start


def _loop(fn: Callable[[Any], Any]) -> Callable[[list[Any]], float]:
    def run(args: list[Any]) -> float:
        start = time.perf_counter()
        for arg in args:
            fn(arg)
        return time.perf_counter() - start

    return run


def _names(indexes: list[int]) -> list[str]:
    return [_fill.name_of(i) for i in indexes]


class Backend:
    """One database holding our table and Flask-Dance's two, grown together."""

    def __init__(self, label: str, url: str, instance: Path, working_set: int) -> None:
        self.label = label
        self.url = url
        self.uncached = _fill.make_app(url, instance, cache_ttl=0)
        self.cached = _fill.make_app(url, instance, cache_ttl=3600, cache_size=working_set)
        self.table = _fill.Table(self.uncached)
        self.dance_app = Flask("bench_dance", instance_path=str(instance))
        self.dance_app.config["SQLALCHEMY_DATABASE_URI"] = url
        db.init_app(self.dance_app)
        with self.dance_app.app_context():
            db.create_all()
        self.dance_size = 0
        self.enc = Encryptor([_fill.KEY])

    def close(self) -> None:
        with self.dance_app.app_context():
            db.session.remove()
            db.engine.dispose()
        _fill.storage_of(self.cached).close()
        _fill.storage_of(self.uncached).close()

    def grow_to(self, size: int) -> None:
        self.table.grow_to(size)
        if size <= self.dance_size:
            return
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.dance_app.app_context():
            engine = db.engine
            for model in (DanceToken, DanceTokenIndexed):
                rows = (
                    {
                        "provider": _fill.INTEGRATION,
                        "user_id": i + 1,  # Flask-Dance skips a falsy user id
                        "created_at": now,
                        "token": {
                            "access_token": _fill.token_of(i),
                            "token_type": "bearer",
                            "expires_in": 2592000,
                            "refresh_token": "refresh-token-value",
                        },
                    }
                    for i in range(self.dance_size, size)
                )
                _fill.insert_rows(engine, model.__table__, rows)
        self.dance_size = size

    @contextmanager
    def contenders(self, working: dict[tuple[str, str], str]) -> Iterator[list[Contender]]:
        """Every contender, with the connections and engines they hold open."""
        with ExitStack() as stack:
            yield [
                Contender(
                    CACHED, _names, _loop_get_token, self._check_get_token, app=self.cached, cached=True
                ),
                self._dict(working),
                Contender(UNCACHED, _names, _loop_get_token, self._check_get_token, app=self.uncached),
                self._raw(stack),
                self._core(stack),
                self._dance(DanceToken, DANCE),
                self._dance(DanceTokenIndexed, DANCE_INDEXED),
            ]

    def _check_get_token(self, i: int) -> bool:
        return get_token(_fill.INTEGRATION, _fill.name_of(i)) == _fill.token_of(i)

    def _dict(self, working: dict[tuple[str, str], str]) -> Contender:
        def lookup(integration: str, name: str) -> str:
            return working[(integration, name)]

        def run(names: list[str]) -> float:
            integration = _fill.INTEGRATION
            start = time.perf_counter()
            for name in names:
                lookup(integration, name)
            return time.perf_counter() - start

        def check(i: int) -> bool:
            return lookup(_fill.INTEGRATION, _fill.name_of(i)) == _fill.token_of(i)

        return Contender(DICT, _names, run, check, cached=True)

    def _row_check(self, read: Callable[[str], Any]) -> Callable[[int], bool]:
        position = list(connections.c.keys()).index("access_token_enc")

        def check(i: int) -> bool:
            row = read(_fill.name_of(i))
            return row is not None and self.enc.decrypt(row[position]) == _fill.token_of(i)

        return check

    def _raw(self, stack: ExitStack) -> Contender:
        columns = ", ".join(connections.c.keys())
        if self.label == "SQLite":
            path = sa.make_url(self.url).database
            assert path is not None
            conn = sqlite3.connect(path, check_same_thread=False)
            stack.callback(conn.close)
            sql = f"SELECT {columns} FROM {connections.name} WHERE integration = ? AND name = ?"
            execute: Callable[..., Any] = conn.execute
        else:
            import psycopg

            engine = _fill.storage_of(self.uncached).engine
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            pg = psycopg.connect(*cargs, **{**cparams, "autocommit": True})
            stack.callback(pg.close)
            sql = f"SELECT {columns} FROM {connections.name} WHERE integration = %s AND name = %s"
            execute = pg.execute
        integration = _fill.INTEGRATION

        def read(name: str) -> Any:
            return execute(sql, (integration, name)).fetchone()

        return Contender(RAW, _names, _loop(read), self._row_check(read))

    def _core(self, stack: ExitStack) -> Contender:
        engine = sa.create_engine(self.url)
        stack.callback(engine.dispose)
        stmt = sa.select(connections).where(
            connections.c.integration == sa.bindparam("integration"),
            connections.c.name == sa.bindparam("name"),
        )
        integration = _fill.INTEGRATION

        def read(name: str) -> Any:
            with engine.connect() as conn:
                return conn.execute(stmt, {"integration": integration, "name": name}).first()

        return Contender(CORE, _names, _loop(read), self._row_check(read))

    def _dance(self, model: type[Any], label: str) -> Contender:
        blueprint = OAuth2ConsumerBlueprint(
            "acme",
            __name__,
            client_id="bench",
            client_secret="bench-secret",
            base_url="https://provider.test/api/",
            token_url="https://provider.test/token",
            authorization_url="https://provider.test/authorize",
        )
        storage = DanceStorage(model, db.session)

        def read(user_id: int) -> Any:
            return storage.get(blueprint, user_id=user_id)

        def check(i: int) -> bool:
            token = read(i + 1)
            return token is not None and token["access_token"] == _fill.token_of(i)

        def args(indexes: list[int]) -> list[int]:
            return [i + 1 for i in indexes]

        return Contender(label, args, _loop(read), check, app=self.dance_app)


def _calibrate(contender: Contender, rng: random.Random, size: int, pool: list[int], budget: float) -> int:
    """Warm ``contender`` up and pick its calls per round: about ``budget`` seconds."""
    calls, seconds = 1, 0.0
    while True:
        indexes = [rng.choice(pool) for _ in range(calls)] if contender.cached else None
        seconds = contender.timed(indexes or [rng.randrange(size) for _ in range(calls)])
        if seconds > budget / 4 or calls >= 10_000:
            break
        calls *= 10
    return max(3, min(20_000, int(budget / max(seconds / calls, 1e-9))))


def measure(backend: Backend, size: int, *, quick: bool, rng: random.Random) -> dict[str, float]:
    """Median microseconds per call of every contender at ``size`` rows."""
    rounds, budget = (3, 0.02) if quick else (5, 0.2)
    pool = rng.sample(range(size), min(size, WORKING_SET))
    with backend.cached.app_context():
        for i in pool:  # warm the cache: every name of the working set is a hit from now on
            get_token(_fill.INTEGRATION, _fill.name_of(i))
    working = {(_fill.INTEGRATION, _fill.name_of(i)): _fill.token_of(i) for i in pool}
    with backend.contenders(working) as contenders:
        probe = rng.choice(pool)
        for contender in contenders:
            with contender.app.app_context() if contender.app is not None else nullcontext():
                if not contender.check(probe):
                    raise AssertionError(f"{contender.name} did not read row {probe}'s token")
            contender.calls = _calibrate(contender, rng, size, pool, budget)
        for _ in range(rounds):
            longest = max(c.calls for c in contenders)
            everywhere = [rng.randrange(size) for _ in range(longest)]
            cached = [rng.choice(pool) for _ in range(longest)]
            rng.shuffle(contenders)
            for contender in contenders:
                indexes = (cached if contender.cached else everywhere)[: contender.calls]
                gc.collect()
                contender.rounds.append(contender.timed(indexes) / len(indexes) * 1e6)
        return {c.name: statistics.median(c.rounds) for c in contenders}


def _fmt(us: float) -> str:
    return f"{us:,.2f}" if us < 10 else f"{us:,.1f}" if us < 1000 else f"{us:,.0f}"


def _plot(results: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False, sharey=True)
    for ax, (label, by_size) in zip(axes[0], results.items(), strict=True):
        sizes = sorted(by_size)
        for name in CONTENDERS:
            ax.plot(sizes, [by_size[s][name] for s in sizes], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("connections in the table")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("microseconds per call (median round)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small")
    fig.suptitle("Reading one connection's token")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx: Context) -> Section:
    sizes = QUICK_SIZES if ctx.quick else SIZES
    targets = [("SQLite", f"sqlite:///{ctx.tmp / 'get_token.sqlite3'}")]
    if ctx.postgres_url:
        targets.append(("PostgreSQL", ctx.postgres_url))
    results: dict[str, dict[int, dict[str, float]]] = {}
    fill_seconds: dict[str, float] = {}
    rng = random.Random(20240611)
    for label, url in targets:
        backend = Backend(label, url, ctx.tmp, min(WORKING_SET, sizes[-1]))
        try:
            results[label] = {}
            fill_seconds[label] = 0.0
            for size in sizes:
                started = time.perf_counter()
                backend.grow_to(size)
                filled = time.perf_counter() - started
                fill_seconds[label] += filled
                results[label][size] = measure(backend, size, quick=ctx.quick, rng=rng)
                measured = time.perf_counter() - started - filled
                took = f"filled in {filled:.0f} s, measured in {measured:.0f} s"
                print(f"# get_token: {label}, {size:,} rows: {took}", file=sys.stderr)
        finally:
            backend.close()
    plot = ctx.out_dir / "get_token.png"
    _plot(results, plot)
    return _section(ctx, sizes, results, fill_seconds, plot)


def _section(
    ctx: Context,
    sizes: tuple[int, ...],
    results: dict[str, dict[int, dict[str, float]]],
    fill_seconds: dict[str, float],
    plot: Path,
) -> Section:
    largest = sizes[-1]
    parts = [
        "`get_token(integration, name)` on a fresh token, beside the reads a host could do "
        "instead, at each table size. Names are random rows of the table; every contender "
        "runs in the same process, interleaved in rounds (order shuffled each round); each "
        "figure is the median round, in microseconds per call. The cached contenders draw "
        f"from a working set of up to {WORKING_SET:,} names (the default `ZIS_TOKEN_CACHE_SIZE`), "
        "all cached beforehand. Flask-Dance "
        "keeps one token per (provider, user): its user id stands for our connection name. "
        "The raw and Core reads fetch the whole row and do not decrypt it.",
    ]
    goals: list[Goal] = []
    for label, by_size in results.items():
        header = ["connections", *CONTENDERS, "uncached / raw", "cached / dict"]
        rows = [
            [
                f"{size:,}",
                *(_fmt(by_size[size][name]) for name in CONTENDERS),
                f"{by_size[size][UNCACHED] / by_size[size][RAW]:.2f}",
                f"{by_size[size][CACHED] / by_size[size][DICT]:.1f}",
            ]
            for size in sizes
        ]
        filled = f"rows written in bulk in {fill_seconds[label]:.0f} s in all"
        parts.append(f"**{label}** ({filled})\n\n" + table(header, rows))
        worst = max(by_size[s][UNCACHED] / by_size[s][RAW] for s in sizes)
        name = f"uncached get_token / raw driver read, {label}, worst size"
        goals.append(Goal(name, worst, UNCACHED_VS_RAW_MAX[label]))
    cached_us = max(by_size[largest][CACHED] for by_size in results.values())
    cached_ratio = max(by_size[largest][CACHED] / by_size[largest][DICT] for by_size in results.values())
    goals[:0] = [
        Goal(f"cached get_token at {largest:,} connections", cached_us, CACHED_US_MAX, unit=" us"),
        Goal(f"cached get_token / dict lookup at {largest:,} connections", cached_ratio, CACHED_VS_DICT_MAX),
    ]
    if "PostgreSQL" not in results:
        parts.append("PostgreSQL was not measured (no server in this run).")
    parts.append(
        "Reading the table: the cached call's cost is reading Flask's app context, the "
        "extension's methods and the cache's clock reads around one dict lookup, and does not "
        "depend on the table's size. Uncached, every indexed read stays flat from the smallest "
        "to the largest table; Flask-Dance's documented model has no index on the columns it "
        "filters on, so each of its reads scans the table and grows with it."
    )
    return Section("get_token", "\n\n".join(parts), [plot], goals)


if __name__ == "__main__":
    from bench.run import standalone

    sys.exit(standalone(run))
