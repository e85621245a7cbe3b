"""Per-process state across ``os.fork`` (gunicorn ``--preload``, multiprocessing's fork).

A forked child has one thread: a lock another thread of its parent held stays held in
the child for ever, and what those threads were waiting for is not the child's.  Each
in-process registry (the token cache, the show answers, the bearer-token cache, the
single flights, the lease watchers, the rate-limit windows, the hot reader's
connections, the timer and resolver threads, the storage's listener threads, the Redis
publisher) says what its child must start from; this module runs that in every child,
so no path compares process ids to notice a fork.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


def reset_in_child(owner: _T, reset: Callable[[_T], None]) -> None:
    """Run ``reset(owner)`` in every child forked from now on, while ``owner`` lives.

    The hook holds ``owner`` weakly: hooks of ``os.register_at_fork`` cannot be
    unregistered, and registering must not keep a dropped app's state alive.
    """
    ref = weakref.ref(owner)

    def hook() -> None:
        alive = ref()
        if alive is not None:
            reset(alive)

    os.register_at_fork(after_in_child=hook)


def fresh_lock_in_child(owner: Any) -> None:
    """Give ``owner`` a new ``_lock`` in every child forked from now on, while it lives.

    For a registry whose entries stay valid in a child (they describe storage, not the
    parent's threads): only its lock, which another thread may have held at the fork,
    must not come along.
    """
    reset_in_child(owner, _renew_lock)


def _renew_lock(owner: Any) -> None:
    owner._lock = threading.Lock()
