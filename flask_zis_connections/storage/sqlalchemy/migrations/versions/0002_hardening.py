"""Refresh back-off table, OAuth client version and per-client callback, flow admin binding.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "zis_refresh_backoff",
        sa.Column("connection_uuid", sa.String(length=36), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("failed_at", sa.BigInteger(), nullable=False),
        sa.Column("retry_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("connection_uuid", name=op.f("pk_zis_refresh_backoff")),
    )
    with op.batch_alter_table("zis_oauth_clients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("per_client_callback", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("zis_flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("admin_id", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("zis_flows", schema=None) as batch_op:
        batch_op.drop_column("admin_id")
    with op.batch_alter_table("zis_oauth_clients", schema=None) as batch_op:
        batch_op.drop_column("version")
        batch_op.drop_column("per_client_callback")
    op.drop_table("zis_refresh_backoff")
