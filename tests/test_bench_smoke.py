"""The benchmark script keeps working (its numbers are read by people, not asserted here:
speed is judged by the ratios it prints, never by a timed unit test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_get_token_quick_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/bench_get_token.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ours/bare" in proc.stdout and "5,000" in proc.stdout
