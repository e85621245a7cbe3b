"""The share of the machine's CPU time its host took: *steal*, from Linux's ``/proc/stat``.

On a virtual machine a core can be ready to run while the hypervisor runs something
else; that time is neither the benchmark's nor idle, and it moves every figure measured
meanwhile.  The report carries it for the whole run, each section and each storm burst,
so a figure moved by a busy host says so.
"""

from __future__ import annotations

from pathlib import Path

#: Where Linux counts every core's time by state since boot.
PROC_STAT = Path("/proc/stat")


def cpu_ticks(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """``(stolen, all)`` clock ticks of every core since boot, from ``/proc/stat``'s
    ``cpu`` line; None where there is none (not Linux, or a kernel without ``steal``).

    On a virtual machine *steal* is the time a core was ready to run but its host ran
    something else: work a benchmark waited for that no code of its own caused.  The
    sum is of the first eight states (user, nice, system, idle, iowait, irq, softirq,
    steal); ``guest`` time is already inside ``user``, as proc(5) says.
    """
    try:
        with path.open() as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    try:
        ticks = [int(value) for value in fields[1:9]]
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of all CPU time between two :func:`cpu_ticks` readings that was stolen."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def stolen_text(share: float | None) -> str:
    """The share as the report words it after a duration (empty when unknown)."""
    return "" if share is None else f", {share:.1%} of the machine's CPU time stolen by its host"
