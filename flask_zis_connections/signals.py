"""Blinker signals for host code (audit logs, metrics).

Payloads carry identifiers only (integration, name, uuid, reason), never a token or
secret, so a careless receiver cannot leak one into a log.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: ``sender`` is the Flask app; kwargs: ``integration``, ``name``, ``uuid``.
connection_created = _signals.signal("zis-connection-created")
#: kwargs: ``integration``, ``name``, ``uuid``, ``token_expiry``.
connection_refreshed = _signals.signal("zis-connection-refreshed")
#: kwargs: ``integration``, ``name``, ``uuid``, ``reason`` (an OAuth error code or a short text).
connection_refresh_failed = _signals.signal("zis-connection-refresh-failed")
#: kwargs: ``integration``, ``name``, ``uuid``, ``revoked`` (True/False/None when not attempted).
connection_deleted = _signals.signal("zis-connection-deleted")
