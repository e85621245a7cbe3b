"""Run the shipped Alembic migrations against the extension's database.

Hosts that set ``ZIS_CREATE_TABLES = False`` run ``flask zis db upgrade`` at deploy time.
Hosts on Flask-Migrate can instead add ``MIGRATIONS_DIR / "versions"`` (the package's
``storage/sqlalchemy/migrations/versions`` folder) to their ``version_locations``: the
revisions only touch ``zis_*`` tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

#: Beside the schema they build (:mod:`.storage.sqlalchemy.schema`), so the two change together.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "storage" / "sqlalchemy" / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "zis_alembic_version"})
        return ctx.get_current_revision()
