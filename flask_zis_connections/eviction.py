"""Second-chance (CLOCK) eviction for the in-process caches: the token cache and the
show endpoint's answers.

An exact least-recently-used order moves an entry to the end of the order on every
hit, under the cache's lock: most of a token cache hit's cost (0.55 of 0.9 us).  Here a
hit only marks its entry (:attr:`Marked.used`, one attribute store, no lock), and
eviction - run under the cache's lock when something is put - passes over a marked
entry once, unmarking it and moving it to the end, and takes the oldest one that was
not used since.  Room is made before the new entry goes in, so it is never the one
evicted.  A leaf module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(slots=True, eq=False)
class Marked:
    """An entry that remembers whether it was used since eviction last passed it.

    A cache's entry is a slotted dataclass deriving from it (``eq=False``: an entry is
    compared by identity); ``used`` is keyword-only, so it comes after the entry's own
    fields and starts unmarked."""

    used: bool = field(default=False, kw_only=True)


K = TypeVar("K", bound=Hashable)
E = TypeVar("E", bound=Marked)


def make_room(
    entries: OrderedDict[K, E], full: Callable[[], bool], dropped: Callable[[E], None] | None = None
) -> None:
    """Evict from ``entries`` (oldest first) while ``full()``, giving each used entry one
    more round; ``dropped(entry)`` is told of each entry evicted.  A pass unmarks every
    entry it passes over, so this ends within one round of the cache."""
    while entries and full():
        key, entry = entries.popitem(last=False)
        if entry.used:
            entry.used = False
            entries[key] = entry
        elif dropped is not None:
            dropped(entry)
