"""The SQL schema, as SQLAlchemy Core tables (the source of the Alembic migrations).

Choices made for portability between SQLite and PostgreSQL:

* Every datetime is a ``BigInteger`` of epoch **milliseconds**
  (:func:`~flask_zis_connections.storage.times.to_ms` and ``from_ms`` convert at the
  boundary, in :mod:`.rows`).  Integers compare and index the same everywhere and
  SQLite has no timezone-aware type to get wrong.
* Mappings are JSON text written by :func:`.rows.dump_json`, not a ``JSON`` column type,
  so migrations stay plain and the values compare byte-for-byte.
* Tables whose model has a ``uuid`` get an integer surrogate key ``id`` as well:
  connections are listed with keyset pagination on it.  ``sqlite_autoincrement``
  keeps SQLite from reusing the highest id after a delete, which would let a new
  row slip behind an issued cursor.
* Constraints and indexes are named by :data:`NAMING_CONVENTION`, because Alembic
  can only alter or drop what has a stable name.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import (
    false as sa_false,
)

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


oauth_clients = Table(
    "zis_oauth_clients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("integration", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("client_id", Text, nullable=False),
    Column("client_secret_enc", Text, nullable=True),
    Column("auth_url", Text, nullable=True),
    Column("token_url", Text, nullable=False),
    Column("default_scopes", Text, nullable=False, default=""),
    Column("grant_type", String(32), nullable=False),
    Column("token_endpoint_auth_method", String(32), nullable=False),
    Column("pkce", Boolean, nullable=False),
    Column("issuer", Text, nullable=True),
    Column("authorize_params", Text, nullable=False, default="{}"),
    Column("offline_access_params", Text, nullable=False, default="{}"),
    Column("revocation_url", Text, nullable=True),
    Column("created_by", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("per_client_callback", Boolean, nullable=False, server_default=sa_false()),
    Column("version", Integer, nullable=False, server_default="1"),
    #: Provider quirks (``ProviderQuirks``) as JSON: one column, so a new quirk needs no migration.
    Column("quirks", Text, nullable=False, server_default="{}"),
    UniqueConstraint("integration", "name"),
    sqlite_autoincrement=True,
)

connections = Table(
    "zis_connections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("integration", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column(
        "oauth_client_uuid",
        String(36),
        ForeignKey(oauth_clients.c.uuid, ondelete="CASCADE"),
        nullable=True,  # NULL for the credential types, which have no OAuth client
        index=True,
    ),
    Column("access_token_enc", Text, nullable=False),
    Column("token_type", String(40), nullable=False),
    Column("refresh_token_enc", Text, nullable=True),
    Column("token_response_enc", Text, nullable=True),
    Column("token_expiry", BigInteger, nullable=True, index=True),
    Column("permission_scope", Text, nullable=True),
    Column("oauth_url_subdomain", Text, nullable=True),
    Column("created_by", Text, nullable=True),
    Column("grant_type", String(32), nullable=False),
    Column("needs_reauth", Boolean, nullable=False, default=False),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("metadata", Text, nullable=False, server_default="{}"),
    Column("refresh_token_expiry", BigInteger, nullable=True),
    #: Every type in one table: the unique (integration, name) then holds across types,
    #: and one keyset on ``id`` lists them all together.
    Column("type", String(16), nullable=False, server_default="oauth"),
    Column("allowed_domain", String(255), nullable=True),
    Column("username", Text, nullable=True),
    Column("header_name", String(128), nullable=True),
    UniqueConstraint("integration", "name"),
    sqlite_autoincrement=True,
)

flows = Table(
    "zis_flows",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("integration", String(64), nullable=False),
    Column("oauth_client_uuid", String(36), nullable=False),
    Column("connection_name", String(128), nullable=False),
    Column("origin_oauth_redirect_url", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("oauth_url_subdomain", Text, nullable=True),
    Column("allow_offline_access", Boolean, nullable=False),
    Column("code_verifier_enc", Text, nullable=True),
    Column("created_by", Text, nullable=True),
    Column("admin_id", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("browser_binding_hash", String(128), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

verification_codes = Table(
    "zis_verification_codes",
    metadata,
    Column("code_hash", String(128), primary_key=True),
    Column("integration", String(64), nullable=False),
    Column("connection_uuid", String(36), nullable=False),
    Column("origin_oauth_redirect_url", Text, nullable=False),
    Column("raw_callback_params_enc", Text, nullable=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
)

api_tokens = Table(
    "zis_api_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("integration", String(64), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

refresh_leases = Table(
    "zis_refresh_leases",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

#: Failed refreshes per connection (exponential back-off shared by every process).
#: Kept out of ``zis_connections`` so recording a failure never touches the row the
#: hot path reads, nor its version.
refresh_backoff = Table(
    "zis_refresh_backoff",
    metadata,
    Column("connection_uuid", String(36), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("failed_at", BigInteger, nullable=False),
    Column("retry_at", BigInteger, nullable=False),
)

#: The event log: one row per thing that happened to an integration's connections,
#: clients and API tokens, never a secret.  Listed newest first by ``id`` within an
#: integration (the index), trimmed by ``created_at``.  A 64-bit id, since a busy log
#: outgrows 32 bits long before the other tables would (SQLite's INTEGER is 64-bit
#: already, and only ``INTEGER PRIMARY KEY`` is its auto-incrementing row id).
events = Table(
    "zis_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("integration", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("connection_name", String(128), nullable=True),
    Column("connection_uuid", String(36), nullable=True),
    Column("oauth_client_uuid", String(36), nullable=True),
    Column("actor", String(255), nullable=False),
    Column("detail", Text, nullable=False, server_default="{}"),
    Column("created_at", BigInteger, nullable=False, index=True),
    Index("ix_zis_events_integration_id", "integration", "id"),
    sqlite_autoincrement=True,
)

__all__ = [
    "NAMING_CONVENTION",
    "api_tokens",
    "connections",
    "events",
    "flows",
    "metadata",
    "oauth_clients",
    "refresh_backoff",
    "refresh_leases",
    "verification_codes",
]
