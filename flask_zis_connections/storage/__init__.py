"""Storage backends: one interface, a SQLAlchemy backend and a thread-safe memory one."""

from .base import Storage
from .memory import MemoryStorage
from .sqlalchemy import SQLAlchemyStorage

__all__ = ["MemoryStorage", "SQLAlchemyStorage", "Storage"]
