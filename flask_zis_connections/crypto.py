"""Encryption at rest with key rotation, and the hashes used for lookup-only secrets.

Tokens, refresh tokens, raw token responses, client secrets and PKCE verifiers are
stored as Fernet ciphertext under ``ZIS_ENCRYPTION_KEYS`` (newest first, as
:class:`cryptography.fernet.MultiFernet` expects).  When no keys are configured a key
is derived from ``SECRET_KEY`` (and one per ``SECRET_KEY_FALLBACKS`` entry, so rotating
Flask's key does not lock data out) and a warning is logged: convenient in development,
but production should manage encryption keys separately from the signing key.

Decryption reads the Fernet format itself (see :class:`_FernetOpener`) because it sits on
``get_token``'s path: the same checks as :meth:`cryptography.fernet.Fernet.decrypt` in half
the time.  Encryption and rotation stay with the library.

API tokens and verification codes are never decrypted, only compared, so they are
stored as SHA-256 hashes instead: they are 256-bit random values, so a plain hash is
enough (no password stretching needed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import threading
from collections.abc import Iterable, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

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


# Fernet token layout (https://github.com/fernet/spec/blob/master/Spec.md):
# version (1 byte, 0x80) | timestamp (8) | IV (16) | AES-128-CBC ciphertext (16n) | HMAC-SHA256 (32)
_HEADER = 25
_MAC = 32
_BLOCK = 16


class _FernetOpener:
    """Decrypts Fernet tokens under a list of keys, accepting exactly what ``MultiFernet`` does.

    :meth:`cryptography.fernet.Fernet.decrypt` builds an HMAC object, a CBC cipher context
    and a padding context for every token, which is most of its 7-8 us.  This does the same
    steps with cheaper parts:

    - the HMAC-SHA256 tag over version..ciphertext is checked first, in constant time
      (``hmac.compare_digest``), under each key in turn, so nothing unauthenticated reaches
      the cipher (no padding oracle);
    - CBC decryption is ``P[i] = D(C[i]) XOR C[i-1]`` with ``C[-1]`` the IV (NIST SP 800-38A,
      6.2).  ``D`` is AES in ECB mode, whose context keeps no state between whole blocks, so
      one per key and thread is reused; the XOR runs over the whole message as one integer;
    - the PKCS#7 padding is checked and removed.

    No TTL is applied, as with ``decrypt(token)`` without one.  Contexts are per thread
    because an OpenSSL cipher context must not be used by two threads at once.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._signing = [key[:16] for key in keys]
        self._algorithms = [algorithms.AES(key[16:]) for key in keys]
        self._local = threading.local()

    def _block_decryptor(self, index: int) -> CipherContext:
        contexts: list[CipherContext | None] | None = getattr(self._local, "contexts", None)
        if contexts is None:
            contexts = self._local.contexts = [None] * len(self._algorithms)
        context = contexts[index]
        if context is None:
            context = contexts[index] = Cipher(self._algorithms[index], modes.ECB()).decryptor()  # noqa: S305
        return context

    def _signer(self, signed: bytes, tag: bytes) -> int:
        """Which key's HMAC matches the tag (newest first, as ``MultiFernet`` tries them)."""
        for index, signing in enumerate(self._signing):
            if hmac.compare_digest(hmac.digest(signing, signed, "sha256"), tag):
                return index
        raise InvalidToken

    def open(self, token: str) -> bytes:
        """The plaintext; :class:`cryptography.fernet.InvalidToken` when any check fails."""
        try:
            data = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII str
            raise InvalidToken from exc
        size = len(data) - _HEADER - _MAC
        if size < _BLOCK or size % _BLOCK or data[0] != 0x80:
            raise InvalidToken
        signed, tag = data[:-_MAC], data[-_MAC:]
        index = self._signer(signed, tag)
        blocks = self._block_decryptor(index).update(signed[_HEADER:])
        chained = int.from_bytes(blocks, "big") ^ int.from_bytes(signed[9:-_BLOCK], "big")
        padded = chained.to_bytes(size, "big")
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes((pad,)) * pad:
            raise InvalidToken
        return padded[:-pad]


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
        self._opener = _FernetOpener([base64.urlsafe_b64decode(key) for key in keys])

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
            return self._opener.open(token).decode()
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
