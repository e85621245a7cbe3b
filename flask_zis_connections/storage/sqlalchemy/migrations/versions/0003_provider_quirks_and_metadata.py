"""Provider quirks on OAuth clients; metadata and refresh-token expiry on connections.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("zis_oauth_clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quirks", sa.Text(), nullable=False, server_default="{}"))
    with op.batch_alter_table("zis_connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metadata", sa.Text(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("refresh_token_expiry", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("zis_connections", schema=None) as batch_op:
        batch_op.drop_column("refresh_token_expiry")
        batch_op.drop_column("metadata")
    with op.batch_alter_table("zis_oauth_clients", schema=None) as batch_op:
        batch_op.drop_column("quirks")
