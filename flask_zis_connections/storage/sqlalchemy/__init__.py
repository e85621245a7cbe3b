"""The SQL backend: SQLAlchemy Core tables, their Alembic migrations and the storage."""

from .backend import SQLAlchemyStorage

__all__ = ["SQLAlchemyStorage"]
