"""A worker's memory stays flat from 1,000 to 1,000,000 connections with the token cache on.

The token cache keeps at most ``ZIS_TOKEN_CACHE_SIZE`` decrypted tokens (past that, one
not used lately is dropped first), so a worker that serves a million connections should hold no more
than one that serves a thousand.  For each size (1,000 .. 1,000,000; ``--quick``: 200 and
2,000) one SQLite table is grown in place, then a fresh worker process (nothing left
over from the last size: no allocator arenas, no cache) opens the app with the cache on
and the default size, calls ``get_token`` on random names of existing rows and reports:

* its resident set size (RSS) after a warm-up, and again after ten times as many calls as
  the cache has entries (so from 10,000 connections on, most calls miss and evict);
* the cache's entry count, sampled every 256 calls: never above its size.

    python -m bench.bench_memory [--quick] [--check]
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# ``python bench/bench_memory.py`` from a checkout: the repository root holds both packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _fill
from bench.report import Context, Goal, Section, table
from flask_zis_connections import get_token

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (200, 2_000)
#: In the quick run the cache is made small, so that 2,000 names overflow it too.
QUICK_CACHE_SIZE = 500
#: RSS with a million connections over RSS with a thousand.  At 1,000 connections the
#: cache holds at most 1,000 entries, at 1,000,000 it is full (10,000 by default): the
#: 9,000 more entries cost about 0.5 KB each (two strings, two tuples, the dict slot), a few
#: MB on a worker of some 70 MB, and SQLite's page cache is bounded per connection.
#: 20% leaves room for allocator noise while an unbounded cache, which would keep every
#: one of the 100,000 names called (about 50 MB), would miss the goal.
RSS_GROWTH_MAX = 1.2
_ENV_KEY = "ZIS_BENCH_ENCRYPTION_KEY"


def rss_bytes() -> int:
    """This process's resident set size."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")


def worker(url: str, size: int, calls: int, cache_size: int, warmup: int) -> dict[str, Any]:
    """In a fresh process: the RSS and cache figures for ``size`` connections."""
    with tempfile.TemporaryDirectory(prefix="zis-bench-memory-") as instance:
        app = _fill.make_app(
            url, Path(instance), cache_ttl=3600, cache_size=cache_size or None, key=os.environ[_ENV_KEY]
        )
        cache = app.extensions["zis_connections"].lifecycle.token_cache
        assert cache is not None, "the token cache is off"
        rng = random.Random(size)
        seen = bytearray(size // 8 + 1)  # which names were called: 125 KB at a million
        peak = 0
        with app.app_context():
            for _ in range(warmup):
                get_token(_fill.INTEGRATION, _fill.name_of(rng.randrange(size)))
            gc.collect()
            warm = rss_bytes()
            for call in range(calls):
                i = rng.randrange(size)
                seen[i >> 3] |= 1 << (i & 7)
                if get_token(_fill.INTEGRATION, _fill.name_of(i)) != _fill.token_of(i):
                    raise AssertionError(f"get_token returned another row's token for row {i}")
                if call % 256 == 0:
                    peak = max(peak, len(cache))
            peak = max(peak, len(cache))
            gc.collect()
            end = rss_bytes()
        _fill.storage_of(app).close()
    return {
        "size": size,
        "calls": calls,
        "distinct": sum(bin(b).count("1") for b in seen),
        "cache_size": cache.size,
        "entries": len(cache),
        "peak_entries": peak,
        "rss_warm": warm,
        "rss_end": end,
    }


def _measure(url: str, size: int, calls: int, cache_size: int, warmup: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.bench_memory", "--worker", url, str(size), str(calls)]
    proc = subprocess.run(
        [*args, str(cache_size), str(warmup)],
        cwd=ROOT,
        env={**os.environ, _ENV_KEY: _fill.KEY},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the worker for {size:,} connections failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in results]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(sizes, [r["rss_warm"] / 2**20 for r in results], marker="o", label="after the warm-up")
    ax.plot(sizes, [r["rss_end"] / 2**20 for r in results], marker="o", label="after the calls")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("connections in the table")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title("A worker's memory with the token cache on")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx: Context) -> Section:
    sizes = QUICK_SIZES if ctx.quick else SIZES
    cache_size = QUICK_CACHE_SIZE if ctx.quick else 0  # 0: the extension's default
    warmup = 200 if ctx.quick else 2_000
    url = f"sqlite:///{ctx.tmp / 'memory.sqlite3'}"
    app = _fill.make_app(url, ctx.tmp, cache_ttl=0)
    results: list[dict[str, Any]] = []
    try:
        rows = _fill.Table(app)
        for size in sizes:
            rows.grow_to(size)
            # Ten times the cache's size (four in the smoke run): most calls miss once
            # the table outgrows the cache.
            limit = cache_size or app.extensions["zis_connections"].settings.token_cache_size
            results.append(_measure(url, size, (4 if ctx.quick else 10) * limit, cache_size, warmup))
            print(f"# memory: {size:,} connections measured", file=sys.stderr)
    finally:
        _fill.storage_of(app).close()
    plot = ctx.out_dir / "memory.png"
    _plot(results, plot)
    return _section(results, plot)


def _section(results: list[dict[str, Any]], plot: Path) -> Section:
    mib = 2**20
    rows = [
        [
            f"{r['size']:,}",
            f"{r['calls']:,}",
            f"{r['distinct']:,}",
            f"{r['peak_entries']:,} / {r['cache_size']:,}",
            f"{r['rss_warm'] / mib:.1f}",
            f"{r['rss_end'] / mib:.1f}",
            f"{(r['rss_end'] - r['rss_warm']) / mib:+.1f}",
        ]
        for r in results
    ]
    header = ["connections", "calls", "distinct names", "peak entries / size"]
    header += ["RSS warm", "RSS end", "growth"]
    first, last = results[0], results[-1]
    growth = last["rss_end"] / first["rss_end"]
    fullest = max(r["peak_entries"] / r["cache_size"] for r in results)
    markdown = "\n\n".join(
        [
            "A worker's resident memory (MiB) with the token cache on, one fresh process per "
            "table size (a SQLite file grown in place). Each worker calls `get_token` on random "
            "names of existing rows: a warm-up, then many more calls than the cache has "
            "entries (see the table); the cache's entry count is sampled every 256 calls.",
            table(header, rows),
            f"RSS after the calls at {last['size']:,} over {first['size']:,} connections: "
            f"{growth:.2f}. The cache's size, not the table's, bounds what a worker keeps: "
            "past the cache's size a new name evicts one not used lately (second chance).",
        ]
    )
    goals = [
        Goal(f"worker RSS at {last['size']:,} / at {first['size']:,} connections", growth, RSS_GROWTH_MAX),
        Goal("token cache entries / ZIS_TOKEN_CACHE_SIZE, peak", fullest, 1.0),
    ]
    return Section("memory", markdown, [plot], goals)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        url, size, calls, cache_size, warmup = sys.argv[2:7]
        print(json.dumps(worker(url, int(size), int(calls), int(cache_size), int(warmup))))
        sys.exit(0)
    from bench.run import standalone

    sys.exit(standalone(run))
