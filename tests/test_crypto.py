"""Encryption at rest: nothing secret in the database file, wrong keys fail closed, rotation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from flask_zis_connections import ZISConnections
from flask_zis_connections.crypto import Encryptor
from flask_zis_connections.errors import ConfigurationError, DecryptionError

from .helpers import client_body

SECRET = "s3cr3t-client-secret-value"


def _sqlite_app(tmp_path: Path, keys: list[str]) -> Flask:
    app = Flask("crypto_host", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="x", ZIS_ENCRYPTION_KEYS=keys, ZIS_ALLOW_INSECURE_HTTP=True)
    zis = ZISConnections(app)
    app.register_blueprint(zis.blueprint)
    return app


def _db_bytes(tmp_path: Path) -> bytes:
    out = b""
    for f in (tmp_path / "instance").glob("zis_connections.sqlite3*"):
        out += f.read_bytes()
    return out


def _close(app: Flask) -> None:
    app.extensions["zis_connections"].storage.close()


def test_client_secret_is_not_in_the_database_file(tmp_path: Path) -> None:
    app = _sqlite_app(tmp_path, [Fernet.generate_key().decode()])
    with app.app_context():
        app.extensions["zis_connections"].ext.create_oauth_client("acme", **client_body())
    _close(app)
    raw = _db_bytes(tmp_path)
    assert b"cid-123" in raw  # the file really holds the row
    assert SECRET.encode() not in raw


def test_wrong_key_fails_closed(tmp_path: Path) -> None:
    app = _sqlite_app(tmp_path, [Fernet.generate_key().decode()])
    with app.app_context():
        c = app.extensions["zis_connections"].ext.create_oauth_client("acme", **client_body())
    _close(app)
    other = _sqlite_app(tmp_path / "..", [Fernet.generate_key().decode()])  # different instance dir
    _close(other)
    wrong = Flask("wrong", instance_path=str(tmp_path / "instance"))
    wrong.config.update(SECRET_KEY="x", ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()])
    ZISConnections(wrong)
    st = wrong.extensions["zis_connections"]
    stored = st.storage.get_client("acme", uuid=c.uuid)
    with pytest.raises(DecryptionError, match="rotate-keys"):
        st.encryptor.decrypt(stored.client_secret_enc)
    runner = wrong.test_cli_runner()
    result = runner.invoke(args=["zis", "check"])
    assert result.exit_code == 1 and '"ok": false' in result.output
    st.storage.close()


def test_rotate_keys_then_old_key_can_go(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    app = _sqlite_app(tmp_path, [old])
    with app.app_context():
        c = app.extensions["zis_connections"].ext.create_oauth_client("acme", **client_body())
    _close(app)
    rotating = _sqlite_app(tmp_path, [new, old])
    result = rotating.test_cli_runner().invoke(args=["zis", "rotate-keys"])
    assert result.exit_code == 0 and "Re-encrypted 1 rows" in result.output, result.output
    _close(rotating)
    only_new = _sqlite_app(tmp_path, [new])
    st = only_new.extensions["zis_connections"]
    assert st.encryptor.decrypt(st.storage.get_client("acme", uuid=c.uuid).client_secret_enc) == SECRET
    _close(only_new)


def test_invalid_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"ZIS_ENCRYPTION_KEYS\[0\]"):
        Encryptor(["not-a-key"])


def test_secret_key_fallbacks_still_decrypt(make_app: Callable[..., Flask]) -> None:
    old = Encryptor.from_config(None, "old-secret", [])
    token = old.encrypt("value")
    rotated = Encryptor.from_config(None, "new-secret", ["old-secret"])
    assert rotated.decrypt(token) == "value"
    assert Encryptor.from_config(None, "new-secret", []).encrypt("v") != token
    with pytest.raises(DecryptionError):
        Encryptor.from_config(None, "new-secret", []).decrypt(token)
