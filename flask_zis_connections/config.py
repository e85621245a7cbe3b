"""Every configuration key the extension reads, with its default, in one place.

Keeping the names here (as Flask-Limiter does in ``constants.py``) means the README
table, ``init_app`` defaults and the code that reads them cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Final

STORAGE: Final = "ZIS_STORAGE"
DATABASE_URI: Final = "ZIS_DATABASE_URI"
ENGINE_OPTIONS: Final = "ZIS_ENGINE_OPTIONS"
CREATE_TABLES: Final = "ZIS_CREATE_TABLES"
ENCRYPTION_KEYS: Final = "ZIS_ENCRYPTION_KEYS"
ALLOWED_REDIRECT_ORIGINS: Final = "ZIS_ALLOWED_REDIRECT_ORIGINS"
PUBLIC_URL: Final = "ZIS_PUBLIC_URL"
ALLOW_INSECURE_HTTP: Final = "ZIS_ALLOW_INSECURE_HTTP"
FLOW_TOKEN_MAX_AGE: Final = "ZIS_FLOW_TOKEN_MAX_AGE"
VERIFICATION_CODE_MAX_AGE: Final = "ZIS_VERIFICATION_CODE_MAX_AGE"
REFRESH_LEEWAY: Final = "ZIS_REFRESH_LEEWAY"
REFRESH_LEASE_TTL: Final = "ZIS_REFRESH_LEASE_TTL"
HTTP_TIMEOUT: Final = "ZIS_HTTP_TIMEOUT"
RATELIMIT: Final = "ZIS_RATELIMIT"
RATELIMIT_STORAGE_URI: Final = "ZIS_RATELIMIT_STORAGE_URI"
RATELIMIT_FAIL_OPEN: Final = "ZIS_RATELIMIT_FAIL_OPEN"
OAUTH_CLIENTS: Final = "ZIS_OAUTH_CLIENTS"
HOST_TOKEN_URL: Final = "ZIS_HOST_TOKEN_URL"
ACCOUNT_ID: Final = "ZIS_ACCOUNT_ID"
MAX_BODY_BYTES: Final = "ZIS_MAX_BODY_BYTES"
FLOW_COOKIE_NAME: Final = "ZIS_FLOW_COOKIE_NAME"

#: Defaults applied with ``app.config.setdefault`` in ``init_app``.  ``None`` for
#: ``ZIS_DATABASE_URI`` means "a SQLite file in the app's instance folder".
DEFAULTS: Final[dict[str, Any]] = {
    STORAGE: "sqlalchemy",
    DATABASE_URI: None,
    ENGINE_OPTIONS: {},
    CREATE_TABLES: True,
    ENCRYPTION_KEYS: None,
    ALLOWED_REDIRECT_ORIGINS: [],
    PUBLIC_URL: None,
    ALLOW_INSECURE_HTTP: False,
    FLOW_TOKEN_MAX_AGE: 600,
    VERIFICATION_CODE_MAX_AGE: 600,
    REFRESH_LEEWAY: 60,
    REFRESH_LEASE_TTL: 30,
    HTTP_TIMEOUT: 10,
    RATELIMIT: "600 per minute",
    RATELIMIT_STORAGE_URI: "memory://",
    RATELIMIT_FAIL_OPEN: True,
    OAUTH_CLIENTS: {},
    HOST_TOKEN_URL: None,
    ACCOUNT_ID: None,
    MAX_BODY_BYTES: 64 * 1024,
    FLOW_COOKIE_NAME: "zis_flow",
}
