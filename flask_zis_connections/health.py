"""A health check that tells whether storage and encryption keys are usable.

Used by ``GET /health`` and ``flask zis check``: it reads the database and decrypts one
stored value (if any), so a wrong ``ZIS_ENCRYPTION_KEYS`` shows up before a user hits it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ZISError

if TYPE_CHECKING:
    from ._state import AppState


def check(st: AppState) -> dict[str, Any]:
    report: dict[str, Any] = {"ok": True, "storage": "ok", "encryption": "ok"}
    try:
        st.storage.healthcheck()
    except ZISError as exc:
        report.update(ok=False, storage=exc.message)
        return report
    try:
        probe = st.encryptor.encrypt("probe")
        st.encryptor.decrypt(probe)
        clients = st.storage.list_clients()
        for client in clients[:1]:
            st.encryptor.decrypt_optional(client.client_secret_enc)
    except ZISError as exc:
        report.update(ok=False, encryption=exc.message)
    return report
