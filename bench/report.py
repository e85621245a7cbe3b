"""What every benchmark module hands back to the runner (``python -m bench``).

A module ``bench/<name>.py`` defines ``run(ctx: Context) -> Section``.  It measures its
subject *and* the baselines beside it in the same process and run (interleaved rounds,
medians), so the numbers that matter are ratios taken under the same load; absolute
figures are printed as context only.  ``ctx.quick`` shrinks sizes and durations so the
test suite can run every module in seconds and the suite cannot rot; the goals are only
judged on a full run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Context:
    """Where and how big to run."""

    #: Small sizes and short runs (the test suite's smoke run).
    quick: bool
    #: Where PNG plots go (the runner links them from ``BENCHMARKS.md``).
    out_dir: Path
    #: A scratch directory removed after the run (SQLite files, gunicorn sockets).
    tmp: Path
    #: A throwaway PostgreSQL database (SQLAlchemy URL, psycopg driver); None: SQLite only.
    postgres_url: str | None = None
    #: That server's log file (ERROR lines are counted by the storm), when the runner started it.
    postgres_log: Path | None = None

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Goal:
    """One target: ``measured`` compared with ``target`` (``<=`` or ``>=``)."""

    name: str
    measured: float
    target: float
    op: str = "<="
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.measured <= self.target if self.op == "<=" else self.measured >= self.target

    def line(self) -> str:
        mark = "met" if self.met else "MISSED"
        target = f"{self.op} {self.target:g}{self.unit}"
        return f"{self.name}: {self.measured:.3g}{self.unit} (target {target}) {mark}"


@dataclass
class Section:
    """One module's part of ``BENCHMARKS.md``."""

    title: str
    #: Markdown: what was measured, how, the tables (ratios first), what the numbers mean.
    markdown: str
    plots: list[Path] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
