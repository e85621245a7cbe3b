"""Per-app state of the extension, and how code finds it: a leaf module.

Like Flask's ``globals.py``, this module imports nothing of the package above the
error types (everything else only for type checking), so the extension object, the
HTTP API, the CLI and the health check can all import :func:`state` without the
extension module importing them back.  Everything the extension keeps for one app
lives under one key of ``app.extensions``.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .errors import ConfigurationError

try:
    # The context variable behind ``current_app``.  Reading it directly costs a tenth
    # of the proxy's attribute lookup (0.13 against 1.45 us here), which was most of a
    # cached ``get_token``.
    from flask.globals import _cv_app as _cv_app  # re-exported: the module-level get_token reads it
except ImportError:  # pragma: no cover - a Flask that renamed it: never set, so the proxy
    _cv_app = ContextVar("flask_zis_connections.no_app_context")

if TYPE_CHECKING:
    from .api.auth import ApiTokenCache
    from .api.serializers import AnswerCache
    from .config import Settings
    from .crypto import Encryptor
    from .extension import ZISConnections
    from .flow import FlowService
    from .lifecycle import Lifecycle
    from .ratelimit import RateLimits
    from .storage import Storage

#: The one key the extension uses in ``app.extensions``.
EXTENSION_KEY = "zis_connections"


@dataclass
class AppState:
    """Everything the extension keeps for one Flask app."""

    ext: ZISConnections
    settings: Settings
    storage: Storage
    encryptor: Encryptor
    lifecycle: Lifecycle
    flows: FlowService
    #: The HTTP API's rate limits; None when ``ZIS_RATELIMIT`` turns them off.
    limits: RateLimits | None = None
    #: API bearer tokens found valid lately; None when ``ZIS_API_TOKEN_CACHE_TTL`` is 0.
    api_tokens: ApiTokenCache | None = None
    #: Serialized show answers of unchanged connections; None when
    #: ``ZIS_API_RESPONSE_CACHE_BYTES`` is 0.
    answers: AnswerCache | None = None
    #: Where the HTTP API blueprint is registered on this app (usually once), so that
    #: routing errors under those prefixes get the API's error envelope.
    url_prefixes: set[str] = field(default_factory=set)


def state(app: Flask | None = None) -> AppState:
    """The extension state of ``app`` (default: ``current_app``)."""
    if app is None:
        ctx = _cv_app.get(None)
        # No app context: the proxy raises Flask's own "outside of application context".
        extensions = ctx.app.extensions if ctx is not None else current_app.extensions
    else:
        extensions = app.extensions
    try:
        found: AppState = extensions[EXTENSION_KEY]
        return found
    except KeyError:
        raise ConfigurationError(
            "flask_zis_connections is not initialised on this app. Did you call zis.init_app(app)?"
        ) from None


__all__ = ["EXTENSION_KEY", "AppState", "state"]
