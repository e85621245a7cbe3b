"""The SQL backend: SQLAlchemy 2.x Core on SQLite (the default) or PostgreSQL.

Core, not the ORM: the backend opens its own short transactions on its own engine
and never touches a host application's Flask-SQLAlchemy session, so a host commit
or rollback can neither publish nor lose our writes.

Atomicity without application locks
------------------------------------
Every single-winner step (binding or consuming a flow, taking a verification code,
a lease, a compare-and-swap write) is one conditional ``UPDATE``/``DELETE``/
``INSERT`` whose row count decides the winner.  On PostgreSQL that is correct under
the default READ COMMITTED: a second writer blocks on the row lock and then
re-checks the ``WHERE`` clause against the committed row.  On SQLite write
transactions start with ``BEGIN IMMEDIATE`` (see :mod:`.sqlite`), so writers in any
thread or process queue on the file lock for up to ``busy_timeout`` instead of
failing with "database is locked" halfway through.

The class is put together by concern: :mod:`.engine` (engines, reads, life cycle
and the "database unavailable" message), :mod:`.records` (clients, connections, API
tokens), :mod:`.coordination` (flows, verification codes, leases, back-off),
:mod:`.event_log` (the event log), and here the maintenance that sweeps every table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

import sqlalchemy as sa

from ..times import to_ms
from .coordination import CoordinationHooks
from .event_log import EventHooks
from .records import RecordHooks
from .schema import connections, flows, oauth_clients, refresh_leases, verification_codes

#: Rows per write transaction in :meth:`SQLAlchemyStorage._reencrypt`, so a key
#: rotation never holds SQLite's write lock for long.
_REENCRYPT_BATCH: Final = 200

#: Ciphertext columns per table, with the table's primary key, for ``reencrypt``.
_CIPHERTEXT: Final[Sequence[tuple[sa.Table, str, tuple[str, ...]]]] = (
    (oauth_clients, "id", ("client_secret_enc",)),
    (connections, "id", ("access_token_enc", "refresh_token_enc", "token_response_enc")),
    (flows, "id", ("code_verifier_enc",)),
    (verification_codes, "code_hash", ("raw_callback_params_enc",)),
)


class SQLAlchemyStorage(RecordHooks, CoordinationHooks, EventHooks):
    """Storage in any SQLAlchemy database; tested on SQLite and PostgreSQL (psycopg 3).

    :param url: a SQLAlchemy URL; the backend creates (and :meth:`close` disposes)
        its own engine, with ``hide_parameters`` so ciphertext and hashes never reach
        a log through an error message.
    :param engine_options: extra ``create_engine`` keyword arguments with ``url`` (pool
        sizes for many threads per worker, ``pool_pre_ping``), from ``ZIS_ENGINE_OPTIONS``.
    :param engine: an existing engine instead, e.g. to share a pool.  On SQLite the
        backend installs its connection and ``BEGIN`` hooks on it (see
        :mod:`.sqlite`): other users of that engine then get real transactions
        started by a plain ``BEGIN``, as SQLAlchemy documents.

    An in-memory SQLite URL gives every pooled connection its own empty database;
    use :class:`~flask_zis_connections.storage.memory.MemoryStorage` for an
    in-memory store.
    """

    # -- maintenance -------------------------------------------------------------
    def _reencrypt(self, rotate: Callable[[str], str]) -> int:
        """Rotate every ciphertext, each row guarded by a compare on its old values.

        Rows are read first and rotated outside any transaction (Fernet work is CPU,
        not database time), then written in short batches.  A row whose ciphertext
        changed in between was rewritten by a concurrent writer under the newest key
        and is left alone.
        """
        changed = 0
        for table, pk_name, names in _CIPHERTEXT:
            pk = table.c[pk_name]
            rows = self._read(sa.select(pk, *[table.c[n] for n in names]).order_by(pk), {})
            updates: list[sa.Update] = []
            for row in rows:
                ciphertexts: Sequence[str | None] = row[1:]
                old = {n: v for n, v in zip(names, ciphertexts, strict=True) if v is not None}
                new = {n: rotate(v) for n, v in old.items()}
                if new != old:
                    guard = [table.c[n] == v for n, v in old.items()]
                    updates.append(sa.update(table).where(pk == row[0], *guard).values(**new))
            for start in range(0, len(updates), _REENCRYPT_BATCH):
                with self._writer.begin() as conn:
                    for stmt in updates[start : start + _REENCRYPT_BATCH]:
                        changed += conn.execute(stmt).rowcount
        return changed

    def _purge_expired(self, now: datetime) -> int:
        now_ms = to_ms(now)
        deleted = 0
        with self._writer.begin() as conn:
            for table in (flows, verification_codes, refresh_leases):
                deleted += conn.execute(sa.delete(table).where(table.c.expires_at <= now_ms)).rowcount
        return deleted
