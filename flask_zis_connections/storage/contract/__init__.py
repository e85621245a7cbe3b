"""The storage contract: the tests that define a correct :class:`~..base.Storage`.

Each concern's tests are a mixin of their own module; :class:`StorageContract`
joins them.  A backend proves itself by subclassing it with a ``storage`` fixture
(see :mod:`flask_zis_connections.testing`); the extension's own backends run the
very same suite, so whatever holds for one backend holds for all of them.
"""

from __future__ import annotations

import pytest

from ..base import Storage
from .clients import ClientContract
from .connection_types import ConnectionTypeContract
from .connections import ConnectionContract
from .events import EventContract
from .flows import FlowContract
from .leases import LeaseContract
from .maintenance import MaintenanceContract
from .races import RaceContract
from .status import StatusContract


class StorageContract(
    ClientContract,
    ConnectionContract,
    ConnectionTypeContract,
    EventContract,
    FlowContract,
    LeaseContract,
    MaintenanceContract,
    RaceContract,
    StatusContract,
):
    """Every contract test; pytest collects them from a ``Test*`` subclass.

    The subclass overrides the :meth:`storage` fixture to yield a fresh, empty
    backend per test (and release it afterwards).
    """

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError(
            f"{type(self).__name__} runs the storage contract but defines no `storage` fixture: "
            "add a method decorated with @pytest.fixture named `storage` that yields a new, "
            "empty instance of your backend."
        )


__all__ = ["StorageContract"]
