"""Connection types: bearer_token, basic_auth and api_key connections beside OAuth ones.

They share ``zis_connections`` so that the unique (integration, name) holds across
every type and one keyset lists them together: a ``type`` column (existing rows are
``oauth``), the host a credential may be sent to, the basic-auth user name and the API
key's header; ``oauth_client_uuid`` becomes NULL-able, since only OAuth connections
have a client.  The secret goes in ``access_token_enc``, encrypted like any token.

On SQLite the batch mode rebuilds the table, which would forget the highest id ever
handed out (``sqlite_sequence``): it is put back, so an id is never reused behind a
listing cursor.  Downgrading deletes the connections of the new types: the older
schema cannot hold a connection without an OAuth client.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLE = "zis_connections"


def upgrade() -> None:
    seq = _sqlite_sequence()
    with op.batch_alter_table(_TABLE, schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("type", sa.String(length=16), nullable=False, server_default="oauth"))
        batch_op.add_column(sa.Column("allowed_domain", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("username", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("header_name", sa.String(length=128), nullable=True))
        batch_op.alter_column("oauth_client_uuid", existing_type=sa.String(length=36), nullable=True)
    _restore_sqlite_sequence(seq)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM zis_connections WHERE type <> 'oauth'"))
    seq = _sqlite_sequence()
    with op.batch_alter_table(_TABLE, schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.alter_column("oauth_client_uuid", existing_type=sa.String(length=36), nullable=False)
        batch_op.drop_column("header_name")
        batch_op.drop_column("username")
        batch_op.drop_column("allowed_domain")
        batch_op.drop_column("type")
    _restore_sqlite_sequence(seq)


def _sqlite_sequence() -> int | None:
    """The highest id SQLite has handed out for the table (None elsewhere, or none yet)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return None
    value = bind.execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": _TABLE}
    ).scalar()
    return None if value is None else int(value)


def _restore_sqlite_sequence(seq: int | None) -> None:
    if seq is None:
        return
    bind = op.get_bind()
    params = {"name": _TABLE, "seq": seq}
    updated = bind.execute(
        sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name AND seq < :seq"), params
    ).rowcount
    present = bind.execute(sa.text("SELECT 1 FROM sqlite_sequence WHERE name = :name"), params).first()
    if not updated and present is None:
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"), params)
