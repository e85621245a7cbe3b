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
transactions start with ``BEGIN IMMEDIATE`` (see :func:`_install_sqlite_hooks`), so
writers in any thread or process queue on the file lock for up to ``busy_timeout``
instead of failing with "database is locked" halfway through.

Reads (``get_connection`` above all, the hot path of ``get_token``) run outside an
explicit transaction: on SQLite with no ``BEGIN`` at all, on other databases in
driver-level autocommit, so a lookup costs one round trip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, ProgrammingError

from ..errors import Conflict, InvalidValue, OAuthClientNotFound, StorageUnavailable
from ..models import (
    ApiToken,
    ConnectionRecord,
    Lease,
    OAuthClient,
    Page,
    PendingFlow,
    RefreshBackoff,
    VerificationCode,
    utcnow,
)
from .base import Storage, backoff_delay, client_conflict, parse_cursor, stale_client
from .schema import (
    api_tokens,
    connections,
    dump_json,
    flows,
    from_ms,
    load_json,
    metadata,
    oauth_clients,
    refresh_backoff,
    refresh_leases,
    to_ms,
    verification_codes,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Execution option read by the SQLite ``begin`` hook: the statement that opens a
#: transaction, or ``None`` for none at all (single-statement reads).
_SQLITE_BEGIN: Final = "zis_sqlite_begin"

#: Rows per write transaction in :meth:`SQLAlchemyStorage.reencrypt`, so a key
#: rotation never holds SQLite's write lock for long.
_REENCRYPT_BATCH: Final = 200


# -- SQLite -------------------------------------------------------------------------
def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Configure each new SQLite connection.

    ``isolation_level = None`` stops :mod:`sqlite3` from emitting its own
    (deferred, DML-only) ``BEGIN``, so :func:`_sqlite_on_begin` decides how a
    transaction starts.  ``busy_timeout`` comes first so that switching the file to
    WAL waits for a lock instead of failing; WAL lets readers proceed while one
    writer commits, and foreign keys make ``ON DELETE CASCADE`` work.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """Emit ``BEGIN IMMEDIATE`` for our writes, nothing for our reads.

    Any other user of the same engine (a host that passed its own) gets a plain
    ``BEGIN``: SQLAlchemy's documented recipe for real SQLite transactions.
    """
    begin = conn.get_execution_options().get(_SQLITE_BEGIN, "BEGIN")
    if begin:
        conn.exec_driver_sql(begin)


def _install_sqlite_hooks(engine: Engine) -> None:
    if not event.contains(engine, "connect", _sqlite_on_connect):
        event.listen(engine, "connect", _sqlite_on_connect)
    if not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)


# -- error translation ------------------------------------------------------------------
def _db_errors(
    method: Callable[Concatenate[SQLAlchemyStorage, _P], _R],
) -> Callable[Concatenate[SQLAlchemyStorage, _P], _R]:
    """Turn "the database is not there" into :class:`StorageUnavailable`.

    The HTTP layer maps that to 503 with a message pointing at the configuration,
    instead of a 500 with a driver traceback.
    """

    @functools.wraps(method)
    def wrapper(self: SQLAlchemyStorage, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise _unavailable(exc) from exc

    return wrapper


def _unavailable(exc: DBAPIError) -> StorageUnavailable:
    """A message that says what to check and carries no URL, host or password.

    The driver's own text (which may name the host, and SQLAlchemy's rendering of
    which includes the SQL) stays on ``__cause__`` for the logs.
    """
    kind = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
    return StorageUnavailable(
        f"The connections database is unavailable ({kind}). Check ZIS_DATABASE_URI, "
        "that the database server is running and reachable, and that its tables exist "
        "(ZIS_CREATE_TABLES or the shipped migrations)."
    )



# -- rows <-> models --------------------------------------------------------------------
_CLIENT_COLUMNS: Final = (
    "uuid",
    "integration",
    "name",
    "client_id",
    "client_secret_enc",
    "auth_url",
    "token_url",
    "default_scopes",
    "grant_type",
    "token_endpoint_auth_method",
    "pkce",
    "issuer",
    "authorize_params",
    "offline_access_params",
    "revocation_url",
    "created_by",
    "created_at",
    "updated_at",
    "per_client_callback",
    "version",
)
_CONNECTION_COLUMNS: Final = (
    "uuid",
    "integration",
    "name",
    "oauth_client_uuid",
    "access_token_enc",
    "token_type",
    "refresh_token_enc",
    "token_response_enc",
    "token_expiry",
    "permission_scope",
    "oauth_url_subdomain",
    "created_by",
    "grant_type",
    "needs_reauth",
    "version",
    "created_at",
    "updated_at",
)
_FLOW_COLUMNS: Final = tuple(c.name for c in flows.columns)
_CODE_COLUMNS: Final = tuple(c.name for c in verification_codes.columns)
_TOKEN_COLUMNS: Final = tuple(c.name for c in api_tokens.columns)


def _client_values(client: OAuthClient) -> dict[str, Any]:
    """Every column but the identity (uuid, integration) and ``created_by``/``created_at``."""
    return {
        "name": client.name,
        "client_id": client.client_id,
        "client_secret_enc": client.client_secret_enc,
        "auth_url": client.auth_url,
        "token_url": client.token_url,
        "default_scopes": client.default_scopes,
        "grant_type": client.grant_type,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "pkce": client.pkce,
        "issuer": client.issuer,
        "authorize_params": dump_json(client.authorize_params),
        "offline_access_params": dump_json(client.offline_access_params),
        "revocation_url": client.revocation_url,
        "per_client_callback": client.per_client_callback,
        "updated_at": to_ms(client.updated_at),
    }


def _client_from_row(row: Sequence[Any]) -> OAuthClient:
    (
        uuid,
        integration,
        name,
        client_id,
        client_secret_enc,
        auth_url,
        token_url,
        default_scopes,
        grant_type,
        auth_method,
        pkce,
        issuer,
        authorize_params,
        offline_access_params,
        revocation_url,
        created_by,
        created_at,
        updated_at,
        per_client_callback,
        version,
    ) = row
    return OAuthClient(
        uuid=uuid,
        integration=integration,
        name=name,
        client_id=client_id,
        client_secret_enc=client_secret_enc,
        auth_url=auth_url,
        token_url=token_url,
        default_scopes=default_scopes,
        grant_type=grant_type,
        token_endpoint_auth_method=auth_method,
        pkce=bool(pkce),
        issuer=issuer,
        authorize_params=load_json(authorize_params),
        offline_access_params=load_json(offline_access_params),
        revocation_url=revocation_url,
        created_by=created_by,
        created_at=from_ms(created_at),
        updated_at=from_ms(updated_at),
        per_client_callback=bool(per_client_callback),
        version=version,
    )


def _token_values(record: ConnectionRecord) -> dict[str, Any]:
    """The columns a token write replaces (not identity, version or ``created_at``)."""
    expiry = record.token_expiry
    return {
        "oauth_client_uuid": record.oauth_client_uuid,
        "access_token_enc": record.access_token_enc,
        "token_type": record.token_type,
        "refresh_token_enc": record.refresh_token_enc,
        "token_response_enc": record.token_response_enc,
        "token_expiry": None if expiry is None else to_ms(expiry),
        "permission_scope": record.permission_scope,
        "oauth_url_subdomain": record.oauth_url_subdomain,
        "created_by": record.created_by,
        "grant_type": record.grant_type,
        "updated_at": to_ms(record.updated_at),
    }


def _connection_from_row(row: Sequence[Any]) -> ConnectionRecord:
    # Positional unpacking: this runs on every get_token, keep it lean.
    (
        uuid,
        integration,
        name,
        client_uuid,
        access,
        token_type,
        refresh,
        response,
        expiry,
        scope,
        subdomain,
        created_by,
        grant_type,
        needs_reauth,
        version,
        created_at,
        updated_at,
    ) = row
    return ConnectionRecord(
        uuid=uuid,
        integration=integration,
        name=name,
        oauth_client_uuid=client_uuid,
        access_token_enc=access,
        token_type=token_type,
        refresh_token_enc=refresh,
        token_response_enc=response,
        token_expiry=None if expiry is None else from_ms(expiry),
        permission_scope=scope,
        oauth_url_subdomain=subdomain,
        created_by=created_by,
        grant_type=grant_type,
        needs_reauth=bool(needs_reauth),
        version=version,
        created_at=from_ms(created_at),
        updated_at=from_ms(updated_at),
    )


def _flow_from_row(row: Sequence[Any]) -> PendingFlow:
    values = dict(zip(_FLOW_COLUMNS, row, strict=True))
    values["allow_offline_access"] = bool(values["allow_offline_access"])
    values["created_at"] = from_ms(values["created_at"])
    values["expires_at"] = from_ms(values["expires_at"])
    return PendingFlow(**values)


def _code_from_row(row: Sequence[Any]) -> VerificationCode:
    values = dict(zip(_CODE_COLUMNS, row, strict=True))
    values["created_at"] = from_ms(values["created_at"])
    values["expires_at"] = from_ms(values["expires_at"])
    return VerificationCode(**values)


def _backoff_from_row(row: Sequence[Any]) -> RefreshBackoff:
    connection_uuid, failures, reason, failed_at, retry_at = row
    return RefreshBackoff(
        connection_uuid=connection_uuid, failures=int(failures), reason=reason,
        failed_at=from_ms(failed_at), retry_at=from_ms(retry_at),
    )


def _token_from_row(row: Sequence[Any]) -> ApiToken:
    values = dict(zip(_TOKEN_COLUMNS, row, strict=True))
    values["created_at"] = from_ms(values["created_at"])
    values["revoked"] = bool(values["revoked"])
    return ApiToken(**values)



#: Ciphertext columns per table, with the table's primary key, for ``reencrypt``.
_CIPHERTEXT: Final[Sequence[tuple[sa.Table, str, tuple[str, ...]]]] = (
    (oauth_clients, "id", ("client_secret_enc",)),
    (connections, "id", ("access_token_enc", "refresh_token_enc", "token_response_enc")),
    (flows, "id", ("code_verifier_enc",)),
    (verification_codes, "code_hash", ("raw_callback_params_enc",)),
)


class SQLAlchemyStorage(Storage):
    """Storage in any SQLAlchemy database; tested on SQLite and PostgreSQL (psycopg 3).

    :param url: a SQLAlchemy URL; the backend creates (and :meth:`close` disposes)
        its own engine, with ``hide_parameters`` so ciphertext and hashes never reach
        a log through an error message.
    :param engine_options: extra ``create_engine`` keyword arguments with ``url`` (pool
        sizes for many threads per worker, ``pool_pre_ping``), from ``ZIS_ENGINE_OPTIONS``.
    :param engine: an existing engine instead, e.g. to share a pool.  On SQLite the
        backend installs its connection and ``BEGIN`` hooks on it (see
        :func:`_install_sqlite_hooks`): other users of that engine then get real
        transactions started by a plain ``BEGIN``, as SQLAlchemy documents.

    An in-memory SQLite URL gives every pooled connection its own empty database;
    use :class:`~.memory.MemoryStorage` for an in-memory store.
    """

    def __init__(
        self, url: str | None = None, *, engine: Engine | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if (url is None) == (engine is None):
            raise TypeError("SQLAlchemyStorage() takes exactly one of url= or engine=.")
        if engine is None:
            assert url is not None
            engine = sa.create_engine(url, **{"hide_parameters": True, **(engine_options or {})})
        self.engine: Engine = engine
        if engine.dialect.name == "sqlite":
            _install_sqlite_hooks(engine)
            # Idle pooled connections were opened before the hooks: replace them, or one
            # of them would run our transactions without WAL and BEGIN IMMEDIATE.
            engine.dispose()
            self._reader: Engine = engine.execution_options(**{_SQLITE_BEGIN: None})
            self._writer: Engine = engine.execution_options(**{_SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        else:
            self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
            self._writer = engine

        # Statements built once, so every call hits SQLAlchemy's compiled cache
        # without rebuilding the expression tree.
        c, k = connections, oauth_clients
        bp = sa.bindparam
        conn_cols = [c.c[n] for n in _CONNECTION_COLUMNS]
        client_cols = [k.c[n] for n in _CLIENT_COLUMNS]
        self._sel_conn_by_name = sa.select(*conn_cols).where(
            c.c.integration == bp("integration"), c.c.name == bp("name")
        )
        self._sel_conn_by_uuid = sa.select(*conn_cols).where(
            c.c.integration == bp("integration"), c.c.uuid == bp("uuid")
        )
        self._sel_client_by_name = sa.select(*client_cols).where(
            k.c.integration == bp("integration"), k.c.name == bp("name")
        )
        self._sel_client_by_uuid = sa.select(*client_cols).where(
            k.c.integration == bp("integration"), k.c.uuid == bp("uuid")
        )
        self._sel_clients = sa.select(*client_cols).order_by(k.c.id)
        self._sel_clients_of = self._sel_clients.where(k.c.integration == bp("integration"))
        self._sel_conn_page = (
            sa.select(c.c.id, *conn_cols)
            .where(c.c.integration == bp("integration"), c.c.id > bp("after"))
            .order_by(c.c.id)
            .limit(bp("limit"))
        )
        self._sel_conn_due = (
            sa.select(*conn_cols)
            .where(
                c.c.token_expiry.is_not(None),
                c.c.token_expiry < bp("moment"),
                c.c.needs_reauth.is_(False),
            )
            .order_by(c.c.token_expiry, c.c.id)
        )
        f = flows
        self._sel_flow = sa.select(*[f.c[n] for n in _FLOW_COLUMNS]).where(f.c.id == bp("id"))
        v = verification_codes
        self._sel_code = sa.select(*[v.c[n] for n in _CODE_COLUMNS]).where(
            v.c.code_hash == bp("code_hash"),
            v.c.integration == bp("integration"),
            v.c.expires_at > bp("now"),
        )
        self._del_code = sa.delete(v).where(
            v.c.code_hash == bp("code_hash"),
            v.c.integration == bp("integration"),
            v.c.expires_at > bp("now"),
        )
        t = api_tokens
        token_cols = [t.c[n] for n in _TOKEN_COLUMNS]
        self._sel_token = sa.select(*token_cols).where(
            t.c.token_hash == bp("token_hash"), t.c.revoked.is_(False)
        )
        self._sel_tokens = (
            sa.select(*token_cols).where(t.c.revoked.is_(False)).order_by(t.c.created_at, t.c.id)
        )
        self._sel_tokens_of = self._sel_tokens.where(t.c.integration == bp("integration"))
        self._sel_backoff = sa.select(*refresh_backoff.c).where(
            refresh_backoff.c.connection_uuid == bp("uuid")
        )
        ls = refresh_leases
        self._sel_lease = sa.select(ls.c.owner).where(ls.c.key == bp("key"), ls.c.expires_at > bp("now"))
        # Bind names differ from the column names: SQLAlchemy reserves those for SET.
        self._take_lease = (
            sa.update(ls)
            .where(ls.c.key == bp("b_key"), ls.c.expires_at <= bp("b_now"))
            .values(owner=bp("b_owner"), expires_at=bp("b_expires_at"))
        )

    def __repr__(self) -> str:
        return f"<SQLAlchemyStorage {self.engine.url.render_as_string(hide_password=True)}>"

    # -- life cycle ------------------------------------------------------------
    @_db_errors
    def create_tables(self) -> None:
        """``metadata.create_all``; a second process racing us is tolerated.

        On SQLite the DDL runs in a ``BEGIN IMMEDIATE`` transaction, so concurrent
        start-ups serialize.  PostgreSQL may report a duplicate table or type when
        two processes create at once; the retry then finds everything in place.
        """
        try:
            metadata.create_all(self._writer)
        except (ProgrammingError, IntegrityError):
            metadata.create_all(self._writer)

    def close(self) -> None:
        self.engine.dispose()

    @_db_errors
    def healthcheck(self) -> None:
        with self._reader.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def _read_one(self, stmt: sa.Select[Any], params: Mapping[str, Any]) -> Row[Any] | None:
        return self._read(stmt, params, one=True)  # type: ignore[return-value]

    def _read(
        self, stmt: sa.Select[Any], params: Mapping[str, Any], *, one: bool = False
    ) -> Row[Any] | Sequence[Row[Any]] | None:
        """Run a read, retrying once on a connection the server dropped.

        A pooled PostgreSQL connection can die while idle (server restart, proxy
        timeout); SQLAlchemy invalidates the pool and a retry gets a fresh one.  Reads
        are safe to repeat, writes are not, so only reads retry.
        """
        try:
            with self._reader.connect() as conn:
                result = conn.execute(stmt, params)
                return result.first() if one else result.all()
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self._reader.connect() as conn:
            result = conn.execute(stmt, params)
            return result.first() if one else result.all()

    def _read_all(self, stmt: sa.Select[Any], params: Mapping[str, Any]) -> Sequence[Row[Any]]:
        return self._read(stmt, params)  # type: ignore[return-value]

    # -- OAuth clients ---------------------------------------------------------
    @_db_errors
    def add_client(self, client: OAuthClient) -> OAuthClient:
        values = _client_values(client)
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    sa.insert(oauth_clients).values(
                        uuid=client.uuid,
                        integration=client.integration,
                        created_by=client.created_by,
                        created_at=to_ms(client.created_at),
                        version=1,
                        **values,
                    )
                )
                row = conn.execute(
                    self._sel_client_by_uuid,
                    {"integration": client.integration, "uuid": client.uuid},
                ).one()
        except IntegrityError as exc:
            raise client_conflict(client) from exc
        return _client_from_row(row)

    @_db_errors
    def update_client(self, client: OAuthClient, *, expected_version: int | None = None) -> OAuthClient:
        k = oauth_clients
        where = [k.c.uuid == client.uuid, k.c.integration == client.integration]
        if expected_version is not None:
            where.append(k.c.version == expected_version)
        try:
            with self._writer.begin() as conn:
                changed = conn.execute(
                    sa.update(k).where(*where).values(**_client_values(client), version=k.c.version + 1)
                ).rowcount
                if changed != 1:
                    exists = conn.execute(
                        sa.select(k.c.version).where(*where[:2])
                    ).first()
                    if exists is None:
                        raise OAuthClientNotFound(client.integration, client.uuid)
                    raise stale_client(client)
                row = conn.execute(
                    self._sel_client_by_uuid,
                    {"integration": client.integration, "uuid": client.uuid},
                ).one()
        except IntegrityError as exc:
            raise client_conflict(client) from exc
        return _client_from_row(row)

    @_db_errors
    def get_client(
        self, integration: str, *, uuid: str | None = None, name: str | None = None
    ) -> OAuthClient | None:
        if uuid is not None:
            row = self._read_one(self._sel_client_by_uuid, {"integration": integration, "uuid": uuid})
        elif name is not None:
            row = self._read_one(self._sel_client_by_name, {"integration": integration, "name": name})
        else:
            raise TypeError("get_client() needs uuid= or name=")
        if row is None:
            return None
        client = _client_from_row(row)
        if name is not None and client.name != name:
            return None
        return client

    @_db_errors
    def list_clients(self, integration: str | None = None) -> list[OAuthClient]:
        if integration is None:
            rows = self._read_all(self._sel_clients, {})
        else:
            rows = self._read_all(self._sel_clients_of, {"integration": integration})
        return [_client_from_row(r) for r in rows]

    @_db_errors
    def delete_client(self, integration: str, uuid: str) -> bool:
        k, c = oauth_clients, connections
        with self._writer.begin() as conn:
            found = conn.execute(
                sa.select(k.c.id).where(k.c.uuid == uuid, k.c.integration == integration)
            ).first()
            if found is None:
                return False
            # Explicit, not only ON DELETE CASCADE: a connection made without our
            # PRAGMA foreign_keys=ON would not cascade on SQLite.
            b = refresh_backoff
            conn.execute(
                sa.delete(b).where(
                    b.c.connection_uuid.in_(sa.select(c.c.uuid).where(c.c.oauth_client_uuid == uuid))
                )
            )
            conn.execute(sa.delete(c).where(c.c.oauth_client_uuid == uuid))
            deleted = conn.execute(sa.delete(k).where(k.c.id == found.id)).rowcount
        return deleted == 1

    # -- connections -----------------------------------------------------------
    @_db_errors
    def get_connection(
        self, integration: str, *, name: str | None = None, uuid: str | None = None
    ) -> ConnectionRecord | None:
        if uuid is not None:
            row = self._read_one(self._sel_conn_by_uuid, {"integration": integration, "uuid": uuid})
            if row is None or (name is not None and row.name != name):
                return None
        elif name is not None:
            row = self._read_one(self._sel_conn_by_name, {"integration": integration, "name": name})
            if row is None:
                return None
        else:
            raise TypeError("get_connection() needs name= or uuid=")
        return _connection_from_row(row)

    @_db_errors
    def upsert_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        c = connections
        values = _token_values(record)
        update = (
            sa.update(c)
            .where(c.c.integration == record.integration, c.c.name == record.name)
            .values(**values, needs_reauth=False, version=c.c.version + 1)
        )
        with self._writer.begin() as conn:
            if conn.execute(update).rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            sa.insert(c).values(
                                uuid=record.uuid,
                                integration=record.integration,
                                name=record.name,
                                needs_reauth=False,
                                version=record.version,
                                created_at=to_ms(record.created_at),
                                **values,
                            )
                        )
                except IntegrityError as exc:
                    # Another writer inserted the same name first (PostgreSQL), or the
                    # client or uuid is the problem: find out which.
                    if conn.execute(update).rowcount == 0:
                        raise self._connection_integrity_error(conn, record) from exc
            row = conn.execute(
                self._sel_conn_by_name, {"integration": record.integration, "name": record.name}
            ).one()
        return _connection_from_row(row)

    @_db_errors
    def update_connection(
        self, record: ConnectionRecord, *, expected_version: int,
        lease: Lease | None = None, now: datetime | None = None,
    ) -> ConnectionRecord | None:
        c = connections
        where = [
            c.c.uuid == record.uuid,
            c.c.integration == record.integration,
            c.c.version == expected_version,
        ]
        if lease is not None:
            ls = refresh_leases
            # In the same statement as the compare-and-swap: no gap in which the
            # lease could lapse between checking it and writing.
            where.append(
                sa.exists().where(
                    ls.c.key == lease.key,
                    ls.c.owner == lease.owner,
                    ls.c.expires_at > to_ms(now or utcnow()),
                )
            )
        try:
            with self._writer.begin() as conn:
                changed = conn.execute(
                    sa.update(c)
                    .where(*where)
                    .values(
                        **_token_values(record),
                        needs_reauth=record.needs_reauth,
                        version=expected_version + 1,
                    )
                ).rowcount
                if changed != 1:
                    return None
                row = conn.execute(
                    self._sel_conn_by_uuid,
                    {"integration": record.integration, "uuid": record.uuid},
                ).one()
        except IntegrityError as exc:
            raise OAuthClientNotFound(record.integration, record.oauth_client_uuid) from exc
        return _connection_from_row(row)

    def _connection_integrity_error(
        self, conn: Connection, record: ConnectionRecord
    ) -> OAuthClientNotFound | Conflict:
        k = oauth_clients
        client = conn.execute(sa.select(k.c.id).where(k.c.uuid == record.oauth_client_uuid)).first()
        if client is None:
            return OAuthClientNotFound(record.integration, record.oauth_client_uuid)
        return Conflict(
            f"A connection with uuid {record.uuid!r} already exists under another name. "
            "Generate a new uuid for a new connection."
        )

    @_db_errors
    def delete_connection(self, integration: str, uuid: str) -> bool:
        c = connections
        with self._writer.begin() as conn:
            deleted = conn.execute(
                sa.delete(c).where(c.c.uuid == uuid, c.c.integration == integration)
            ).rowcount
            if deleted:
                b = refresh_backoff
                conn.execute(sa.delete(b).where(b.c.connection_uuid == uuid))
        return deleted == 1

    @_db_errors
    def list_connections(self, integration: str, *, limit: int = 100, cursor: str | None = None) -> Page:
        if limit < 1:
            raise InvalidValue("limit", "must be a positive integer")
        rows = self._read_all(
            self._sel_conn_page,
            {"integration": integration, "after": parse_cursor(cursor), "limit": limit + 1},
        )
        items = [_connection_from_row(r[1:]) for r in rows[:limit]]
        next_cursor = str(rows[limit - 1][0]) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    @_db_errors
    def connections_expiring_before(self, moment: datetime) -> list[ConnectionRecord]:
        rows = self._read_all(self._sel_conn_due, {"moment": to_ms(moment)})
        return [_connection_from_row(r) for r in rows]

    # -- flows -----------------------------------------------------------------
    @_db_errors
    def add_flow(self, flow: PendingFlow) -> None:
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    sa.insert(flows).values(
                        id=flow.id,
                        integration=flow.integration,
                        oauth_client_uuid=flow.oauth_client_uuid,
                        connection_name=flow.connection_name,
                        origin_oauth_redirect_url=flow.origin_oauth_redirect_url,
                        scopes=flow.scopes,
                        redirect_uri=flow.redirect_uri,
                        oauth_url_subdomain=flow.oauth_url_subdomain,
                        allow_offline_access=flow.allow_offline_access,
                        code_verifier_enc=flow.code_verifier_enc,
                        created_by=flow.created_by,
                        admin_id=flow.admin_id,
                        status=flow.status,
                        browser_binding_hash=flow.browser_binding_hash,
                        created_at=to_ms(flow.created_at),
                        expires_at=to_ms(flow.expires_at),
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"A flow with id {flow.id!r} already exists.") from exc

    @_db_errors
    def get_flow(self, flow_id: str) -> PendingFlow | None:
        row = self._read_one(self._sel_flow, {"id": flow_id})
        return None if row is None else _flow_from_row(row)

    def _flow_transition(
        self, flow_id: str, condition: sa.ColumnElement[bool], **values: Any
    ) -> PendingFlow | None:
        with self._writer.begin() as conn:
            changed = conn.execute(
                sa.update(flows).where(flows.c.id == flow_id, condition).values(**values)
            ).rowcount
            if changed != 1:
                return None
            row = conn.execute(self._sel_flow, {"id": flow_id}).one()
        return _flow_from_row(row)

    @_db_errors
    def bind_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
        f = flows
        return self._flow_transition(
            flow_id,
            sa.and_(f.c.status == "pending", f.c.expires_at > to_ms(now)),
            status="redirected",
            browser_binding_hash=browser_binding_hash,
        )

    @_db_errors
    def consume_flow(self, flow_id: str, browser_binding_hash: str, now: datetime) -> PendingFlow | None:
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
    @_db_errors
    def add_verification_code(self, code: VerificationCode) -> None:
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    sa.insert(verification_codes).values(
                        code_hash=code.code_hash,
                        integration=code.integration,
                        connection_uuid=code.connection_uuid,
                        origin_oauth_redirect_url=code.origin_oauth_redirect_url,
                        raw_callback_params_enc=code.raw_callback_params_enc,
                        expires_at=to_ms(code.expires_at),
                        created_at=to_ms(code.created_at),
                    )
                )
        except IntegrityError as exc:
            raise Conflict("That verification code already exists; generate a new one.") from exc

    @_db_errors
    def consume_verification_code(
        self, code_hash: str, integration: str, now: datetime
    ) -> VerificationCode | None:
        params = {"code_hash": code_hash, "integration": integration, "now": to_ms(now)}
        with self._writer.begin() as conn:
            row = conn.execute(self._sel_code, params).first()
            # The DELETE's row count, not the SELECT, decides the single winner.
            if row is None or conn.execute(self._del_code, params).rowcount != 1:
                return None
        return _code_from_row(row)

    # -- API tokens --------------------------------------------------------------
    @_db_errors
    def add_api_token(self, token: ApiToken) -> None:
        try:
            with self._writer.begin() as conn:
                conn.execute(
                    sa.insert(api_tokens).values(
                        id=token.id,
                        token_hash=token.token_hash,
                        integration=token.integration,
                        created_at=to_ms(token.created_at),
                        revoked=token.revoked,
                    )
                )
        except IntegrityError as exc:
            raise Conflict("That API token already exists; issue a new one.") from exc

    @_db_errors
    def get_api_token(self, token_hash: str) -> ApiToken | None:
        row = self._read_one(self._sel_token, {"token_hash": token_hash})
        return None if row is None else _token_from_row(row)

    @_db_errors
    def revoke_api_token(self, token_id_or_hash: str) -> bool:
        t = api_tokens
        with self._writer.begin() as conn:
            matched = conn.execute(
                sa.update(t)
                .where(sa.or_(t.c.id == token_id_or_hash, t.c.token_hash == token_id_or_hash))
                .values(revoked=True)
            ).rowcount
        return matched > 0

    @_db_errors
    def list_api_tokens(self, integration: str | None = None) -> list[ApiToken]:
        if integration is None:
            rows = self._read_all(self._sel_tokens, {})
        else:
            rows = self._read_all(self._sel_tokens_of, {"integration": integration})
        return [_token_from_row(r) for r in rows]

    # -- refresh lease -----------------------------------------------------------
    @_db_errors
    def acquire_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        """Take over an expired row, else insert; the primary key refuses a second.

        The ``INSERT`` runs in a savepoint so that losing the race (an
        ``IntegrityError``) does not abort the surrounding PostgreSQL transaction.
        """
        expires_at = to_ms(now + timedelta(seconds=ttl))
        params = {"b_key": key, "b_owner": owner, "b_now": to_ms(now), "b_expires_at": expires_at}
        with self._writer.begin() as conn:
            if conn.execute(self._take_lease, params).rowcount == 1:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(refresh_leases).values(key=key, owner=owner, expires_at=expires_at)
                    )
            except IntegrityError:
                return False
        return True

    @_db_errors
    def renew_lease(self, key: str, owner: str, ttl: float, now: datetime) -> bool:
        ls = refresh_leases
        with self._writer.begin() as conn:
            renewed = conn.execute(
                sa.update(ls)
                .where(ls.c.key == key, ls.c.owner == owner, ls.c.expires_at > to_ms(now))
                .values(expires_at=to_ms(now + timedelta(seconds=ttl)))
            ).rowcount
        return renewed == 1

    @_db_errors
    def release_lease(self, key: str, owner: str) -> None:
        ls = refresh_leases
        with self._writer.begin() as conn:
            conn.execute(sa.delete(ls).where(ls.c.key == key, ls.c.owner == owner))

    @_db_errors
    def lease_holder(self, key: str, now: datetime) -> str | None:
        row = self._read_one(self._sel_lease, {"key": key, "now": to_ms(now)})
        return None if row is None else str(row[0])

    # -- refresh back-off ----------------------------------------------------------
    @_db_errors
    def record_refresh_failure(
        self, connection_uuid: str, reason: str, now: datetime, *, base: float, cap: float
    ) -> RefreshBackoff:
        b = refresh_backoff
        with self._writer.begin() as conn:
            row = conn.execute(
                sa.select(b.c.failures).where(b.c.connection_uuid == connection_uuid)
            ).first()
            failures = 1 if row is None else int(row[0]) + 1
            retry_at = now + backoff_delay(failures, base=base, cap=cap)
            values = {
                "failures": failures, "reason": reason[:64],
                "failed_at": to_ms(now), "retry_at": to_ms(retry_at),
            }
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(b).values(connection_uuid=connection_uuid, **values))
                except IntegrityError:
                    # A concurrent first failure won the insert: count ours on top.
                    values["failures"] = b.c.failures + 1
                    conn.execute(sa.update(b).where(b.c.connection_uuid == connection_uuid).values(**values))
            else:
                conn.execute(sa.update(b).where(b.c.connection_uuid == connection_uuid).values(**values))
            stored = conn.execute(sa.select(*b.c).where(b.c.connection_uuid == connection_uuid)).one()
        return _backoff_from_row(stored)

    @_db_errors
    def get_refresh_backoff(self, connection_uuid: str) -> RefreshBackoff | None:
        row = self._read_one(self._sel_backoff, {"uuid": connection_uuid})
        return None if row is None else _backoff_from_row(row)

    @_db_errors
    def clear_refresh_backoff(self, connection_uuid: str) -> None:
        b = refresh_backoff
        with self._writer.begin() as conn:
            conn.execute(sa.delete(b).where(b.c.connection_uuid == connection_uuid))

    # -- maintenance -------------------------------------------------------------
    @_db_errors
    def reencrypt(self, rotate: Callable[[str], str]) -> int:
        """Rotate every ciphertext, each row guarded by a compare on its old values.

        Rows are read first and rotated outside any transaction (Fernet work is CPU,
        not database time), then written in short batches.  A row whose ciphertext
        changed in between was rewritten by a concurrent writer under the newest key
        and is left alone.
        """
        changed = 0
        for table, pk_name, columns in _CIPHERTEXT:
            pk = table.c[pk_name]
            rows = self._read_all(sa.select(pk, *[table.c[n] for n in columns]).order_by(pk), {})
            updates: list[sa.Update] = []
            for row in rows:
                ciphertexts: Sequence[str | None] = row[1:]
                old = {n: v for n, v in zip(columns, ciphertexts, strict=True) if v is not None}
                new = {n: rotate(v) for n, v in old.items()}
                if new != old:
                    guard = [table.c[n] == v for n, v in old.items()]
                    updates.append(sa.update(table).where(pk == row[0], *guard).values(**new))
            for start in range(0, len(updates), _REENCRYPT_BATCH):
                with self._writer.begin() as conn:
                    for stmt in updates[start : start + _REENCRYPT_BATCH]:
                        changed += conn.execute(stmt).rowcount
        return changed

    @_db_errors
    def purge_expired(self, now: datetime) -> int:
        now_ms = to_ms(now)
        deleted = 0
        with self._writer.begin() as conn:
            for table in (flows, verification_codes, refresh_leases):
                deleted += conn.execute(sa.delete(table).where(table.c.expires_at <= now_ms)).rowcount
        return deleted
