"""Initial schema: every zis_* table as storage/sqlalchemy/schema.py declares it.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "zis_api_tokens",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zis_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_zis_api_tokens_token_hash")),
    )
    with op.batch_alter_table("zis_api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_zis_api_tokens_integration"), ["integration"], unique=False)

    op.create_table(
        "zis_flows",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("oauth_client_uuid", sa.String(length=36), nullable=False),
        sa.Column("connection_name", sa.String(length=128), nullable=False),
        sa.Column("origin_oauth_redirect_url", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("oauth_url_subdomain", sa.Text(), nullable=True),
        sa.Column("allow_offline_access", sa.Boolean(), nullable=False),
        sa.Column("code_verifier_enc", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("browser_binding_hash", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zis_flows")),
    )
    with op.batch_alter_table("zis_flows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_zis_flows_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "zis_oauth_clients",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("client_secret_enc", sa.Text(), nullable=True),
        sa.Column("auth_url", sa.Text(), nullable=True),
        sa.Column("token_url", sa.Text(), nullable=False),
        sa.Column("default_scopes", sa.Text(), nullable=False),
        sa.Column("grant_type", sa.String(length=32), nullable=False),
        sa.Column("token_endpoint_auth_method", sa.String(length=32), nullable=False),
        sa.Column("pkce", sa.Boolean(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("authorize_params", sa.Text(), nullable=False),
        sa.Column("offline_access_params", sa.Text(), nullable=False),
        sa.Column("revocation_url", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zis_oauth_clients")),
        sa.UniqueConstraint("integration", "name", name=op.f("uq_zis_oauth_clients_integration_name")),
        sa.UniqueConstraint("uuid", name=op.f("uq_zis_oauth_clients_uuid")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "zis_refresh_leases",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_zis_refresh_leases")),
    )
    with op.batch_alter_table("zis_refresh_leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_zis_refresh_leases_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "zis_verification_codes",
        sa.Column("code_hash", sa.String(length=128), nullable=False),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("connection_uuid", sa.String(length=36), nullable=False),
        sa.Column("origin_oauth_redirect_url", sa.Text(), nullable=False),
        sa.Column("raw_callback_params_enc", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_zis_verification_codes")),
    )
    with op.batch_alter_table("zis_verification_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_zis_verification_codes_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "zis_connections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("oauth_client_uuid", sa.String(length=36), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=False),
        sa.Column("token_type", sa.String(length=40), nullable=False),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("token_response_enc", sa.Text(), nullable=True),
        sa.Column("token_expiry", sa.BigInteger(), nullable=True),
        sa.Column("permission_scope", sa.Text(), nullable=True),
        sa.Column("oauth_url_subdomain", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("grant_type", sa.String(length=32), nullable=False),
        sa.Column("needs_reauth", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["oauth_client_uuid"],
            ["zis_oauth_clients.uuid"],
            name=op.f("fk_zis_connections_oauth_client_uuid_zis_oauth_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zis_connections")),
        sa.UniqueConstraint("integration", "name", name=op.f("uq_zis_connections_integration_name")),
        sa.UniqueConstraint("uuid", name=op.f("uq_zis_connections_uuid")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("zis_connections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_zis_connections_oauth_client_uuid"), ["oauth_client_uuid"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_zis_connections_token_expiry"), ["token_expiry"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("zis_connections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_zis_connections_token_expiry"))
        batch_op.drop_index(batch_op.f("ix_zis_connections_oauth_client_uuid"))

    op.drop_table("zis_connections")
    with op.batch_alter_table("zis_verification_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_zis_verification_codes_expires_at"))

    op.drop_table("zis_verification_codes")
    with op.batch_alter_table("zis_refresh_leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_zis_refresh_leases_expires_at"))

    op.drop_table("zis_refresh_leases")
    op.drop_table("zis_oauth_clients")
    with op.batch_alter_table("zis_flows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_zis_flows_expires_at"))

    op.drop_table("zis_flows")
    with op.batch_alter_table("zis_api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_zis_api_tokens_integration"))

    op.drop_table("zis_api_tokens")
