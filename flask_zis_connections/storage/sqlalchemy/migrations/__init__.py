"""Alembic migrations for the extension's tables (``flask zis db upgrade``)."""
