"""Encryption at rest: nothing secret in the database file, wrong keys fail closed, rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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


def _signed_token(key: bytes, plaintext_padded: bytes, iv: bytes = b"\x01" * 16) -> str:
    """A Fernet token whose tag is valid, built by hand so its padding can be wrong."""
    raw = base64.urlsafe_b64decode(key)
    encryptor = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    body = b"\x80" + (1).to_bytes(8, "big") + iv + encryptor.update(plaintext_padded) + encryptor.finalize()
    return base64.urlsafe_b64encode(body + hmac.digest(raw[:16], body, hashlib.sha256)).decode()


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31, 32, 33, 200, 4096])
def test_decrypt_reads_what_the_library_writes(length: int) -> None:
    key = Fernet.generate_key()
    plaintext = "é" * (length // 2) + "x" * (length % 2)
    assert Encryptor([key]).decrypt(Fernet(key).encrypt(plaintext.encode()).decode()) == plaintext


def test_decrypt_accepts_exactly_what_fernet_accepts() -> None:
    """Every one-byte change, truncation and extension of a token fails, as it does in Fernet.

    Stored ciphertext is ASCII, so a token with other characters is refused before Fernet
    would see it (Fernet itself skips them as base64 noise).
    """
    key = Fernet.generate_key()
    fernet, ours = Fernet(key), Encryptor([key])
    token = fernet.encrypt(b"a token of some length").decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="
    variants = [token[:cut] for cut in range(len(token))] + [token + "AAAA", token + "=", "", "é" + token]
    variants += [
        token[:i] + c + token[i + 1 :] for i in range(len(token)) for c in ("A", "_", "!") if token[i] != c
    ]
    variants += [
        "".join(alphabet[(alphabet.index(ch) + 1) % 64] if i == 5 else ch for i, ch in enumerate(token))
    ]
    for variant in variants:
        try:
            expected: str | None = fernet.decrypt(variant.encode("ascii")).decode()
        except Exception:
            expected = None
        try:
            got: str | None = ours.decrypt(variant)
        except DecryptionError:
            got = None
        assert got == expected, variant


@pytest.mark.parametrize(
    "padded",
    [
        b"0123456789abcde\x00",
        b"0123456789abcde\x11",
        b"0123456789abc\x03\x02\x03",
        b"x" * 16 + b"\x10" * 15 + b"\x11",
    ],
)
def test_authentic_token_with_bad_padding_fails_closed(padded: bytes) -> None:
    key = Fernet.generate_key()
    token = _signed_token(key, padded)
    with pytest.raises(InvalidToken):
        Fernet(key).decrypt(token)
    with pytest.raises(DecryptionError):
        Encryptor([key]).decrypt(token)


def test_decrypt_tries_every_configured_key_from_many_threads_at_once() -> None:
    keys = [Fernet.generate_key() for _ in range(3)]
    ours = Encryptor(keys)
    tokens = {
        f"value-{i}" * (i + 1): Fernet(k).encrypt(f"value-{i}".encode() * (i + 1)).decode()
        for i, k in enumerate(keys)
    }
    failures: list[str] = []

    def read() -> None:
        for _ in range(2000):
            for plaintext, token in tokens.items():
                if ours.decrypt(token) != plaintext:
                    failures.append(plaintext)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with pytest.raises(DecryptionError):
        Encryptor(keys[1:]).decrypt(tokens["value-0"])
