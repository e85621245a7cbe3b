"""The statements the backend runs with bound parameters, built once at import.

Every call then hits SQLAlchemy's compiled cache without rebuilding the expression
tree, which is most of the cost of a read on the hot path (``get_token`` ->
:data:`CONNECTION_BY_NAME`).  Statements whose shape depends on the call (an
optional lease, a list of updates) are built where they run.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import ClauseElement

from .rows import (
    BACKOFF_FIELDS,
    CLIENT_FIELDS,
    CODE_FIELDS,
    CONNECTION_FIELDS,
    EVENT_FIELDS,
    FLOW_FIELDS,
    TOKEN_FIELDS,
    TOKEN_UPDATE_FIELDS,
    columns,
)
from .schema import (
    api_tokens,
    connections,
    events,
    flows,
    oauth_clients,
    refresh_backoff,
    refresh_leases,
    verification_codes,
)

_bp = sa.bindparam

# -- OAuth clients -----------------------------------------------------------------------
_k = oauth_clients
CLIENTS: Final = sa.select(*columns(_k, CLIENT_FIELDS)).order_by(_k.c.id)
CLIENTS_OF: Final = CLIENTS.where(_k.c.integration == _bp("integration"))
CLIENT_BY_NAME: Final = sa.select(*columns(_k, CLIENT_FIELDS)).where(
    _k.c.integration == _bp("integration"), _k.c.name == _bp("name")
)
CLIENT_BY_UUID: Final = sa.select(*columns(_k, CLIENT_FIELDS)).where(
    _k.c.integration == _bp("integration"), _k.c.uuid == _bp("uuid")
)

# -- connections -------------------------------------------------------------------------
_c = connections
CONNECTION_BY_NAME: Final = sa.select(*columns(_c, CONNECTION_FIELDS)).where(
    _c.c.integration == _bp("integration"), _c.c.name == _bp("name")
)
#: ``get_token``'s read: the columns of :class:`~flask_zis_connections.domain.TokenRead`.
TOKEN_READ: Final = sa.select(
    _c.c.type,
    _c.c.access_token_enc,
    _c.c.token_expiry,
    _c.c.updated_at,
    _c.c.needs_reauth,
    _c.c.uuid,
    _c.c.version,
).where(_c.c.integration == _bp("integration"), _c.c.name == _bp("name"))
CONNECTION_BY_UUID: Final = sa.select(*columns(_c, CONNECTION_FIELDS)).where(
    _c.c.integration == _bp("integration"), _c.c.uuid == _bp("uuid")
)
#: The whole-row reads by a row's name or uuid: the statement and the parameter beside
#: ``integration``, by the read's name (the storage's own read connections prepare each
#: under it).
WHOLE_ROWS: Final = {
    "connection_by_name": (CONNECTION_BY_NAME, "name"),
    "connection_by_uuid": (CONNECTION_BY_UUID, "uuid"),
    "client_by_name": (CLIENT_BY_NAME, "name"),
    "client_by_uuid": (CLIENT_BY_UUID, "uuid"),
}
#: The sequence number (``id``) first, then the connection.
CONNECTION_PAGE: Final = (
    sa.select(_c.c.id, *columns(_c, CONNECTION_FIELDS))
    .where(_c.c.integration == _bp("integration"), _c.c.id > _bp("after"))
    .order_by(_c.c.id)
    .limit(_bp("limit"))
)
#: Paging backwards: the rows just before ``before``, nearest first.
CONNECTION_PAGE_BEFORE: Final = (
    sa.select(_c.c.id, *columns(_c, CONNECTION_FIELDS))
    .where(
        _c.c.integration == _bp("integration"),
        _c.c.id > _bp("after"),
        _c.c.id < _bp("before"),
    )
    .order_by(_c.c.id.desc())
    .limit(_bp("limit"))
)
#: Which type holds a name, to say so when a write collides with it.
CONNECTION_TYPE_BY_NAME: Final = sa.select(_c.c.type).where(
    _c.c.integration == _bp("integration"), _c.c.name == _bp("name")
)
CONNECTIONS_DUE: Final = (
    sa.select(*columns(_c, CONNECTION_FIELDS))
    .where(
        _c.c.token_expiry.is_not(None),
        _c.c.token_expiry < _bp("moment"),
        _c.c.needs_reauth.is_(False),
    )
    .order_by(_c.c.token_expiry, _c.c.id)
)
#: Every connection's status, as ``domain.connection_status`` decides it (first match wins).
_status_of = (
    sa.select(
        sa.case(
            (_c.c.needs_reauth.is_(True), "needs_reauth"),
            (refresh_backoff.c.connection_uuid.is_not(None), "refresh_failing"),
            (_c.c.token_expiry.is_(None), "no_expiry"),
            (_c.c.token_expiry < _bp("expiring_before"), "expiring_soon"),
            else_="active",
        ).label("status")
    )
    .select_from(_c.outerjoin(refresh_backoff, refresh_backoff.c.connection_uuid == _c.c.uuid))
    .subquery()
)
#: How many connections are in each status, in one query (grouped outside the CASE, so
#: the bound parameter appears once on every database).
CONNECTION_STATUS_COUNTS: Final = sa.select(_status_of.c.status, sa.func.count()).group_by(
    _status_of.c.status
)

# -- flows and verification codes ----------------------------------------------------------
FLOW: Final = sa.select(*columns(flows, FLOW_FIELDS)).where(flows.c.id == _bp("id"))
_v = verification_codes
_live_code = (
    _v.c.code_hash == _bp("code_hash"),
    _v.c.integration == _bp("integration"),
    _v.c.expires_at > _bp("now"),
)
CODE: Final = sa.select(*columns(_v, CODE_FIELDS)).where(*_live_code)
DELETE_CODE: Final = sa.delete(_v).where(*_live_code)

# -- API tokens --------------------------------------------------------------------------
_t = api_tokens
TOKEN: Final = sa.select(*columns(_t, TOKEN_FIELDS)).where(
    _t.c.token_hash == _bp("token_hash"), _t.c.revoked.is_(False)
)
TOKENS: Final = (
    sa.select(*columns(_t, TOKEN_FIELDS)).where(_t.c.revoked.is_(False)).order_by(_t.c.created_at, _t.c.id)
)
TOKENS_OF: Final = TOKENS.where(_t.c.integration == _bp("integration"))

# -- leases and back-off -----------------------------------------------------------------
_ls = refresh_leases
LEASE_HOLDER: Final = sa.select(_ls.c.owner).where(_ls.c.key == _bp("key"), _ls.c.expires_at > _bp("now"))
#: Bind names differ from the column names: SQLAlchemy reserves those for SET.
TAKE_EXPIRED_LEASE: Final = (
    sa.update(_ls)
    .where(_ls.c.key == _bp("b_key"), _ls.c.expires_at <= _bp("b_now"))
    .values(owner=_bp("b_owner"), expires_at=_bp("b_expires_at"))
)


def _lease_upsert(dialect: str, *, unless_backed_off: bool) -> ClauseElement:
    """Take the lease ``b_key`` for ``b_owner`` until ``b_expires_at`` in one statement:
    insert its row, or take over one that expired by ``b_now`` (``INSERT ... ON
    CONFLICT (key) DO UPDATE ... WHERE``; PostgreSQL and SQLite) - with
    ``unless_backed_off``, only while connection ``b_uuid`` has no back-off running at
    ``b_now``.  On PostgreSQL it returns the row it took (psycopg reports no row count
    for it); on SQLite the row count says (``RETURNING`` needs 3.35)."""
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_ls)
    if unless_backed_off:
        b = refresh_backoff
        backed_off = sa.exists().where(b.c.connection_uuid == _bp("b_uuid"), b.c.retry_at > _bp("b_now"))
        row = sa.select(
            _bp("b_key", type_=_ls.c.key.type),
            _bp("b_owner", type_=_ls.c.owner.type),
            _bp("b_expires_at", type_=_ls.c.expires_at.type),
        ).where(~backed_off)
        ins = ins.from_select(["key", "owner", "expires_at"], row)
    else:
        ins = ins.values(key=_bp("b_key"), owner=_bp("b_owner"), expires_at=_bp("b_expires_at"))
    upsert = ins.on_conflict_do_update(
        index_elements=[_ls.c.key],
        set_={"owner": ins.excluded.owner, "expires_at": ins.excluded.expires_at},
        where=_ls.c.expires_at <= _bp("b_now"),
    )
    return upsert.returning(_ls.c.owner) if dialect == "postgresql" else upsert


#: By (dialect, unless_backed_off), for the dialects with the upsert.
LEASE_UPSERTS: Final = {
    (dialect, backed_off): _lease_upsert(dialect, unless_backed_off=backed_off)
    for dialect in ("postgresql", "sqlite")
    for backed_off in (False, True)
}
RENEW_LEASE: Final = (
    sa.update(_ls)
    .where(_ls.c.key == _bp("b_key"), _ls.c.owner == _bp("b_owner"), _ls.c.expires_at > _bp("b_now"))
    .values(expires_at=_bp("b_expires_at"))
)
RELEASE_LEASE: Final = sa.delete(_ls).where(_ls.c.key == _bp("key"), _ls.c.owner == _bp("owner"))
_released = RELEASE_LEASE.returning(_ls.c.key).cte("released")
#: PostgreSQL: the release, and a ``NOTIFY`` on channel ``channel`` with the key of the
#: row it deleted (none when it deleted none), in one statement.
RELEASE_LEASE_NOTIFY: Final = sa.select(sa.func.pg_notify(_bp("channel"), _released.c.key)).select_from(
    _released
)


def _token_write(*, leased: bool) -> sa.Update:
    """A token write's compare-and-swap: the new token columns (``v_<column>``),
    ``needs_reauth`` and ``version`` written only while the row is at version
    ``w_expected`` - and, ``leased``, while the lease ``w_lease_key`` is still
    ``w_lease_owner``'s at ``w_now``, in the same statement: no gap in which the lease
    could lapse between checking it and writing."""
    where = [
        _c.c.uuid == _bp("w_uuid"),
        _c.c.integration == _bp("w_integration"),
        _c.c.version == _bp("w_expected"),
        _c.c.type == _bp("w_type"),
    ]
    if leased:
        where.append(
            sa.exists().where(
                _ls.c.key == _bp("w_lease_key"),
                _ls.c.owner == _bp("w_lease_owner"),
                _ls.c.expires_at > _bp("w_now"),
            )
        )
    return (
        sa.update(_c)
        .where(*where)
        .values(
            {
                **{name: _bp(f"v_{name}") for name in TOKEN_UPDATE_FIELDS},
                "needs_reauth": _bp("w_needs_reauth"),
                "version": _bp("w_version"),
            }
        )
    )


#: By whether the write holds a refresh lease; with the row it leaves (``RETURNING``,
#: where the dialect can) or without (then read after it in the same transaction).
TOKEN_WRITES: Final = {leased: _token_write(leased=leased) for leased in (False, True)}
TOKEN_WRITES_RETURNING: Final = {
    leased: write.returning(*columns(_c, CONNECTION_FIELDS)) for leased, write in TOKEN_WRITES.items()
}
#: A refresh's write, compiled ahead as the driver's own SQL (:mod:`.driver_sql`).
LEASED_WRITE: Final = TOKEN_WRITES_RETURNING[True]
BACKOFF: Final = sa.select(*columns(refresh_backoff, BACKOFF_FIELDS)).where(
    refresh_backoff.c.connection_uuid == _bp("uuid")
)
#: A refresher's read once it holds the lease: the connection, then its back-off's
#: columns, then its client's (each all NULL when there is none).
REFRESH_STATE: Final = (
    sa.select(
        *columns(_c, CONNECTION_FIELDS),
        *columns(refresh_backoff, BACKOFF_FIELDS),
        *columns(_k, CLIENT_FIELDS),
    )
    .select_from(
        _c.outerjoin(refresh_backoff, refresh_backoff.c.connection_uuid == _c.c.uuid).outerjoin(
            _k, sa.and_(_k.c.uuid == _c.c.oauth_client_uuid, _k.c.integration == _c.c.integration)
        )
    )
    .where(_c.c.integration == _bp("integration"), _c.c.uuid == _bp("uuid"))
)

# -- the event log -----------------------------------------------------------------------
_e = events
#: Newest first; the second one pages on, below a cursor.
EVENTS_OF: Final = (
    sa.select(*columns(_e, EVENT_FIELDS))
    .where(_e.c.integration == _bp("integration"))
    .order_by(_e.c.id.desc())
    .limit(_bp("limit"))
)
EVENTS_BEFORE: Final = EVENTS_OF.where(_e.c.id < _bp("before"))
