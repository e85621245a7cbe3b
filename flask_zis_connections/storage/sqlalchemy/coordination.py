"""The SQL hooks for the rows that coordinate flows and refreshes.

Pending flows, verification codes, refresh leases and back-off: every single-winner
step here is one conditional ``UPDATE``/``DELETE``/``INSERT`` whose row count
decides the winner.  On PostgreSQL that is correct under the default READ COMMITTED
(a second writer blocks on the row lock, then re-checks the ``WHERE`` clause against
the committed row); on SQLite writers queue on the file lock (:mod:`.sqlite`).  A
write that is one statement runs outside an explicit transaction
(:meth:`~.engine.SQLBackend._one_statement`): one round trip on PostgreSQL, and SQLite's
write lock held for the statement alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from ...domain import PendingFlow, RefreshBackoff, RefreshState, VerificationCode
from ...timers import start_soon
from ..conflicts import code_conflict, flow_conflict
from ..releases import LeaseReleases, ReleaseListener
from ..times import to_ms
from . import queries as q
from .driver_sql import DriverSQL
from .engine import SQLBackend
from .records import refresh_state_of
from .rows import backoff_from_row, code_from_row, code_row, flow_from_row, flow_row
from .schema import flows, refresh_backoff, refresh_leases, verification_codes

#: The PostgreSQL channel a released lease's key travels on to other processes.
LEASE_CHANNEL: Final = "zis_lease_released"


class CoordinationHooks(SQLBackend):
    """Hooks for flows, verification codes, refresh leases and back-off."""

    # -- flows -----------------------------------------------------------------
    def _add_flow(self, flow: PendingFlow) -> None:
        try:
            with self._one_statement().begin() as conn:
                conn.execute(sa.insert(flows).values(**flow_row(flow)))
        except IntegrityError as exc:
            raise flow_conflict(flow) from exc

    def _get_flow(self, flow_id: str) -> PendingFlow | None:
        rows = self._read(q.FLOW, {"id": flow_id})
        return flow_from_row(rows[0]) if rows else None

    def _flow_transition(
        self, flow_id: str, condition: sa.ColumnElement[bool], **values: Any
    ) -> PendingFlow | None:
        with self._writer.begin() as conn:
            changed = conn.execute(
                sa.update(flows).where(flows.c.id == flow_id, condition).values(**values)
            ).rowcount
            if changed != 1:
                return None
            row = conn.execute(q.FLOW, {"id": flow_id}).one()
        return flow_from_row(row)

    def _bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        f = flows
        return self._flow_transition(
            flow_id,
            sa.and_(f.c.status == "pending", f.c.expires_at > to_ms(now)),
            status="redirected",
            browser_binding_hash=browser_binding_hash,
        )

    def _consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        f = flows
        return self._flow_transition(
            flow_id,
            sa.and_(
                f.c.status == "redirected",
                f.c.browser_binding_hash == browser_binding_hash,
                f.c.expires_at > to_ms(now),
            ),
            status="consumed",
        )

    # -- verification codes ----------------------------------------------------
    def _add_verification_code(self, code: VerificationCode) -> None:
        try:
            with self._one_statement().begin() as conn:
                conn.execute(sa.insert(verification_codes).values(**code_row(code)))
        except IntegrityError as exc:
            raise code_conflict() from exc

    def _consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None:
        params = {"code_hash": code_hash, "integration": integration, "now": to_ms(now)}
        with self._writer.begin() as conn:
            row = conn.execute(q.CODE, params).first()
            # The DELETE's row count, not the SELECT, decides the single winner.
            if row is None or conn.execute(q.DELETE_CODE, params).rowcount != 1:
                return None
        return code_from_row(row)

    # -- refresh lease -----------------------------------------------------------
    def _acquire_lease(self, key: str, owner: str, now: datetime, expires_at: datetime) -> bool:
        """Insert the row, or take it over when it has expired, in one statement.

        ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE expires_at <= now`` on
        PostgreSQL and SQLite: a lost race changes no row - no error, no savepoint, no
        ``duplicate key`` line in the server's log.  On PostgreSQL a concurrent insert
        of the same key waits for the other transaction and then re-checks the
        ``WHERE`` clause against the committed row, so exactly one caller wins.
        """
        taken = self._upsert_lease(key, owner, now, expires_at, None)
        if taken is not None:
            return taken
        # Any other database: take over an expired row, else insert; the primary key
        # refuses a second, inside a savepoint so the transaction survives the refusal.
        params = _lease_params(key, owner, now, expires_at)
        with self._writer.begin() as conn:
            if conn.execute(q.TAKE_EXPIRED_LEASE, params).rowcount == 1:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(refresh_leases).values(
                            key=key, owner=owner, expires_at=params["b_expires_at"]
                        )
                    )
            except IntegrityError:
                return False
        return True

    def _acquire_lease_unless_backed_off(
        self, key: str, owner: str, now: datetime, expires_at: datetime, connection_uuid: str
    ) -> bool:
        """The same upsert, its row selected only while the connection has no running
        back-off: one round trip where a refresher used to read the back-off first."""
        taken = self._upsert_lease(key, owner, now, expires_at, connection_uuid)
        if taken is not None:
            return taken
        return super()._acquire_lease_unless_backed_off(key, owner, now, expires_at, connection_uuid)

    def _upsert_lease(
        self, key: str, owner: str, now: datetime, expires_at: datetime, backoff_of: str | None
    ) -> bool | None:
        """Whether the lease upsert took the lease; None on a database without one."""
        sqls = self._refresh_sql
        sql = sqls.lease_upsert if backoff_of is None else sqls.lease_upsert_unless_backed_off
        if sql is None:
            return None
        with self._one_statement().begin() as conn:
            result = sql.run(conn, _lease_params(key, owner, now, expires_at, backoff_of))
            if self._writer.dialect.name == "sqlite":  # its row count is exact
                return result.rowcount == 1
            return result.first() is not None  # the row it took (RETURNING)

    def _take_lease_and_read(
        self, key: str, owner: str, now: datetime, expires_at: datetime, integration: str, uuid: str
    ) -> tuple[bool, RefreshState | None]:
        """The upsert and the read on one connection, as the driver's own statements:
        in one pipeline through psycopg 3 (:meth:`_pipelined`), one after the other
        through :mod:`sqlite3` (:meth:`_on_sqlite`); elsewhere each on its own.

        The caller holding the lease is what every caller waiting for the refresh waits
        for, and under a burst each millisecond of CPU it needs before the provider call
        is many milliseconds of waiting for the GIL: through the engine the two
        statements took two pool checkouts and SQLAlchemy's execution and result
        machinery, about as much CPU again as the statements themselves.
        """
        upsert = self._refresh_sql.lease_upsert_unless_backed_off
        if upsert is not None:
            lease = _lease_params(key, owner, now, expires_at, uuid)
            read = {"integration": integration, "uuid": uuid}
            if self._pipelines:
                return self._pipelined(upsert, lease, read)
            if self._sqlite_driver:
                return self._on_sqlite(upsert, lease, read)
        return super()._take_lease_and_read(key, owner, now, expires_at, integration, uuid)

    def _pipelined(
        self, upsert: DriverSQL, lease: dict[str, Any], read: dict[str, Any]
    ) -> tuple[bool, RefreshState | None]:
        """PostgreSQL through psycopg 3: one round trip instead of two on the way to the
        provider.

        With no Sync between them they share an implicit transaction, committed at the
        pipeline's end (another process's upsert of the key waits for it, as for any
        uncommitted row).  Under READ COMMITTED the read still takes its snapshot
        after the upsert has taken the row, so it shows every write committed before.
        """
        import psycopg

        state_sql = self._refresh_sql.refresh_state
        with self._on_driver(psycopg.Error, upsert.sql) as driver:
            assert isinstance(driver, psycopg.Connection)
            with driver.pipeline():
                took = driver.execute(upsert.sql, upsert.params(lease))
                state = driver.execute(state_sql.sql, state_sql.params(read))
            taken = took.fetchone() is not None
            rows = state.fetchall()
        return taken, refresh_state_of(rows)

    def _on_sqlite(
        self, upsert: DriverSQL, lease: dict[str, Any], read: dict[str, Any]
    ) -> tuple[bool, RefreshState | None]:
        """SQLite through :mod:`sqlite3`, on one pooled connection outside any
        transaction: the upsert takes the file's write lock and commits within its own
        call (its row count is exact), then the read sees every write committed before
        it and is read to the end, so no statement keeps a WAL snapshot open."""
        import sqlite3

        state_sql = self._refresh_sql.refresh_state
        with self._on_driver(sqlite3.Error, upsert.sql) as driver:
            assert isinstance(driver, sqlite3.Connection)
            taken = driver.execute(upsert.sql, upsert.params(lease)).rowcount == 1
            if driver.in_transaction:
                # Opened by sqlite3 itself: a host's connect hook handed the
                # connection back to its implicit transactions after ours.
                driver.commit()
            rows = driver.execute(state_sql.sql, state_sql.params(read)).fetchall()
        return taken, refresh_state_of(rows)

    @contextlib.contextmanager
    def _on_driver(self, error: type[Exception], sql: str) -> Iterator[Any]:
        """A pooled connection's own driver handle, for statements sent past
        SQLAlchemy's execution.  A driver error is raised as SQLAlchemy's own (which
        the storage reports as unavailable, without ``sql`` or its parameters), and the
        connection, in whatever state the failure left it, is closed rather than pooled
        again."""
        with self._one_statement().connect() as conn:
            try:
                yield conn.connection.driver_connection
            except error as exc:
                conn.invalidate()
                raise DBAPIError.instance(sql, None, exc, error, hide_parameters=True) from exc

    def _renew_lease(self, key: str, owner: str, now: datetime, expires_at: datetime) -> bool:
        params = _lease_params(key, owner, now, expires_at)
        with self._one_statement().begin() as conn:
            return self._refresh_sql.renew_lease.run(conn, params).rowcount == 1

    def _release_lease(self, key: str, owner: str) -> None:
        """Delete the row.  On PostgreSQL the same statement ``NOTIFY``s the waiters of
        other processes with the key (only when a row went), so they hear of it as
        soon as it is committed and never before."""
        params = {"key": key, "owner": owner, "channel": LEASE_CHANNEL}
        with self._one_statement().begin() as conn:
            self._refresh_sql.release_lease.run(conn, params)

    def _listen_for_lease_releases(self, releases: LeaseReleases) -> None:
        """One listener thread per process, started by its first read of a token (or,
        failing that, its first caller about to try a lease); only PostgreSQL through
        psycopg 3 has the channel.  Elsewhere the first call settles that there is
        nothing to start."""
        if self._lease_listening:
            return
        connect = self._listen_connector()
        with self._start_lock:
            if self._lease_listening:
                return
            self._lease_listening = True
        if connect is None:
            return
        listener = ReleaseListener(connect, LEASE_CHANNEL, releases)
        self._listeners.append(listener)
        releases.connecting.set()
        # Its first caller is about to read or lease: it does not wait for the thread.
        start_soon(listener, failed=listener.unavailable)

    def _lease_holder(self, key: str, now: datetime) -> str | None:
        rows = self._read(q.LEASE_HOLDER, {"key": key, "now": to_ms(now)})
        return str(rows[0][0]) if rows else None

    # -- refresh back-off ----------------------------------------------------------
    def _record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, delay: Callable[[int], timedelta]
    ) -> RefreshBackoff:
        b = refresh_backoff
        mine = b.c.connection_uuid == connection_uuid
        with self._writer.begin() as conn:
            row = conn.execute(sa.select(b.c.failures).where(mine)).first()
            failures = 1 if row is None else int(row[0]) + 1
            values: dict[str, Any] = {
                "failures": failures,
                "reason": reason,
                "failed_at": to_ms(now),
                "retry_at": to_ms(now + delay(failures)),
            }
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(b).values(connection_uuid=connection_uuid, **values))
                except IntegrityError:
                    # A concurrent first failure won the insert: count ours on top.
                    values["failures"] = b.c.failures + 1
                    conn.execute(sa.update(b).where(mine).values(**values))
            else:
                conn.execute(sa.update(b).where(mine).values(**values))
            stored = conn.execute(q.BACKOFF, {"uuid": connection_uuid}).one()
        return backoff_from_row(stored)

    def _get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None:
        rows = self._read(q.BACKOFF, {"uuid": connection_uuid})
        return backoff_from_row(rows[0]) if rows else None

    def _clear_refresh_backoff(self, connection_uuid: str) -> None:
        b = refresh_backoff
        with self._one_statement().begin() as conn:
            conn.execute(sa.delete(b).where(b.c.connection_uuid == connection_uuid))


def _lease_params(
    key: str, owner: str, now: datetime, expires_at: datetime, backoff_of: str | None = None
) -> dict[str, Any]:
    """The bound values of the lease statements (``b_`` names: SQLAlchemy reserves the
    column names for ``SET``); ``b_uuid`` only for the upsert refused while connection
    ``backoff_of`` backs off."""
    params: dict[str, Any] = {
        "b_key": key,
        "b_owner": owner,
        "b_now": to_ms(now),
        "b_expires_at": to_ms(expires_at),
    }
    if backoff_of is not None:
        params["b_uuid"] = backoff_of
    return params
