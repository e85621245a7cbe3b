"""Where a refresh storm's time goes: marks at the refresh's steps in every worker.

``python -m bench.bench_storm --trace`` runs the storm benchmark with these marks on:
the storm app installs a :class:`Tracer` in each gunicorn worker (``STORM_TRACE_DIR``),
each worker writes its marks there when it exits, and :func:`storm_rows` reads, for
every storm, the path of the one request that held the lease (its request's start,
authentication, the lease asked for and taken, the provider call and its answer, the
write and the release) and when each worker's waiters got their answers after it -
the two halves a storm's p50 is made of - and the garbage collector's pauses in the
burst.

The marks wrap the extension's own steps by name, so a renamed step fails at
start-up rather than leaving a silent hole.  Each costs about a microsecond, and the
burst's timings move with them: a traced run is for reading where the time goes, not
for the figures of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (module, class or None for a module-level function, attribute, step name).
STEPS: tuple[tuple[str, str | None, str, str], ...] = (
    ("flask", "Flask", "wsgi_app", "request"),
    ("flask_zis_connections.api.connections", None, "auth", "auth"),
    ("flask_zis_connections.storage.base", "Storage", "take_lease_and_read", "lease"),
    ("flask_zis_connections.provider_client", "ProviderClient", "refresh", "provider"),
    ("flask_zis_connections.storage.base", "Storage", "update_connection", "write"),
    ("flask_zis_connections.storage.base", "Storage", "release_lease", "release"),
)

Mark = tuple[float, int, str]  # (time.monotonic(), thread ident, "step>" or "step<")


class Tracer:
    """Marks before and after each step of :data:`STEPS`, and around each collection
    of the garbage collector, in this process."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.marks: list[Mark] = []
        self._undo: list[Callable[[], None]] = []

    def install(self) -> Tracer:
        """Wrap every step; a step that cannot be found undoes the others and raises."""
        try:
            for module_name, owner_name, attr, step in STEPS:
                module = importlib.import_module(module_name)
                owner = module if owner_name is None else getattr(module, owner_name)
                self._wrap(owner, attr, step)
        except BaseException:
            self.uninstall()
            raise
        gc.callbacks.append(self._collected)
        self._undo.append(lambda: gc.callbacks.remove(self._collected))
        return self

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def dump(self) -> Path:
        """Write the marks to ``<directory>/<pid>.json``."""
        path = self.directory / f"{os.getpid()}.json"
        path.write_text(json.dumps(self.marks))
        return path

    def _wrap(self, owner: Any, attr: str, step: str) -> None:
        original = owner.__dict__[attr]  # a KeyError names a step that moved
        marks, clock, ident = self.marks, time.monotonic, threading.get_ident
        before, after = f"{step}>", f"{step}<"

        def traced(*args: Any, **kwargs: Any) -> Any:
            marks.append((clock(), ident(), before))
            try:
                return original(*args, **kwargs)
            finally:
                marks.append((clock(), ident(), after))

        setattr(owner, attr, traced)
        self._undo.append(lambda: setattr(owner, attr, original))

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        self.marks.append((time.monotonic(), threading.get_ident(), "gc>" if phase == "start" else "gc<"))


def read_marks(directory: Path) -> dict[int, list[Mark]]:
    """Every worker's marks, by process id."""
    return {
        int(path.stem): [(float(t), int(tid), str(label)) for t, tid, label in json.loads(path.read_text())]
        for path in sorted(directory.glob("*.json"))
    }


#: The holder's steps, in the order it passes them, and the mark that ends each.
HOLDER_STEPS = (
    ("request in", "request>"),
    ("authenticated", "auth<"),
    ("lease asked", "lease>"),
    ("lease taken", "lease<"),
    ("provider called", "provider>"),
    ("answered", "provider<"),
    ("written", "write<"),
    ("released", "release<"),
)


@dataclass
class StormTrace:
    """One storm as its marks tell it; times in seconds from the burst's release."""

    #: The holder's steps (:data:`HOLDER_STEPS`), those it passed.
    holder: dict[str, float]
    #: When each worker's median request ended, for the workers where one ended, earliest first.
    answered: list[float]
    #: Collections of the garbage collector in the burst, in seconds each.
    pauses: list[float]


def storm_trace(
    marks: dict[int, list[Mark]], released: float, until: float, pids: Iterable[int]
) -> StormTrace | None:
    """The storm released at ``released`` (monotonic) on the workers ``pids``, from
    the marks made before ``until``; None when no request in it called the provider."""
    window = {pid: [m for m in marks.get(pid, []) if released <= m[0] < until] for pid in set(pids)}
    calls = sorted((m[0], pid, m[1]) for pid, ms in window.items() for m in ms if m[2] == "provider>")
    if not calls:
        return None
    _, holder_pid, thread = calls[0]
    own = [m for m in window[holder_pid] if m[1] == thread]
    started = max((i for i, m in enumerate(own) if m[2] == "request>" and m[0] <= calls[0][0]), default=0)
    holder: dict[str, float] = {}
    for step, label in HOLDER_STEPS:
        found = next((m[0] for m in own[started:] if m[2] == label), None)
        if found is not None:
            holder[step] = found - released
    answered = []
    pauses = []
    for ms in window.values():
        ends = [m[0] - released for m in ms if m[2] == "request<"]
        if ends:
            answered.append(statistics.median(ends))
        pauses += _pauses(ms)
    return StormTrace(holder, sorted(answered), pauses)


def _pauses(marks: Iterable[Mark]) -> list[float]:
    open_: dict[int, float] = {}
    out = []
    for t, tid, label in marks:
        if label == "gc>":
            open_[tid] = t
        elif label == "gc<" and tid in open_:
            out.append(t - open_.pop(tid))
    return out


def storm_rows(traces: list[tuple[str, StormTrace]]) -> tuple[list[str], list[list[str]]]:
    """A table of ``(round label, trace)``: the holder's steps, then each worker's median
    answer, then the collector's pauses over 2 ms in the burst (ms)."""
    header = ["storm", *(step for step, _ in HOLDER_STEPS), "workers' median answer", "GC pauses > 2 ms"]
    rows = []
    for label, trace in traces:
        at = trace.holder
        steps = [f"{at[step] * 1000:.0f}" if step in at else "-" for step, _ in HOLDER_STEPS]
        long = sorted((p for p in trace.pauses if p > 0.002), reverse=True)
        rows.append(
            [
                label,
                *steps,
                "/".join(f"{a * 1000:.0f}" for a in trace.answered),
                "/".join(f"{p * 1000:.0f}" for p in long) or "-",
            ]
        )
    return header, rows
