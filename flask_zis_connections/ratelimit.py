"""Rate limits on the blueprint, per integration and caller, with Flask-Limiter.

The key is the integration in the URL plus a hash of the bearer token (or the client
address for browser requests), so one noisy integration or caller cannot starve the
others and no token is ever used as a storage key in clear.  When the limit storage
(Redis) is down the limiter falls back to per-process in-memory counters with the
same limit: requests keep flowing, still limited per worker, and a warning is logged.
Refusing every API call because a counter store is down would turn a Redis outage into
an outage of every integration.  Hosts that prefer to refuse (``ZIS_RATELIMIT_FAIL_OPEN =
False``) get 503 with code 1306 while the store is down.
"""

from __future__ import annotations

from flask import Blueprint, Flask, request
from flask_limiter import Limiter

from . import config as cfg
from .crypto import hash_secret


def rate_limit_key() -> str:
    integration = (request.view_args or {}).get("integration", "-")
    header = request.headers.get("Authorization")
    caller = "t:" + hash_secret(header)[:24] if header else "ip:" + (request.remote_addr or "?")
    return f"{integration}|{caller}"


def init_limiter(app: Flask, blueprint: Blueprint) -> Limiter | None:
    limit = app.config[cfg.RATELIMIT]
    if not limit:
        return None
    fail_open = bool(app.config[cfg.RATELIMIT_FAIL_OPEN])
    limiter = Limiter(
        rate_limit_key,
        app=app,
        storage_uri=app.config[cfg.RATELIMIT_STORAGE_URI],
        key_prefix="zis",
        headers_enabled=False,  # Retry-After is set on 429 only, by the error handler
        swallow_errors=fail_open,
        in_memory_fallback_enabled=fail_open,
        in_memory_fallback=[limit] if fail_open else [],
        default_limits=[],
        application_limits=[],
    )
    # Only our blueprint is limited; the host's own routes keep whatever they had.
    limiter.limit(limit, key_func=rate_limit_key)(blueprint)
    app.extensions.setdefault("zis_limiters", []).append(limiter)
    return limiter
