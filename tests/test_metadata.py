"""Connection metadata: set by the host, merged, validated, shown, kept across refreshes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_zis_connections import ZISConnections
from flask_zis_connections.errors import ConnectionNotFound, InvalidValue

from .flow_driver import auth_header, connect, register, zis_of
from .helpers import PREFIX
from .live_provider import LiveProvider


@pytest.fixture
def connected(make_app: Callable[..., Flask], provider: LiveProvider) -> tuple[Flask, dict[str, str]]:
    app = make_app()
    register(app, provider)
    headers = auth_header(app)
    connect(app, provider, headers, name="main", allow_offline_access=True)
    return app, headers


def _zis(app: Flask) -> ZISConnections:
    return zis_of(app)


def test_metadata_merges_deletes_and_shows(connected: tuple[Flask, dict[str, str]]) -> None:
    app, headers = connected
    with app.app_context():
        conn = _zis(app).update_connection_metadata("acme", "main", {"realm": "42", "region": "eu"})
        assert conn.metadata == {"realm": "42", "region": "eu"}
        conn = _zis(app).update_connection_metadata("acme", "main", {"region": None, "tier": {"a": [1, 2]}})
        assert conn.metadata == {"realm": "42", "tier": {"a": [1, 2]}}
    shown = app.test_client().get(f"{PREFIX}/connections/acme?name=main", headers=headers).get_json()
    assert shown["metadata"] == {"realm": "42", "tier": {"a": [1, 2]}}
    listed = app.test_client().get(f"{PREFIX}/integrations/acme/connections/all", headers=headers).get_json()
    assert listed["oauth"][0]["metadata"] == shown["metadata"]
    # A refresh keeps what the host set.
    refreshed = app.test_client().get(f"{PREFIX}/connections/refresh/acme?name=main", headers=headers)
    assert refreshed.get_json()["metadata"] == shown["metadata"]


@pytest.mark.parametrize(
    "changes",
    [
        {"k": float("nan")},
        {"k": object()},
        {"": 1},
        {"k" * 129: 1},
        {"big": "x" * 20_000},
        ["not", "a", "map"],
    ],
)
def test_bad_metadata_is_refused_and_nothing_changes(
    connected: tuple[Flask, dict[str, str]], changes: Any
) -> None:
    app, _ = connected
    with app.app_context():
        before = _zis(app).get_connection("acme", "main", refresh_if_due=False)
        with pytest.raises(InvalidValue, match="metadata"):
            _zis(app).update_connection_metadata("acme", "main", changes)
        after = _zis(app).get_connection("acme", "main", refresh_if_due=False)
    assert after.metadata == before.metadata and after.version == before.version


def test_unknown_connection(connected: tuple[Flask, dict[str, str]]) -> None:
    app, _ = connected
    with app.app_context(), pytest.raises(ConnectionNotFound):
        _zis(app).update_connection_metadata("acme", "nope", {"a": 1})


def test_concurrent_metadata_updates_all_land(connected: tuple[Flask, dict[str, str]]) -> None:
    app, _ = connected
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait(10)
        try:
            with app.app_context():
                _zis(app).update_connection_metadata("acme", "main", {f"k{i}": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with app.app_context():
        conn = _zis(app).get_connection("acme", "main", refresh_if_due=False)
    assert conn.metadata == {f"k{i}": i for i in range(8)}


def test_returned_metadata_cannot_change_what_is_stored(connected: tuple[Flask, dict[str, str]]) -> None:
    app, _ = connected
    with app.app_context():
        _zis(app).update_connection_metadata("acme", "main", {"a": 1})
        conn = _zis(app).get_connection("acme", "main", refresh_if_due=False)
        conn.metadata["a"] = 2  # type: ignore[index]
        storage = app.extensions["zis_connections"].storage
        rec = storage.get_connection("acme", name="main")
        assert rec.metadata == {"a": 1}
        with contextlib.suppress(TypeError):  # read-only where the store shares it
            rec.metadata["a"] = 3
        assert storage.get_connection("acme", name="main").metadata == {"a": 1}
