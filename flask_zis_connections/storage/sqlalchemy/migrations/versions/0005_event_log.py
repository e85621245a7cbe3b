"""The event log: ``zis_events``, one row per thing that happened, never a secret.

A 64-bit auto-incrementing id (INTEGER on SQLite, whose row id it then is and which
``sqlite_autoincrement`` keeps from reusing after a purge) is the listing's keyset,
read newest first through the (integration, id) index; ``created_at`` is indexed for
``flask zis purge``.  Downgrading drops the log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "zis_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("connection_name", sa.String(length=128), nullable=True),
        sa.Column("connection_uuid", sa.String(length=36), nullable=True),
        sa.Column("oauth_client_uuid", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zis_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("zis_events", schema=None) as batch_op:
        batch_op.create_index("ix_zis_events_integration_id", ["integration", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_zis_events_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("zis_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_zis_events_created_at"))
        batch_op.drop_index("ix_zis_events_integration_id")
    op.drop_table("zis_events")
