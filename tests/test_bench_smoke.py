"""The benchmark suite keeps working: ``python -m bench --quick`` writes a whole report.

Its numbers are read by people, not asserted here: speed is judged by the ratios a full
run reports against baselines measured beside it, never by a timed unit test, and a
quick run's goals are not judged at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import run as bench_run
from bench import steal
from bench.report import Context, Goal, Section

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench-out")
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(out)]
    if os.environ.get("ZIS_TEST_POSTGRES_URL"):
        command += ["--postgres-url", os.environ["ZIS_TEST_POSTGRES_URL"]]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, (out / "BENCHMARKS.md").read_text()


def _available() -> list[str]:
    return [m for m in bench_run.MODULES if (ROOT / "bench" / f"{m}.py").exists()]


def test_the_report_starts_with_the_run_and_a_summary_of_every_goal(report: tuple[Path, str]) -> None:
    _, text = report
    assert text.startswith("# Benchmarks\n")
    assert "`python -m bench --quick --out " in text
    assert re.search(r"commit: [0-9a-f]{40}", text)
    goals = text.index("## Goals")
    assert goals < text.index("## Machine") < text.index("<!-- module: ")
    for name in ("cached get_token / dict lookup", "uncached get_token / raw driver read, SQLite"):
        assert name in text[goals : text.index("## Machine")]
    assert "worker RSS at 2,000 / at 200 connections" in text
    for missing in set(bench_run.MODULES) - set(_available()):
        assert f"| {missing.removeprefix('bench_')} | not available in this checkout |" in text


def test_the_machine_and_library_versions_are_recorded(report: tuple[Path, str]) -> None:
    _, text = report
    machine = text[text.index("## Machine") : text.index("<!-- module: ")]
    for row in ("CPU", "cores", "RAM", "OS", "Python", "SQLite", "PostgreSQL server", "Flask", "SQLAlchemy"):
        assert f"| {row} |" in machine
    for package in ("psycopg", "cryptography", "gunicorn", "wrk"):
        assert f"| {package} |" in machine
    if os.environ.get("ZIS_TEST_POSTGRES_URL"):
        assert re.search(r"\| PostgreSQL server \| \d+", machine)


def test_every_available_module_has_its_section_and_no_failure(report: tuple[Path, str]) -> None:
    _, text = report
    assert "The benchmark failed" not in text
    for module in _available():
        assert f"<!-- module: {module} -->\n## " in text
    get_token = text[text.index("<!-- module: bench_get_token -->") :]
    assert "**SQLite**" in get_token and "| 2,000 |" in get_token
    if os.environ.get("ZIS_TEST_POSTGRES_URL"):
        assert "**PostgreSQL**" in get_token


def test_every_linked_plot_is_a_png(report: tuple[Path, str]) -> None:
    out, text = report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(link).name for link in links} >= {"get_token.png", "memory.png"}
    for link in links:
        path = out / link
        assert path.is_file() and path.stat().st_size > 1000, link
        assert path.read_bytes()[:8] == PNG_MAGIC, link


def test_a_missing_module_is_reported_and_a_failing_one_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boom = types.ModuleType("bench.bench_boom")

    def fails(ctx: Context) -> Section:
        raise RuntimeError("the server went away")

    boom.run = fails  # type: ignore[attr-defined]
    fine = types.ModuleType("bench.bench_fine")
    fine.run = lambda ctx: Section("fine", "all good", [], [Goal("ratio", 0.5, 1.0)])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.bench_boom", boom)
    monkeypatch.setitem(sys.modules, "bench.bench_fine", fine)
    ctx = Context(quick=True, out_dir=tmp_path, tmp=tmp_path)

    outcomes = [bench_run.run_module(name, ctx) for name in ("bench_nowhere", "bench_boom", "bench_fine")]

    assert outcomes[0].missing and outcomes[0].error is None
    assert outcomes[1].error is not None and "RuntimeError: the server went away" in outcomes[1].error
    assert outcomes[2].section is not None and outcomes[2].goals[0].met
    text = bench_run.render(
        outcomes,
        command="python -m bench",
        started=datetime.now(UTC),
        seconds=1.0,
        quick=False,
        machine_rows=[["CPU", "x"]],
        notes=[],
        out=tmp_path,
    )
    assert "| nowhere | not available in this checkout |" in text
    assert "| boom | the benchmark failed (see its section) |" in text
    assert "RuntimeError: the server went away" in text
    assert "| fine | ratio | 0.5x | <= 1x | met |" in text


def test_a_show_row_whose_bare_view_was_outrun_is_not_judged() -> None:
    """A side doing more than the bare view cannot be faster than it on the same server;
    when the figures say so (gunicorn's gthread worker now and then serves even the bare
    view at a third of its rate on this machine), the row is invalid, not "met"."""
    from bench.bench_show import _unsound

    # A sound row of a full run, and the gthread row of one where the bare view stalled.
    assert _unsound({"ours": 4753.0, "bare": 6746.0, "bare+read": 3606.0}) is None
    stalled = _unsound({"ours": 4140.0, "bare": 1856.0, "bare+read": 3515.0})
    assert stalled == "ours and bare+read outran the bare view (1,856 req/s)"
    assert _unsound({"ours": 1077.0, "bare": 1795.0, "bare+read": 2165.0}) == (
        "bare+read outran the bare view (1,795 req/s)"
    )


def test_a_round_one_gthread_worker_served_alone_is_run_again() -> None:
    """The per-worker CPU of real rounds on this machine: a balanced one, and one where
    a worker took all of wrk's keep-alive connections and the other did nothing
    (6,886 against 1,932 req/s for the same bare view)."""
    from bench.bench_show import _lopsided

    assert not _lopsided([2.85, 2.67])
    assert _lopsided([3.2, 0.0])
    assert _lopsided([3.0, 0.3])  # the idle one served a few requests before the race
    assert not _lopsided([2.0, 0.9])  # uneven, but both served the round
    assert not _lopsided([3.1])  # one worker cannot be lopsided
    assert not _lopsided([0.0, 0.0])  # nothing ran: no share to judge


def test_each_section_says_how_much_cpu_time_the_host_took(report: tuple[Path, str]) -> None:
    """On a virtual machine the host's share (steal) moves every figure; the report
    carries it, for the whole run and for each module, wherever Linux counts it."""
    _, text = report
    if steal.cpu_ticks() is None:
        pytest.skip("no steal counter on this machine (/proc/stat)")
    stolen = r"\d+\.\d% of the machine's CPU time stolen by its host"
    assert re.search(rf"- date: .*, \d+ s in all, {stolen}\n", text)
    for module in _available():
        section = text[text.index(f"<!-- module: {module} -->") :]
        assert re.search(rf"\A<!-- module: {module} -->\n## [^\n]+\n\n_\d+ s, {stolen}_\n", section), module
    # And each storm burst, its own last column.
    storm = text[text.index("<!-- module: bench_storm -->") :]
    assert "| app errors | host's steal |" in storm
    assert re.search(r"\| sqlite, cold pools, storm \(expired\) \|[^\n]*\| \d+% \|\n", storm)


def test_the_steal_share_is_read_from_proc_stat(tmp_path: Path) -> None:
    """``/proc/stat``'s first line as proc(5) lays it out: user nice system idle iowait
    irq softirq steal guest guest_nice (guest already counted in user)."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  3427591 5040 449891 10911880 42097 0 79312 780167 120 0\ncpu0 1 2 3 4 5 6 7 8 9\n")
    before = steal.cpu_ticks(stat)
    assert before == (780167, 3427591 + 5040 + 449891 + 10911880 + 42097 + 0 + 79312 + 780167)
    stat.write_text("cpu  3428591 5040 449891 10912380 42097 0 79312 780667 120 0\n")
    after = steal.cpu_ticks(stat)
    # 1,000 ticks user, 500 idle, 500 stolen: a quarter of the time between the readings.
    assert steal.stolen_share(before, after) == pytest.approx(0.25)
    assert steal.stolen_share(after, after) is None  # no time passed: no share
    assert steal.stolen_share(None, after) is None
    for broken in ("", "intr 1 2 3\n", "cpu  1 2 3 4 5 6 7\n", "cpu  1 2 3 4 5 6 7 x\n"):
        stat.write_text(broken)
        assert steal.cpu_ticks(stat) is None, broken
    assert steal.cpu_ticks(tmp_path / "absent") is None
