"""What a host needs to test against the extension: the storage contract.

A backend of your own (any :class:`~flask_zis_connections.storage.Storage` subclass)
is correct when it passes the same suite as the shipped ones.  Subclass
:class:`StorageContract` in a test module and give it a ``storage`` fixture that
yields a fresh, empty backend; pytest collects every contract test from the
subclass::

    import pytest
    from flask_zis_connections.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self):
            backend = MyStorage(...)
            backend.create_tables()
            yield backend
            backend.close()

The builders the suite uses (:func:`make_client`, :func:`make_record`,
:func:`make_credential`, :func:`make_flow`, :func:`make_code`, :func:`make_event`,
:func:`race`, the clock :data:`T0`) are here too, for tests of a backend's own extras.
This module needs ``pytest``; importing it defines classes and fixtures and nothing else.
"""

from __future__ import annotations

from .storage.contract import StorageContract
from .storage.contract.builders import (
    SEC,
    T0,
    make_client,
    make_code,
    make_credential,
    make_event,
    make_flow,
    make_record,
    new_id,
    race,
)

__all__ = [
    "SEC",
    "T0",
    "StorageContract",
    "make_client",
    "make_code",
    "make_credential",
    "make_event",
    "make_flow",
    "make_record",
    "new_id",
    "race",
]
