"""The SQL hooks for long-lived rows: OAuth clients, connections and API tokens.

Writes that must not lose an update are one conditional statement whose row count
decides: an ``UPDATE ... WHERE version = :expected`` for compare-and-swap, an
``UPDATE`` then (in a savepoint) an ``INSERT`` for an upsert, so two writers never
both succeed and a lost race never aborts the surrounding PostgreSQL transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ...domain import ApiToken, ConnectionRecord, Lease, OAuthClient, RefreshState, TokenRead
from ...errors import Conflict, OAuthClientNotFound
from ..conflicts import (
    client_conflict,
    connection_name_conflict,
    connection_uuid_conflict,
    stale_client,
    token_conflict,
)
from ..times import to_ms
from . import queries as q
from .engine import SQLBackend
from .rows import (
    BACKOFF_FIELDS,
    CLIENT_FIELDS,
    CONNECTION_FIELDS,
    backoff_from_row,
    client_from_row,
    client_row,
    client_update,
    connection_from_row,
    connection_row,
    token_from_row,
    token_row,
    token_update,
)
from .schema import api_tokens, connections, oauth_clients, refresh_backoff

_CONNECTION_COLUMNS = len(CONNECTION_FIELDS)
_BACKOFF_COLUMNS = len(BACKOFF_FIELDS)
assert CLIENT_FIELDS[0] == "uuid" and BACKOFF_FIELDS[0] == "connection_uuid"  # never NULL in a row


class RecordHooks(SQLBackend):
    """Hooks for OAuth clients, connections and API tokens."""

    # -- OAuth clients ---------------------------------------------------------
    def _add_client(self, client: OAuthClient) -> OAuthClient:
        try:
            with self._writer.begin() as conn:
                conn.execute(sa.insert(oauth_clients).values(**client_row(client)))
                row = conn.execute(
                    q.CLIENT_BY_UUID, {"integration": client.integration, "uuid": client.uuid}
                ).one()
        except IntegrityError as exc:
            raise client_conflict(client) from exc
        return client_from_row(row)

    def _update_client(self, client: OAuthClient, expected_version: int | None) -> OAuthClient:
        k = oauth_clients
        where = [k.c.uuid == client.uuid, k.c.integration == client.integration]
        if expected_version is not None:
            where.append(k.c.version == expected_version)
        try:
            with self._writer.begin() as conn:
                changed = conn.execute(
                    sa.update(k).where(*where).values(**client_update(client), version=k.c.version + 1)
                ).rowcount
                if changed != 1:
                    if conn.execute(sa.select(k.c.version).where(*where[:2])).first() is None:
                        raise OAuthClientNotFound(client.integration, client.uuid)
                    raise stale_client(client)
                row = conn.execute(
                    q.CLIENT_BY_UUID, {"integration": client.integration, "uuid": client.uuid}
                ).one()
        except IntegrityError as exc:
            raise client_conflict(client) from exc
        return client_from_row(row)

    def _get_client_by_uuid(self, integration: str, uuid: str) -> OAuthClient | None:
        rows = self._whole_rows("client_by_uuid", integration, uuid)
        return client_from_row(rows[0]) if rows else None

    def _get_client_by_name(self, integration: str, name: str) -> OAuthClient | None:
        rows = self._whole_rows("client_by_name", integration, name)
        return client_from_row(rows[0]) if rows else None

    def _list_clients(self, integration: str | None) -> list[OAuthClient]:
        if integration is None:
            rows = self._read(q.CLIENTS, {})
        else:
            rows = self._read(q.CLIENTS_OF, {"integration": integration})
        return [client_from_row(r) for r in rows]

    def _delete_client(self, integration: str, uuid: str) -> bool:
        k, c, b = oauth_clients, connections, refresh_backoff
        with self._writer.begin() as conn:
            found = conn.execute(
                sa.select(k.c.id).where(k.c.uuid == uuid, k.c.integration == integration)
            ).first()
            if found is None:
                return False
            # Explicit, not only ON DELETE CASCADE: a connection made without our
            # PRAGMA foreign_keys=ON would not cascade on SQLite.
            conn.execute(
                sa.delete(b).where(
                    b.c.connection_uuid.in_(sa.select(c.c.uuid).where(c.c.oauth_client_uuid == uuid))
                )
            )
            conn.execute(sa.delete(c).where(c.c.oauth_client_uuid == uuid))
            deleted = conn.execute(sa.delete(k).where(k.c.id == found.id)).rowcount
        return deleted == 1

    # -- connections -----------------------------------------------------------
    def _get_connection_by_uuid(self, integration: str, uuid: str) -> ConnectionRecord | None:
        rows = self._whole_rows("connection_by_uuid", integration, uuid)
        return connection_from_row(rows[0]) if rows else None

    def _get_connection_by_name(self, integration: str, name: str) -> ConnectionRecord | None:
        rows = self._whole_rows("connection_by_name", integration, name)
        return connection_from_row(rows[0]) if rows else None

    def _whole_rows(self, read: str, integration: str, value: str) -> Sequence[Any]:
        """The rows of the whole-row ``read`` (:data:`~.queries.WHOLE_ROWS`) on the hot
        reader's connections, or through the engine when it has none to spare (or none
        at all: an in-memory SQLite database)."""
        hot = self._hot
        rows = None if hot is None else hot.fetch_whole(read, integration, value)
        if rows is None:
            stmt, key = q.WHOLE_ROWS[read]
            rows = self._read(stmt, {"integration": integration, key: value})
        return rows

    def _read_token(self, integration: str, name: str) -> TokenRead | None:
        hot = self._hot
        rows: Sequence[Any] | None = None if hot is None else hot.fetch(integration, name)
        if rows is None:
            rows = self._read(q.TOKEN_READ, {"integration": integration, "name": name})
        if not rows:
            return None
        row: Sequence[Any] = rows[0]
        return TokenRead(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])

    def _read_refresh_state(self, integration: str, uuid: str) -> RefreshState | None:
        rows = self._read_sql(self._refresh_sql.refresh_state, {"integration": integration, "uuid": uuid})
        return refresh_state_of(rows)

    def _add_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        try:
            with self._writer.begin() as conn:
                conn.execute(sa.insert(connections).values(**connection_row(record)))
                row = conn.execute(
                    q.CONNECTION_BY_UUID, {"integration": record.integration, "uuid": record.uuid}
                ).one()
        except IntegrityError as exc:
            with self._writer.begin() as conn:
                raise self._connection_integrity_error(conn, record) from exc
        return connection_from_row(row)

    def _upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        c = connections
        # Only an OAuth row is replaced; a name held by another type fails the insert.
        update = (
            sa.update(c)
            .where(c.c.integration == record.integration, c.c.name == record.name, c.c.type == "oauth")
            .values(**token_update(record), needs_reauth=False, version=c.c.version + 1)
        )
        with self._writer.begin() as conn:
            if conn.execute(update).rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(c).values({**connection_row(record), "needs_reauth": False}))
                except IntegrityError as exc:
                    # Another writer inserted the same name first (PostgreSQL), or the
                    # client or uuid is the problem: find out which.
                    if conn.execute(update).rowcount == 0:
                        raise self._connection_integrity_error(conn, record) from exc
            row = conn.execute(
                q.CONNECTION_BY_NAME, {"integration": record.integration, "name": record.name}
            ).one()
        return connection_from_row(row)

    def _connection_integrity_error(
        self, conn: Connection, record: ConnectionRecord
    ) -> OAuthClientNotFound | Conflict:
        """Which rule an insert broke: the client's foreign key, the name, or the uuid."""
        k, client_uuid = oauth_clients, record.oauth_client_uuid
        if (
            client_uuid is not None
            and conn.execute(sa.select(k.c.id).where(k.c.uuid == client_uuid)).first() is None
        ):
            return OAuthClientNotFound(record.integration, client_uuid)
        held = conn.execute(
            q.CONNECTION_TYPE_BY_NAME, {"integration": record.integration, "name": record.name}
        ).first()
        if held is not None:
            return connection_name_conflict(record, held[0])
        return connection_uuid_conflict(record)

    def _update_connection(
        self, record: ConnectionRecord, expected_version: int, lease: Lease | None, now: datetime
    ) -> ConnectionRecord | None:
        params = _token_write_params(record, expected_version, lease, now)
        leased = lease is not None
        try:
            if self._writer.dialect.update_returning:  # PostgreSQL; SQLite from 3.35
                # The write and the row it leaves in one statement outside a transaction:
                # on a refresh's path this is the round trip every waiting caller waits
                # for (and on SQLite the write lock is held until that row is fetched,
                # not across BEGIN, UPDATE, SELECT and COMMIT).  A refresh's write is
                # compiled ahead (:data:`~.queries.LEASED_WRITE`).
                leased_write = self._refresh_sql.leased_write
                with self._one_statement().begin() as conn:
                    if leased and leased_write is not None:
                        stored = leased_write.run(conn, params).first()
                    else:
                        stored = conn.execute(q.TOKEN_WRITES_RETURNING[leased], params).first()
                return None if stored is None else connection_from_row(stored)
            with self._writer.begin() as conn:
                if conn.execute(q.TOKEN_WRITES[leased], params).rowcount != 1:
                    return None
                row = conn.execute(
                    q.CONNECTION_BY_UUID, {"integration": record.integration, "uuid": record.uuid}
                ).one()
        except IntegrityError as exc:
            raise OAuthClientNotFound(record.integration, str(record.oauth_client_uuid)) from exc
        return connection_from_row(row)

    def _delete_connection(self, integration: str, uuid: str) -> bool:
        c, b = connections, refresh_backoff
        with self._writer.begin() as conn:
            deleted = conn.execute(
                sa.delete(c).where(c.c.uuid == uuid, c.c.integration == integration)
            ).rowcount
            if deleted:
                conn.execute(sa.delete(b).where(b.c.connection_uuid == uuid))
        return deleted == 1

    def _list_connections(
        self, integration: str, after: int, limit: int, before: int | None = None
    ) -> list[tuple[int, ConnectionRecord]]:
        params = {"integration": integration, "after": after, "limit": limit}
        if before is None:
            rows = self._read(q.CONNECTION_PAGE, params)
        else:
            rows = self._read(q.CONNECTION_PAGE_BEFORE, {**params, "before": before})
        return [(row[0], connection_from_row(row[1:])) for row in rows]

    def _connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]:
        return [connection_from_row(r) for r in self._read(q.CONNECTIONS_DUE, {"moment": to_ms(moment)})]

    def _connection_status_counts(self, expiring_before: datetime) -> dict[str, int]:
        rows = self._read(q.CONNECTION_STATUS_COUNTS, {"expiring_before": to_ms(expiring_before)})
        counts: dict[str, int] = {}
        for row in rows:
            status, count = tuple(row)  # (status, count)
            counts[str(status)] = int(count)
        return counts

    # -- API tokens --------------------------------------------------------------
    def _add_api_token(self, token: ApiToken) -> None:
        try:
            with self._one_statement().begin() as conn:
                conn.execute(sa.insert(api_tokens).values(**token_row(token)))
        except IntegrityError as exc:
            raise token_conflict() from exc

    def _get_api_token(self, token_hash: str) -> ApiToken | None:
        rows = self._read(q.TOKEN, {"token_hash": token_hash})
        return token_from_row(rows[0]) if rows else None

    def _revoke_api_token(self, token_id_or_hash: str) -> bool:
        t = api_tokens
        with self._one_statement().begin() as conn:
            matched = conn.execute(
                sa.update(t)
                .where(sa.or_(t.c.id == token_id_or_hash, t.c.token_hash == token_id_or_hash))
                .values(revoked=True)
            ).rowcount
        return matched > 0

    def _list_api_tokens(self, integration: str | None) -> list[ApiToken]:
        if integration is None:
            rows = self._read(q.TOKENS, {})
        else:
            rows = self._read(q.TOKENS_OF, {"integration": integration})
        return [token_from_row(r) for r in rows]


def refresh_state_of(rows: Sequence[Any]) -> RefreshState | None:
    """The :class:`~flask_zis_connections.domain.RefreshState` in the rows of the
    refresh's read (``REFRESH_STATE``: the connection's columns, its back-off's, its
    client's); None when there is no row."""
    if not rows:
        return None
    row: Sequence[Any] = rows[0]
    backoff_at, client_at = _CONNECTION_COLUMNS, _CONNECTION_COLUMNS + _BACKOFF_COLUMNS
    # The outer joins' key columns are NULL exactly when there is no such row.
    backoff = None if row[backoff_at] is None else backoff_from_row(row[backoff_at:client_at])
    client = None if row[client_at] is None else client_from_row(row[client_at:])
    return RefreshState(connection_from_row(row[:backoff_at]), backoff, client)


def _token_write_params(
    record: ConnectionRecord, expected_version: int, lease: Lease | None, now: datetime
) -> dict[str, Any]:
    """The bound values of a token write (:data:`~.queries.TOKEN_WRITES`); the lease's
    only with ``lease``."""
    params = {f"v_{name}": value for name, value in token_update(record).items()}
    params.update(
        w_uuid=record.uuid,
        w_integration=record.integration,
        w_expected=expected_version,
        w_type=record.type,
        w_needs_reauth=record.needs_reauth,
        w_version=expected_version + 1,
    )
    if lease is not None:
        params.update(w_lease_key=lease.key, w_lease_owner=lease.owner, w_now=to_ms(now))
    return params
