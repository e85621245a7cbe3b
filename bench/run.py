"""``python -m bench``: run every benchmark module and write ``BENCHMARKS.md``.

Each module (:data:`MODULES`, in order) measures its subject and its baselines and hands
back a :class:`~bench.report.Section`; this runner gives each one a scratch directory and,
when PostgreSQL is there, an empty database of its own, then writes one report: the
exact command, the date, the commit, the machine and the library versions (numbers mean
little without them), a summary of every goal, and each section with its plots.

Without ``--postgres-url`` a throwaway PostgreSQL is started with the repository's
``.ci/services.sh`` in a fresh directory on free ports, and stopped at the end whatever
happens; without the PostgreSQL server binaries the run measures SQLite only and the
report says so.

    python -m bench                      # full run: BENCHMARKS.md + docs/bench/*.png at the root
    python -m bench --quick              # smoke run, written into a temporary directory
    python -m bench --only get_token,memory --check
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.report import Context, Goal, Section, table
from bench.steal import cpu_ticks, stolen_share, stolen_text

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("bench_get_token", "bench_memory", "bench_show", "bench_storm")
#: Where the plots go, relative to the directory BENCHMARKS.md is written into.
PLOTS = Path("docs") / "bench"
PACKAGES = ("Flask", "SQLAlchemy", "psycopg", "cryptography", "gunicorn")


@dataclass
class Outcome:
    """What became of one module: a section, or why there is none."""

    module: str
    section: Section | None = None
    error: str | None = None
    missing: bool = False
    seconds: float = 0.0
    goals: list[Goal] = field(default_factory=list)
    #: The share of the machine's CPU time its host took while the module ran.
    stolen: float | None = None


# -- PostgreSQL --------------------------------------------------------------------------
def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on (the kernel's pick for port 0), as .ci/run picks them."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def postgres_server(url: str | None, notes: list[str]) -> Iterator[tuple[str | None, Path | None]]:
    """``(server URL, its log)``: ``url`` as given, or a throwaway server stopped on exit."""
    if url:
        yield url, None
        return
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        notes.append(
            "PostgreSQL was not measured: its server binaries are not installed "
            "(apt-get install postgresql, or pass --postgres-url). SQLite only."
        )
        yield None, None
        return
    services = Path(tempfile.mkdtemp(prefix="zis-bench-services-"))
    pg_port, redis_port = _free_ports(2)
    env = {
        **os.environ,
        "ZIS_SERVICES_DIR": str(services),
        "ZIS_PG_PORT": str(pg_port),
        "ZIS_REDIS_PORT": str(redis_port),
    }
    script = str(ROOT / ".ci" / "services.sh")
    try:
        proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=180)
        found = [
            line.partition("=")[2]
            for line in proc.stdout.splitlines()
            if line.startswith("export ZIS_TEST_POSTGRES_URL=")
        ]
        if proc.returncode != 0 or not found:
            notes.append(
                "PostgreSQL was not measured: starting a throwaway server failed "
                f"({proc.stderr.strip().splitlines()[-1:] or proc.returncode}). SQLite only."
            )
            yield None, None
        else:
            print(f"# bench: PostgreSQL on port {pg_port} in {services}", file=sys.stderr)
            yield found[0], services / "pg.log"
    finally:
        subprocess.run(["bash", script, "--stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(services, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str, label: str) -> Iterator[str]:
    """An empty database on ``server_url``'s server for one module, dropped afterwards.

    Modules create tables and fill them with up to a million rows: on a database of
    their own they neither see each other's rows nor touch whatever the given URL
    points at (the test suite's database, say).
    """
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    url = sa.make_url(server_url)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"zis_bench_{label}_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                # FORCE (PostgreSQL 13+) ends a module's leftover sessions, e.g. a listener.
                force = " WITH (FORCE)" if (conn.dialect.server_version_info or (0,)) >= (13,) else ""
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"{force}')
    finally:
        admin.dispose()


def _postgres_version(server_url: str | None) -> str:
    if not server_url:
        return "not measured"
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(server_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar_one())
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    finally:
        engine.dispose()


# -- the machine -------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram() -> str:
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:
        kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        total = kib * 1024
    return f"{total / 2**30:.1f} GiB"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    proc = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False)
    first = (proc.stdout or proc.stderr).strip().splitlines()[:1]
    return first[0].split(" Copyright")[0] if first else "unknown"


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        ).stdout

    commit = git("rev-parse", "HEAD").strip() or "unknown (not a git checkout)"
    # The report's own files change while it runs: only other changes make it uncommitted.
    own = ("BENCHMARKS.md", "docs/bench/")
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    if any(not path.startswith(own) for path in changed):
        commit += " with uncommitted changes"
    return commit


def machine(server_url: str | None) -> list[list[str]]:
    rows = [
        ["CPU", _cpu_model()],
        ["cores", str(os.cpu_count() or 1)],
        ["RAM", _ram()],
        ["OS", platform.platform()],
        ["Python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["SQLite", sqlite3.sqlite_version],
        ["PostgreSQL server", _postgres_version(server_url)],
    ]
    rows += [[package, _version(package)] for package in PACKAGES]
    rows.append(["wrk", _wrk_version()])
    return rows


# -- running the modules -----------------------------------------------------------------
def _short(module: str) -> str:
    return module.removeprefix("bench_")


def run_module(module: str, ctx: Context) -> Outcome:
    """Import and run one module; a missing module or a failure becomes an :class:`Outcome`."""
    try:
        mod = importlib.import_module(f"bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{module}":
            return Outcome(module, missing=True)
        return Outcome(module, error=traceback.format_exc())
    except Exception:
        return Outcome(module, error=traceback.format_exc())
    started, ticks = time.perf_counter(), cpu_ticks()
    try:
        section = mod.run(ctx)
    except Exception:
        return Outcome(module, error=traceback.format_exc(), seconds=time.perf_counter() - started)
    if not isinstance(section, Section):
        return Outcome(module, error=f"run() returned {type(section).__name__}, not a Section")
    return Outcome(
        module,
        section=section,
        seconds=time.perf_counter() - started,
        goals=list(section.goals),
        stolen=stolen_share(ticks, cpu_ticks()),
    )


def render(
    outcomes: list[Outcome],
    *,
    command: str,
    started: datetime,
    seconds: float,
    quick: bool,
    machine_rows: list[list[str]],
    notes: list[str],
    out: Path,
    stolen: float | None = None,
) -> str:
    """The whole of ``BENCHMARKS.md``."""
    lines = [
        "# Benchmarks",
        "",
        f"- command: `{command}` ({'quick smoke run: goals are not judged' if quick else 'full run'})",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, {seconds:.0f} s in all{stolen_text(stolen)}",
        f"- commit: {_git_commit()}",
        "",
        "Each module measures its subject and its baselines in the same process and run "
        "(interleaved rounds, medians): the ratios are what the goals judge; absolute figures "
        "depend on the machine below.",
        "",
        "## Goals",
        "",
    ]
    rows: list[list[str]] = []
    for o in outcomes:
        title = o.section.title if o.section else _short(o.module)
        if o.missing:
            rows.append([title, "not available in this checkout", "", "", ""])
        elif o.error:
            rows.append([title, "the benchmark failed (see its section)", "", "", "FAILED"])
        for g in o.goals:
            measured = f"{g.measured:.3g}{g.unit}"
            target = f"{g.op} {g.target:g}{g.unit}"
            # A quick run's sizes are too small for its goals to mean anything.
            mark = ("met" if g.met else "missed") if quick else ("met" if g.met else "**MISSED**")
            rows.append([title, g.name, measured, target, mark])
    lines += [table(["section", "goal", "measured", "target", ""], rows), ""]
    lines += [f"{note}" for note in notes]
    lines += ["", "## Machine", "", table(["", ""], machine_rows), ""]
    for o in outcomes:
        if o.missing:
            continue
        lines += [f"<!-- module: {o.module} -->"]
        if o.section is None:
            lines += [f"## {_short(o.module)}", "", "The benchmark failed:", ""]
            lines += ["```", (o.error or "").rstrip(), "```", ""]
            continue
        timing = f"_{o.seconds:.0f} s{stolen_text(o.stolen)}_"
        lines += [f"## {o.section.title}", "", timing, "", o.section.markdown.strip(), ""]
        for plot in o.section.plots:
            link = os.path.relpath(plot, out)
            lines += [f"![{plot.stem}]({Path(link).as_posix()})", ""]
        if o.section.goals:
            lines += ["Goals:", "", *(f"- {g.line()}" for g in o.section.goals), ""]
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (a smoke test)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="only these modules (get_token, memory, ...)")
    parser.add_argument("--out", type=Path, help="where BENCHMARKS.md and docs/bench/ go (default: the root)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--postgres-url", help="a PostgreSQL server to use instead of a throwaway one")
    return parser.parse_args(argv)


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(MODULES)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {_short(m): m for m in MODULES}
    chosen = []
    for name in wanted:
        module = known.get(_short(name))
        if module is None:
            raise SystemExit(f"--only: unknown benchmark {name!r}; known: {', '.join(known)}")
        chosen.append(module)
    return chosen


def _exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the run through ``finally``: the throwaway server stops."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    modules = _selected(args.only)
    _exit_on_signals()
    started_at = datetime.now(UTC)
    started, ticks = time.perf_counter(), cpu_ticks()
    out: Path = args.out or (Path(tempfile.mkdtemp(prefix="zis-bench-out-")) if args.quick else ROOT)
    out = out.resolve()
    plots = out / PLOTS
    plots.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    outcomes: list[Outcome] = []
    with (
        tempfile.TemporaryDirectory(prefix="zis-bench-") as tmp,
        postgres_server(args.postgres_url, notes) as (server, pg_log),
    ):
        for module in modules:
            print(f"# bench: {module} ...", file=sys.stderr)
            scratch = Path(tmp) / module
            scratch.mkdir()
            with fresh_database(server, _short(module)) if server else nullcontext(None) as db:
                ctx = Context(args.quick, out_dir=plots, tmp=scratch, postgres_url=db, postgres_log=pg_log)
                outcome = run_module(module, ctx)
            outcomes.append(outcome)
            state = "not available" if outcome.missing else "FAILED" if outcome.error else "done"
            print(f"# bench: {module} {state} ({outcome.seconds:.0f} s)", file=sys.stderr)
            if outcome.error:
                print(outcome.error, file=sys.stderr)
        machine_rows = machine(server)
    command = shlex.join(["python", "-m", "bench", *argv])
    report = render(
        outcomes,
        command=command,
        started=started_at,
        seconds=time.perf_counter() - started,
        quick=args.quick,
        machine_rows=machine_rows,
        notes=notes,
        out=out,
        stolen=stolen_share(ticks, cpu_ticks()),
    )
    (out / "BENCHMARKS.md").write_text(report)
    print(f"# bench: wrote {out / 'BENCHMARKS.md'}", file=sys.stderr)
    missed = [g for o in outcomes for g in o.goals if not g.met]
    for o in outcomes:
        for g in o.goals:
            print(g.line())
    if any(o.error for o in outcomes):
        return 1
    return 1 if args.check and missed else 0


def standalone(run: Callable[[Context], Section], argv: Sequence[str] | None = None) -> int:
    """``python -m bench.<module>``: one module, its markdown and goals on stdout."""
    parser = argparse.ArgumentParser(description=(sys.modules[run.__module__].__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (a smoke test)")
    parser.add_argument("--out", type=Path, help="where the plots go (default: a temporary directory)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--postgres-url", help="a PostgreSQL server to use instead of a throwaway one")
    args = parser.parse_args(argv)
    _exit_on_signals()
    notes: list[str] = []
    out = (args.out or Path(tempfile.mkdtemp(prefix="zis-bench-out-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Run as ``python -m bench.<name>`` the module is ``__main__``: its file names it.
    label = _short(Path(sys.modules[run.__module__].__file__ or "bench").stem)
    with (
        tempfile.TemporaryDirectory(prefix="zis-bench-") as tmp,
        postgres_server(args.postgres_url, notes) as (server, pg_log),
        fresh_database(server, label) if server else nullcontext(None) as db,
    ):
        section = run(Context(args.quick, out, Path(tmp), db, pg_log))
    print(*notes, sep="\n")
    print(f"## {section.title}\n\n{section.markdown}\n")
    for plot in section.plots:
        print(f"plot: {plot}")
    for goal in section.goals:
        print(goal.line())
    return 1 if args.check and not all(g.met for g in section.goals) else 0
