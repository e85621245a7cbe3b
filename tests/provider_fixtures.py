"""Pytest fixtures for the live demo OAuth provider.

Load them from ``tests/conftest.py`` with ``from .provider_fixtures import *`` (or list this
module in ``pytest_plugins``). Clients are not pre-registered: each test states the client
it needs, e.g. ``provider.register_client(redirect_uris=[...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .live_provider import LiveProvider

__all__ = ["provider", "provider_factory"]


@pytest.fixture
def provider_factory() -> Iterator[Callable[..., LiveProvider]]:
    """Start providers with special config: ``provider_factory(ISSUER="http://...")``.

    Every provider started through the factory is stopped when the test ends.
    """
    started: list[LiveProvider] = []

    def start(**config: Any) -> LiveProvider:
        live = LiveProvider(config).start()
        started.append(live)
        return live

    yield start
    for live in reversed(started):
        live.stop()


@pytest.fixture
def provider() -> Iterator[LiveProvider]:
    """A running provider with the default config, stopped after the test."""
    with LiveProvider() as live:
        yield live
