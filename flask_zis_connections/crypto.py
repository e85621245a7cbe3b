"""Encryption at rest with key rotation, and the hashes used for lookup-only secrets.

Tokens, refresh tokens, raw token responses, client secrets and PKCE verifiers are
stored as Fernet ciphertext under ``ZIS_ENCRYPTION_KEYS`` (newest first, as
:class:`cryptography.fernet.MultiFernet` expects).  When no keys are configured a key
is derived from ``SECRET_KEY`` (and one per ``SECRET_KEY_FALLBACKS`` entry, so rotating
Flask's key does not lock data out) and a warning is logged: convenient in development,
but production should manage encryption keys separately from the signing key.

API tokens and verification codes are never decrypted, only compared, so they are
stored as SHA-256 hashes instead: they are 256-bit random values, so a plain hash is
enough (no password stretching needed).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigurationError, DecryptionError

log = logging.getLogger("flask_zis_connections")

_DERIVATION_CONTEXT = b"flask-zis-connections encryption key v1"


def derive_key(secret: str | bytes) -> bytes:
    """Derive a Fernet key from a Flask ``SECRET_KEY`` (HKDF-like, domain separated)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    digest = hashlib.sha256(_DERIVATION_CONTEXT + b"\x00" + raw).digest()
    return base64.urlsafe_b64encode(digest)


def hash_secret(value: str) -> str:
    """Lookup hash for high-entropy random secrets (API tokens, verification codes)."""
    return hashlib.sha256(value.encode()).hexdigest()


class Encryptor:
    """Encrypts with the newest key, decrypts with any configured key.

    A wrong or missing key raises :class:`DecryptionError` (fail closed): data is
    never returned half-decrypted or as ciphertext.
    """

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ConfigurationError("ZIS_ENCRYPTION_KEYS is empty; give at least one Fernet key.")
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"ZIS_ENCRYPTION_KEYS[{index}] is not a valid Fernet key (32 url-safe "
                    "base64-encoded bytes). Generate one with "
                    "`python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`."
                ) from exc
        self._multi = MultiFernet(fernets)
        self._primary = fernets[0]

    @classmethod
    def from_config(
        cls, keys: Iterable[str | bytes] | str | None, secret_key: object, fallbacks: object
    ) -> Encryptor:
        """Build from Flask config, deriving from ``SECRET_KEY`` when no keys are set."""
        if isinstance(keys, str):
            keys = [k.strip() for k in keys.split(",") if k.strip()]
        if keys:
            return cls(list(keys))
        if not isinstance(secret_key, str | bytes) or not secret_key:
            raise ConfigurationError(
                "Set ZIS_ENCRYPTION_KEYS (Fernet keys, newest first) or at least SECRET_KEY "
                "before init_app: tokens are encrypted at rest."
            )
        log.warning(
            "ZIS_ENCRYPTION_KEYS is not set: deriving the encryption key from SECRET_KEY. "
            "Set ZIS_ENCRYPTION_KEYS in production so the two can rotate independently."
        )
        derived = [derive_key(secret_key)]
        if isinstance(fallbacks, list | tuple):
            # Newest fallback last in Flask's convention; MultiFernet wants newest first.
            derived += [derive_key(k) for k in reversed(fallbacks) if isinstance(k, str | bytes)]
        return cls(derived)

    def encrypt(self, value: str) -> str:
        return self._primary.encrypt(value.encode()).decode("ascii")

    def encrypt_optional(self, value: str | None) -> str | None:
        return None if value is None else self.encrypt(value)

    def decrypt(self, token: str) -> str:
        try:
            return self._multi.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise DecryptionError() from exc

    def decrypt_optional(self, token: str | None) -> str | None:
        return None if token is None else self.decrypt(token)

    def rotate(self, token: str) -> str:
        """Re-encrypt under the newest key (used by ``flask zis rotate-keys``)."""
        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise DecryptionError() from exc
