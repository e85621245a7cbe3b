"""Throughput of the "show connection" endpoint under gunicorn, against bare Flask.

One app (``bench/show_app.py``) serves both the extension's blueprint and a bare Flask
view answering the same connection JSON (a dict computed once at start-up, ``jsonify``'d
per request).  For each worker model - ``gunicorn -w 2`` (sync) and ``gunicorn -w 2 -k
gthread --threads 4`` - the script starts a real gunicorn on a loopback port and runs
``wrk -t2 -c32`` against

* **ours**: ``GET /api/services/zis/connections/acme?name=conn-NNNNNN`` with a bearer
  token: the rate limiter (on, at a limit this load never reaches), the token check, the
  connection read, the due check, the decrypted answer;
* **bare**: ``GET /bare?name=conn-NNNNNN``: what Flask itself costs for that answer;
* **bare+read**: ``GET /bare-read?name=...``: the bare view after the one storage read of
  the row that ours must do too - the ceiling for any endpoint that reads it,

names drawn at random over the ``N`` connections of a SQLite file (and of PostgreSQL when
``ctx.postgres_url`` is given), the three interleaved round by round; the figure is the
median round's requests/s, with the workers' CPU per request beside it (psutil).  Every
answer must be a 200: ``wrk``'s "Non-2xx" count or a socket error voids the run (a 429
or a 500 is cheaper than a real answer).  Without ``wrk`` a Python keep-alive load
generator stands in.

Goals: ours/bare >= 0.7 for sync and for gthread.  Context: an in-process profile
(``cProfile`` over ``app.test_client()``) of where a request's time goes, with the
extension's per-request caches on and off.

    python -m bench.bench_show            # 1,000 connections, 5 rounds of 5 s per side
    python -m bench.bench_show --quick    # 200 connections, one round of 2 s per side
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import os
import pstats
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import show_app  # noqa: E402
from bench.report import Context, Goal, Section, table  # noqa: E402

OURS_PATH = "/api/services/zis/connections/acme"
BARE_PATH = "/bare"
BARE_READ_PATH = "/bare-read"
#: What is loaded, round by round: ours, the bare view, the bare view plus the one read.
SIDES: dict[str, str] = {"ours": OURS_PATH, "bare": BARE_PATH, "bare+read": BARE_READ_PATH}
WORKER_MODELS: dict[str, list[str]] = {
    "sync": ["-w", "2"],
    "gthread": ["-w", "2", "-k", "gthread", "--threads", "4"],
}
CONNECTIONS = 32
TARGET = 0.7


@dataclass(frozen=True)
class Load:
    """One load run's outcome."""

    rps: float
    requests: int
    bad: int  # non-2xx answers plus socket errors
    #: CPU seconds (user + system) the workers spent per request; None without psutil.
    cpu_us: float | None = None


# -- gunicorn ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gunicorn(model: str, db_url: str, key: str, log: Path, extra: str = "") -> Iterator[tuple[int, int]]:
    """A gunicorn serving ``bench.show_app`` on a free loopback port, stopped on exit:
    its port and the master's pid."""
    port = _free_port()
    env = {**os.environ, show_app.ENV_DB: db_url, show_app.ENV_KEY: key, show_app.ENV_EXTRA: extra}
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        *WORKER_MODELS[model],
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "bench.show_app:create_app()",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, proc)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode} before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", BARE_PATH)
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer within 60 s")


# -- load --------------------------------------------------------------------------------
#: The names ``show_app.name_of`` gives, as a Lua format.
_NAME_FORMAT = "conn-%07d"
assert show_app.name_of(42) == _NAME_FORMAT % 42
_LUA = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format(nil, string.format("%(path)s?name=%(name)s", math.random(0, %(last)d)))
end
"""


def wrk_load(port: int, path: str, token: str | None, size: int, seconds: float, tmp: Path) -> Load:
    script = tmp / f"names-{abs(hash(path))}.lua"
    script.write_text(
        _LUA % {"seed": random.randrange(1 << 30), "path": path, "last": size - 1, "name": _NAME_FORMAT}
    )
    # wrk takes whole seconds.
    cmd = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "-s", str(script)]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    proc = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return parse_wrk(proc.stdout)


def parse_wrk(out: str) -> Load:
    """Requests/s, the request count, and every answer that was not a 2xx (or no answer)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors is not None:
        bad += sum(int(n) for n in errors.groups())
    return Load(float(rps.group(1)), int(total.group(1)), bad)


def python_load(port: int, path: str, token: str | None, size: int, seconds: float, tmp: Path) -> Load:
    """Keep-alive HTTP/1.1 clients on threads: the stand-in when ``wrk`` is absent (it
    saturates the server less, so its ratios understate the gap)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    stop = time.monotonic() + seconds
    counts = [0] * CONNECTIONS
    bad = [0] * CONNECTIONS

    def client(slot: int) -> None:
        rng = random.Random(slot)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            try:
                conn.request("GET", f"{path}?name={show_app.name_of(rng.randrange(size))}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                counts[slot] += 1
                bad[slot] += resp.status != 200
            except OSError:
                bad[slot] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return Load(sum(counts) / elapsed, sum(counts), sum(bad))


def _worker_cpu(master: int) -> Callable[[], list[float]] | None:
    """Each worker's CPU seconds so far (user + system), or None without psutil.

    Throughput moves with whatever else the machine runs; CPU per request much less,
    so it is reported beside the requests/s as a steadier view of the same ratio.  Per
    worker, so that a round one worker served alone can be told apart (:func:`_lopsided`).
    """
    try:
        import psutil
    except ImportError:
        return None
    workers = psutil.Process(master).children()

    def cpu() -> list[float]:
        return [sum(w.cpu_times()[:2]) for w in workers]

    return cpu


#: A round whose least busy worker did less than this share of the workers' CPU.
LOPSIDED_SHARE = 0.15
#: Attempts at a round before its lopsided figure is kept.
ROUND_ATTEMPTS = 4


def _lopsided(spent: list[float]) -> bool:
    """Whether one worker served (nearly) the whole round.

    gunicorn's gthread workers accept keep-alive connections greedily: now and then
    one worker takes all 32 of wrk's connections as they open and the other sits idle
    for the whole round, and the throughput of whichever side ran falls to a third
    (both sides alike, at random, seen with per-worker CPU).  Such a round measures
    gunicorn's accept race, not the endpoint; it is run again.
    """
    total = sum(spent)
    return len(spent) > 1 and total > 0 and min(spent) < LOPSIDED_SHARE * total


def measure(
    model: str, db_url: str, key: str, token: str, size: int, rounds: int, seconds: float, tmp: Path
) -> tuple[dict[str, list[Load]], int]:
    """Interleaved rounds of every side (the order rotating) on one gunicorn, and how
    many rounds were run again because one worker served them alone."""
    load = wrk_load if shutil.which("wrk") else python_load
    out: dict[str, list[Load]] = {side: [] for side in SIDES}
    redone = 0
    with gunicorn(model, db_url, key, tmp / "gunicorn.log") as (port, master):
        cpu = _worker_cpu(master)
        # Long enough for every worker to have answered most names once (the caches'
        # steady state), for every side.
        for side, path in SIDES.items():
            load(port, path, token if side == "ours" else None, size, max(1.0, seconds * 0.6), tmp)
        names = list(SIDES)
        for i in range(rounds):
            for side in names[i % len(names) :] + names[: i % len(names)]:
                for attempt in range(ROUND_ATTEMPTS):
                    before = cpu() if cpu else []
                    got = load(port, SIDES[side], token if side == "ours" else None, size, seconds, tmp)
                    if cpu is None or not got.requests:
                        break
                    spent = [after - was for after, was in zip(cpu(), before, strict=True)]
                    got = Load(got.rps, got.requests, got.bad, sum(spent) / got.requests * 1e6)
                    if not _lopsided(spent) or attempt == ROUND_ATTEMPTS - 1:
                        break
                    redone += 1
                out[side].append(got)
    return out, redone


# -- profile -----------------------------------------------------------------------------
#: Stages of one request, each the cumulative time of the function that does it.
STAGES: list[tuple[str, str]] = [
    ("rate limiter", "ratelimit.py"),
    ("bearer token check", "auth.py:authenticate"),
    ("OpenAPI request check", "openapi.py:check_request"),
    ("connection read", "helpers.py:lookup"),
    ("due check / refresh", "lifecycle.py:ensure_fresh"),
    ("answer (decrypt, JSON, or the cached bytes)", "connections.py:_answer"),
]


def profile(
    db_url: str, key: str, token: str, size: int, calls: int, extra: str
) -> tuple[float, dict[str, float]]:
    """Per-request microseconds (un-profiled) and each stage's share under ``cProfile``."""
    os.environ[show_app.ENV_EXTRA] = extra
    try:
        app = show_app.create_app(db_url, key)
    finally:
        os.environ.pop(show_app.ENV_EXTRA, None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(7)
    urls = [f"{OURS_PATH}?name={show_app.name_of(rng.randrange(size))}" for _ in range(calls)]

    def loop() -> float:
        started = time.process_time()  # this process's CPU: steadier than the wall clock
        for url in urls:
            resp = client.get(url, headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(f"profile request answered {resp.status_code}")
        return (time.process_time() - started) / calls * 1e6

    loop()  # warm: caches filled as under steady load
    per_request = min(loop() for _ in range(3))
    prof = cProfile.Profile()
    prof.enable()
    loop()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())  # every function's own time: the whole run
    shares: dict[str, float] = {}
    for label, where in STAGES:
        fname, _, func = where.partition(":")
        spent = 0.0
        for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
            if not path.endswith(fname) or "flask_zis_connections" not in path:
                continue
            if func and name != func:
                continue
            if not func and name not in {"hit_caller", "test_address"}:
                continue
            spent += ct
        shares[label] = shares.get(label, 0.0) + spent / total
    app.extensions["zis_connections"].storage.close()
    return per_request, shares


# -- the section -------------------------------------------------------------------------
def run(ctx: Context) -> Section:
    size = 200 if ctx.quick else 1_000
    rounds = 1 if ctx.quick else 5
    seconds = 2.0 if ctx.quick else 5.0
    key = Fernet.generate_key().decode()
    databases = {"SQLite": f"sqlite:///{ctx.tmp / 'show.sqlite3'}"}
    if ctx.postgres_url:
        databases["PostgreSQL"] = ctx.postgres_url
    results: dict[tuple[str, str], dict[str, list[Load]]] = {}
    redone: dict[tuple[str, str], int] = {}
    tokens: dict[str, str] = {}
    for db_name, url in databases.items():
        tokens[db_name] = show_app.prepare(url, key, size)
        # Quick mode keeps PostgreSQL to one worker model: a smoke run, well under a minute.
        models = list(WORKER_MODELS)[:1] if ctx.quick and db_name != "SQLite" else list(WORKER_MODELS)
        for model in models:
            results[(db_name, model)], redone[(db_name, model)] = measure(
                model, url, key, tokens[db_name], size, rounds, seconds, ctx.tmp
            )

    rows, cpu_rows, goals, invalid = [], [], [], []
    medians: dict[tuple[str, str], dict[str, float]] = {}
    for (db_name, model), sides in results.items():
        rps = {side: statistics.median(load.rps for load in loads) for side, loads in sides.items()}
        bad = sum(load.bad for loads in sides.values() for load in loads)
        total = sum(load.requests for loads in sides.values() for load in loads)
        if bad:
            invalid.append(f"{db_name} {model}: {bad:,} of {total:,} answers were not 200")
        medians[(db_name, model)] = rps
        ours, bare, floor = rps["ours"], rps["bare"], rps["bare+read"]
        unsound = _unsound(rps)
        if unsound:
            invalid.append(f"{db_name} {model}: {unsound}")
        rows.append(
            [
                db_name,
                model,
                f"**{ours / bare:.2f}**",
                f"{floor / bare:.2f}",
                f"{ours / floor:.2f}",
                f"{ours:,.0f}",
                f"{bare:,.0f}",
                f"{floor:,.0f}",
                f"{total:,}",
                str(bad),
            ]
        )
        cpu = {
            side: statistics.median(load.cpu_us for load in loads if load.cpu_us is not None)
            for side, loads in sides.items()
            if any(load.cpu_us is not None for load in loads)
        }
        if len(cpu) == len(SIDES):
            cpu_rows.append(
                [
                    db_name,
                    model,
                    f"{cpu['bare'] / cpu['ours']:.2f}",
                    f"{cpu['ours']:.0f}",
                    f"{cpu['bare']:.0f}",
                    f"{cpu['bare+read']:.0f}",
                    f"{cpu['ours'] - cpu['bare+read']:.0f}",
                ]
            )
        # The goal is judged on SQLite (PostgreSQL's numbers are context: its server
        # shares the 2 cores with gunicorn and wrk); a run with any non-200 counts as 0.
        if db_name == "SQLite":
            judged = 0.0 if bad or unsound else ours / bare
            goals.append(Goal(f"show ours/bare, {model}", judged, TARGET, ">="))

    profile_calls = 300 if ctx.quick else 3_000
    sqlite_url = databases["SQLite"]
    on_us, on = profile(sqlite_url, key, tokens["SQLite"], size, profile_calls, "")
    off_us, off = profile(
        sqlite_url,
        key,
        tokens["SQLite"],
        size,
        profile_calls,
        "ZIS_API_TOKEN_CACHE_TTL=0;ZIS_API_RESPONSE_CACHE_BYTES=0",
    )
    prof_rows = [
        [label, f"{off[label] * 100:.0f}%", f"{on[label] * 100:.0f}%"]
        for label in dict.fromkeys(s for s, _ in STAGES)
    ]
    prof_rows.append(["per request (test client, no profiler)", f"{off_us:.0f} us", f"{on_us:.0f} us"])

    plot = _plot(medians, ctx.out_dir)
    load_tool = "wrk" if shutil.which("wrk") else "a Python keep-alive load generator (wrk not found)"
    md = [
        f"`GET {OURS_PATH}?name=...` with a bearer token against a bare Flask view answering the same "
        f"JSON, both on one app under real gunicorn (`-w 2` sync; `-w 2 -k gthread --threads 4`), "
        f"loaded by {load_tool} with {CONNECTIONS} connections over {size:,} connections' names at random; "
        f"{rounds} interleaved round(s) of {seconds:g} s per side, median requests/s.  "
        f"The rate limiter is on (`ZIS_RATELIMIT={show_app.BENCH_RATELIMIT!r}`, never reached).",
        "",
        table(
            [
                "database",
                "workers",
                "ours/bare",
                "(bare+read)/bare",
                "ours/(bare+read)",
                "ours req/s",
                "bare req/s",
                "bare+read req/s",
                "requests",
                "non-200",
            ],
            rows,
        ),
        "",
        "*bare+read* is the bare view after the same `storage.get_connection` the endpoint must "
        "do: `(bare+read)/bare` is the most any endpoint that reads the row once can reach, "
        "`ours/(bare+read)` what the extension costs beyond that read.",
        "",
        "Rounds run again because one worker served them alone (gunicorn's gthread workers "
        "accept keep-alive connections greedily: now and then one takes all of them and the "
        f"other idles, whichever side is loaded; seen as a worker with under {LOPSIDED_SHARE:.0%} "
        f"of the round's CPU, at most {ROUND_ATTEMPTS - 1} retries a round): "
        + ", ".join(f"{db} {model} {n}" for (db, model), n in redone.items())
        + ".",
        "",
    ]
    if cpu_rows:
        md += [
            "CPU per request (the gunicorn workers' user + system time over the requests they "
            "answered, median round): steadier than requests/s on a shared machine.",
            "",
            table(
                [
                    "database",
                    "workers",
                    "bare/ours",
                    "ours us",
                    "bare us",
                    "bare+read us",
                    "ours - (bare+read) us",
                ],
                cpu_rows,
            ),
            "",
        ]
    if invalid:
        md += [
            "**Invalid rows**, judged as 0 (a 429 or 500 is cheaper than an answer; a side that "
            "does more work cannot outrun the bare view unless the server did not serve the bare "
            "view at its own speed): " + "; ".join(invalid),
            "",
        ]
    md += [
        "Where a request's time goes (share of the test client's time under `cProfile`, "
        "`app.test_client()` loop on SQLite; the rest is Flask, werkzeug and the test client): "
        "the extension's per-request caches off (`ZIS_API_TOKEN_CACHE_TTL=0`, "
        "`ZIS_API_RESPONSE_CACHE_BYTES=0`) and on (the defaults).",
        "",
        table(["stage", "caches off", "caches on"], prof_rows),
    ]
    return Section("Show connection under gunicorn", "\n".join(md), [plot] if plot else [], goals)


def _unsound(rps: dict[str, float]) -> str | None:
    """Why a row's figures cannot be right, or None.

    Both other sides do all the bare view does and more (its JSON, plus a read, plus
    the extension's work), so neither can be faster than it on the same gunicorn.
    When one is, the server did not serve the bare view at its own speed in that run -
    gunicorn's gthread worker, on this 2-core machine, now and then serves even the
    bare view at a third of its usual rate - and the ratio measures that, not the
    extension.
    """
    bare = rps["bare"]
    faster = [side for side in ("ours", "bare+read") if rps[side] > bare]
    if not faster:
        return None
    return " and ".join(faster) + f" outran the bare view ({bare:,.0f} req/s)"


def _plot(medians: dict[tuple[str, str], dict[str, float]], out_dir: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"{db}\n{model}" for db, model in medians]
    colors = {"bare": "#999999", "bare+read": "#c9a227", "ours": "#2b6cb0"}
    names = {"bare": "bare Flask", "bare+read": "bare Flask + the row read", "ours": "show connection"}
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5.0, 2.6 * len(labels)), 4.2))
    for n, side in enumerate(("bare", "bare+read", "ours")):
        xs = [x + (n - 1) * width for x in range(len(labels))]
        heights = [rps[side] for rps in medians.values()]
        ax.bar(xs, heights, width=width, label=names[side], color=colors[side])
        if side != "bare":
            for x, rps in zip(xs, medians.values(), strict=True):
                ax.text(x, rps[side], f"{rps[side] / rps['bare']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(range(len(labels))), labels)
    ax.set_ylabel("requests/s (median round)")
    ax.set_title("Show connection vs bare Flask, gunicorn + wrk -c32", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "show_throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round (the test suite's smoke run)")
    parser.add_argument("--postgres", default=os.environ.get("ZIS_BENCH_POSTGRES_URL"), help="SQLAlchemy URL")
    parser.add_argument("--out", type=Path, help="where the plot goes (default: a temporary directory)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="zis-bench-show-plots-"))
    with tempfile.TemporaryDirectory(prefix="zis-bench-show-") as tmp:
        ctx = Context(quick=args.quick, out_dir=out, tmp=Path(tmp), postgres_url=args.postgres)
        section = run(ctx)
    print(f"## {section.title}\n\n{section.markdown}\n")
    for path in section.plots:
        print(f"plot: {path}")
    for goal in section.goals:
        print(goal.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
