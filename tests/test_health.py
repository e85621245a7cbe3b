"""Health check: tells whether storage and encryption keys are usable."""

from __future__ import annotations

import socket
from pathlib import Path

from cryptography.fernet import Fernet
from flask import Flask

from flask_zis_connections import ZISConnections

from .helpers import PREFIX


def test_health_ok(app: Flask) -> None:
    resp = app.test_client().get(f"{PREFIX}/health")
    assert resp.status_code == 200
    assert resp.get_json() == {"ok": True, "storage": "ok", "encryption": "ok"}
    result = app.test_cli_runner().invoke(args=["zis", "check"])
    assert result.exit_code == 0 and '"ok": true' in result.output


def test_health_reports_unreachable_database(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Flask("down", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="x",
        ZIS_CREATE_TABLES=False,
        ZIS_DATABASE_URI=f"postgresql+psycopg://u:hunter2@127.0.0.1:{port}/none",
        ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        ZIS_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}},
    )
    zis = ZISConnections(app)
    app.register_blueprint(zis.blueprint)
    resp = app.test_client().get(f"{PREFIX}/health")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["ok"] is False and "ZIS_DATABASE_URI" in body["storage"]
    assert "hunter2" not in resp.get_data(as_text=True)
    # API calls answer 503 with the storage code, not a stack trace.
    api = app.test_client().get(
        f"{PREFIX}/connections/oauth/clients/acme", headers={"Authorization": "Bearer zis_x"}
    )
    assert api.status_code == 503 and api.get_json()["errors"][0]["code"] == "1306"
    app.extensions["zis_connections"].storage.close()
