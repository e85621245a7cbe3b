"""The extension object: init_app, app factories, several apps, config defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from flask_zis_connections import ConnectionNotFound, ZISConnections, ZISError, get_token
from flask_zis_connections.errors import ConfigurationError

from .helpers import PREFIX


def test_init_app_twice_is_refused_with_a_helpful_message(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already been registered"):
        ZISConnections(app)


def test_config_defaults_are_set_without_overriding_host_values(make_app: Callable[..., Flask]) -> None:
    app = make_app(ZIS_REFRESH_LEEWAY=5)
    assert app.config["ZIS_REFRESH_LEEWAY"] == 5
    assert app.config["ZIS_FLOW_TOKEN_MAX_AGE"] == 600
    assert app.config["ZIS_ALLOWED_REDIRECT_ORIGINS"] == ["https://client.int"]
    assert app.config["ZIS_HTTP_TIMEOUT"] == 2


def test_app_factory_and_two_apps_in_one_process(tmp_path: object) -> None:
    zis = ZISConnections()
    apps = []
    for index in range(2):
        app = Flask(f"host{index}", instance_path=str(tmp_path) + f"/inst{index}")  # type: ignore[operator]
        app.config.update(SECRET_KEY=f"k{index}", ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()])
        zis.init_app(app)
        app.register_blueprint(zis.blueprint)
        apps.append(app)
    tokens = []
    for app in apps:
        with app.app_context():
            tokens.append(zis.issue_access_token("acme"))
    # Each app has its own storage: a token of app 0 is unknown to app 1.
    resp = (
        apps[1]
        .test_client()
        .get(f"{PREFIX}/connections/oauth/clients/acme", headers={"Authorization": f"Bearer {tokens[0]}"})
    )
    assert resp.status_code == 401
    resp = (
        apps[1]
        .test_client()
        .get(f"{PREFIX}/connections/oauth/clients/acme", headers={"Authorization": f"Bearer {tokens[1]}"})
    )
    assert resp.status_code == 200
    # The default storage is a SQLite file in each app's instance folder.
    for index, app in enumerate(apps):
        assert (tmp_path / f"inst{index}" / "zis_connections.sqlite3").exists()  # type: ignore[operator]
        app.extensions["zis_connections"].storage.close()


def test_get_token_follows_the_innermost_app_context(tmp_path: Path) -> None:
    """The module-level ``get_token`` reads Flask's context variable directly: it must
    find the app ``current_app`` would, through nested contexts of two apps."""
    apps = []
    for index in range(2):
        app = Flask(f"host{index}", instance_path=str(tmp_path / f"inst{index}"))
        app.config.update(SECRET_KEY=f"k{index}", ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()])
        ZISConnections(app)
        apps.append(app)
        with app.app_context():
            app.extensions["zis_connections"].ext.create_connection(
                "acme",
                "main",
                type="bearer_token",
                token=f"token-of-app-{index}",
                allowed_domain="api.example",
            )
    with apps[0].app_context():
        assert get_token("acme", "main") == "token-of-app-0"
        with apps[1].app_context():
            assert get_token("acme", "main") == "token-of-app-1"
        assert get_token("acme", "main") == "token-of-app-0"
    with pytest.raises(RuntimeError, match="outside of application context"):
        get_token("acme", "main")
    for app in apps:
        app.extensions["zis_connections"].storage.close()


def test_get_token_without_init_app_says_what_to_do() -> None:
    app = Flask("bare")
    with app.app_context(), pytest.raises(ConfigurationError, match="init_app"):
        get_token("acme", "main")


def test_get_token_unknown_connection(app: Flask) -> None:
    with app.app_context(), pytest.raises(ConnectionNotFound, match="Start an OAuth flow") as info:
        get_token("acme", "main")
    assert isinstance(info.value, ZISError)


def test_bad_storage_setting_is_a_clear_error(tmp_path: object) -> None:
    app = Flask("bad", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="x", ZIS_STORAGE="mongo")
    with pytest.raises(ConfigurationError, match="ZIS_STORAGE"):
        ZISConnections(app)


def test_missing_secret_and_keys_is_a_clear_error(tmp_path: object) -> None:
    app = Flask("nokey", instance_path=str(tmp_path))
    app.config.update(ZIS_STORAGE="memory")
    with pytest.raises(ConfigurationError, match="ZIS_ENCRYPTION_KEYS"):
        ZISConnections(app)


def test_derived_key_logs_a_warning(tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    app = Flask("derived", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="only-secret", ZIS_STORAGE="memory")
    ZISConnections(app)
    assert any("ZIS_ENCRYPTION_KEYS is not set" in r.getMessage() for r in caplog.records)
    assert not any("only-secret" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "config",
    [
        {"ZIS_ALLOWED_PRIVATE_HOSTS": [1]},
        {"ZIS_ALLOWED_PRIVATE_HOSTS": {"a": "b"}},
        {"ZIS_HTTP_TIMEOUT": 0},
        {"ZIS_MAX_PROVIDER_RESPONSE_BYTES": -1},
    ],
)
def test_outbound_settings_are_checked_at_start(
    make_app: Callable[..., Flask], config: dict[str, Any]
) -> None:
    # A refresh lease shorter than the HTTP timeout is fine now (the refresher renews
    # it); malformed outbound limits are not, and fail before the first request.
    with pytest.raises(ConfigurationError):
        make_app(**config)
    assert make_app(ZIS_REFRESH_LEASE_TTL=5, ZIS_HTTP_TIMEOUT=10, ZIS_ALLOWED_PRIVATE_HOSTS="a, b")
