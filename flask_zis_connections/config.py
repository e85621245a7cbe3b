"""Every configuration key the extension reads, with its default, in one place.

Keeping the names here (as Flask-Limiter does in ``constants.py``) means the README
table, ``init_app`` defaults and the code that reads them cannot drift apart.
:class:`Settings` is what the rest of the package reads: built once by ``init_app``
from ``app.config`` (as Flask-SQLAlchemy's ``init_app`` reads its keys once), checked
there so a malformed value fails at start-up, and frozen - changing ``app.config``
afterwards has no effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import ConfigurationError

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
TRUSTED_ORIGINS: Final = "ZIS_TRUSTED_ORIGINS"
MAX_PROVIDER_RESPONSE_BYTES: Final = "ZIS_MAX_PROVIDER_RESPONSE_BYTES"
ALLOWED_PRIVATE_HOSTS: Final = "ZIS_ALLOWED_PRIVATE_HOSTS"
REFRESH_BACKOFF_MAX: Final = "ZIS_REFRESH_BACKOFF_MAX"
EVENT_RETENTION_DAYS: Final = "ZIS_EVENT_RETENTION_DAYS"
RATELIMIT_UNAUTHENTICATED: Final = "ZIS_RATELIMIT_UNAUTHENTICATED"
RATELIMIT_TOKEN_PROXY: Final = "ZIS_RATELIMIT_TOKEN_PROXY"
METRICS: Final = "ZIS_METRICS"
TOKEN_CACHE_TTL: Final = "ZIS_TOKEN_CACHE_TTL"
TOKEN_CACHE_SIZE: Final = "ZIS_TOKEN_CACHE_SIZE"
TOKEN_CACHE_REDIS_URL: Final = "ZIS_TOKEN_CACHE_REDIS_URL"
API_TOKEN_CACHE_TTL: Final = "ZIS_API_TOKEN_CACHE_TTL"
API_RESPONSE_CACHE_BYTES: Final = "ZIS_API_RESPONSE_CACHE_BYTES"

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
    TRUSTED_ORIGINS: [],
    MAX_PROVIDER_RESPONSE_BYTES: 1024 * 1024,
    ALLOWED_PRIVATE_HOSTS: [],
    REFRESH_BACKOFF_MAX: 60,
    EVENT_RETENTION_DAYS: 90,
    RATELIMIT_UNAUTHENTICATED: "60 per minute",
    RATELIMIT_TOKEN_PROXY: "300 per minute",
    METRICS: False,
    TOKEN_CACHE_TTL: 5,
    TOKEN_CACHE_SIZE: 10000,
    TOKEN_CACHE_REDIS_URL: None,
    API_TOKEN_CACHE_TTL: 5,
    API_RESPONSE_CACHE_BYTES: 4 * 1024 * 1024,
}


def _strings(key: str, value: Any) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (handy in environment variables)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if (
        not isinstance(value, Iterable)
        or isinstance(value, Mapping)
        or not all(isinstance(item, str) for item in value)
    ):
        raise ConfigurationError(f"{key} must be a list of strings (or one comma-separated string).")
    return tuple(item.strip() for item in value if item.strip())


def _account_id(value: Any) -> int | None:
    """``zendesk_account_id`` is an integer in the service's API; a numeric string from
    an environment variable is accepted, anything else fails at start-up."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConfigurationError(f"{ACCOUNT_ID} must be an integer account id, not {value!r}.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    raise ConfigurationError(f"{ACCOUNT_ID} must be an integer account id, not {value!r}.")


def _positive(key: str, value: Any, kind: type[int] | type[float] = float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be a positive number, not {value!r}.") from None
    if isinstance(value, bool) or number <= 0:
        raise ConfigurationError(f"{key} must be a positive number, not {value!r}.")
    return number


def _non_negative(key: str, value: Any, kind: type[int] | type[float] = float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be a number, 0 or more, not {value!r}.") from None
    if isinstance(value, bool) or number < 0 or number != number:
        raise ConfigurationError(f"{key} must be a number, 0 or more, not {value!r}.")
    return number


def _redis_url(key: str, value: Any) -> str | None:
    """A URL redis-py connects to, checked here so a typo fails at start-up rather than
    at the first write.  The message never repeats the value: it may hold a password."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"{key} must be a redis://, rediss:// or unix:// URL "
            "(e.g. redis://:password@localhost:6379/0), or None."
        )
    try:
        from redis.connection import parse_url
    except ImportError:
        raise ConfigurationError(
            f"{key} needs the 'redis' package: pip install 'flask-zis-connections[redis]'."
        ) from None
    try:
        parse_url(value)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except ValueError:
        raise ConfigurationError(
            f"{key} is not a URL redis-py can read: check its port, database number and query options."
        ) from None
    return value


@dataclass(frozen=True)
class Settings:
    """The ``ZIS_*`` values of one app, read once at ``init_app``.

    ``init_app`` reads: every key in :data:`DEFAULTS`.  Storage keys
    (``ZIS_STORAGE``, ``ZIS_DATABASE_URI``, ``ZIS_ENGINE_OPTIONS``,
    ``ZIS_CREATE_TABLES``), ``ZIS_ENCRYPTION_KEYS`` and ``ZIS_OAUTH_CLIENTS`` are used
    during ``init_app`` only and are not kept here.
    """

    allowed_redirect_origins: tuple[str, ...]
    trusted_origins: tuple[str, ...]
    public_url: str | None
    allow_insecure_http: bool
    flow_token_max_age: int
    verification_code_max_age: int
    refresh_leeway: float
    refresh_lease_ttl: float
    refresh_backoff_max: float
    http_timeout: float
    max_provider_response_bytes: int
    allowed_private_hosts: tuple[str, ...]
    host_token_url: str | None
    account_id: int | None
    max_body_bytes: int
    flow_cookie_name: str
    #: Collect Prometheus metrics from ``init_app`` on (``ZIS_METRICS``); they are also
    #: collected once ``zis.metrics_wsgi_app()`` is called.
    metrics: bool = False
    #: Days ``flask zis purge`` keeps events for (``ZIS_EVENT_RETENTION_DAYS``).
    event_retention_days: int = 90
    #: Seconds ``get_token`` may serve a token from the in-process cache
    #: (``ZIS_TOKEN_CACHE_TTL``; 0: no cache).
    token_cache_ttl: float = 5.0
    #: Most tokens the in-process cache holds (``ZIS_TOKEN_CACHE_SIZE``; 0: no cache).
    token_cache_size: int = 10000
    #: Where the token cache's invalidations travel between processes
    #: (``ZIS_TOKEN_CACHE_REDIS_URL``; None: PostgreSQL ``NOTIFY``, or none, as the storage offers).
    token_cache_redis_url: str | None = None
    #: Seconds an API bearer token, once found valid, is trusted without a database read
    #: (``ZIS_API_TOKEN_CACHE_TTL``; 0: every request reads it).  Bounds how long a
    #: revocation made in another process takes to be seen here.
    api_token_cache_ttl: float = 5.0
    #: Bytes of serialized show answers kept per process (``ZIS_API_RESPONSE_CACHE_BYTES``;
    #: 0: none), so an unchanged connection is decrypted and encoded once, not per request.
    api_response_cache_bytes: int = 4 * 1024 * 1024

    @property
    def public_https(self) -> bool:
        """Whether browsers reach the extension over https (a TLS-terminating proxy
        in front makes requests look like http)."""
        return bool(self.public_url and self.public_url.startswith("https://"))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        public = config[PUBLIC_URL]
        token_url = config[HOST_TOKEN_URL]
        return cls(
            allowed_redirect_origins=_strings(ALLOWED_REDIRECT_ORIGINS, config[ALLOWED_REDIRECT_ORIGINS]),
            trusted_origins=_strings(TRUSTED_ORIGINS, config[TRUSTED_ORIGINS]),
            public_url=str(public).rstrip("/") if public else None,
            allow_insecure_http=bool(config[ALLOW_INSECURE_HTTP]),
            flow_token_max_age=_positive(FLOW_TOKEN_MAX_AGE, config[FLOW_TOKEN_MAX_AGE], int),
            verification_code_max_age=_positive(
                VERIFICATION_CODE_MAX_AGE, config[VERIFICATION_CODE_MAX_AGE], int
            ),
            refresh_leeway=float(config[REFRESH_LEEWAY]),
            refresh_lease_ttl=_positive(REFRESH_LEASE_TTL, config[REFRESH_LEASE_TTL]),
            refresh_backoff_max=_positive(REFRESH_BACKOFF_MAX, config[REFRESH_BACKOFF_MAX]),
            event_retention_days=_positive(EVENT_RETENTION_DAYS, config[EVENT_RETENTION_DAYS], int),
            http_timeout=_positive(HTTP_TIMEOUT, config[HTTP_TIMEOUT]),
            max_provider_response_bytes=_positive(
                MAX_PROVIDER_RESPONSE_BYTES, config[MAX_PROVIDER_RESPONSE_BYTES], int
            ),
            allowed_private_hosts=tuple(
                h.lower() for h in _strings(ALLOWED_PRIVATE_HOSTS, config[ALLOWED_PRIVATE_HOSTS])
            ),
            host_token_url=str(token_url) if token_url else None,
            account_id=_account_id(config[ACCOUNT_ID]),
            max_body_bytes=_positive(MAX_BODY_BYTES, config[MAX_BODY_BYTES], int),
            flow_cookie_name=str(config[FLOW_COOKIE_NAME]),
            metrics=bool(config[METRICS]),
            token_cache_ttl=_non_negative(TOKEN_CACHE_TTL, config[TOKEN_CACHE_TTL]),
            token_cache_size=_non_negative(TOKEN_CACHE_SIZE, config[TOKEN_CACHE_SIZE], int),
            token_cache_redis_url=_redis_url(TOKEN_CACHE_REDIS_URL, config[TOKEN_CACHE_REDIS_URL]),
            api_token_cache_ttl=_non_negative(API_TOKEN_CACHE_TTL, config[API_TOKEN_CACHE_TTL]),
            api_response_cache_bytes=_non_negative(
                API_RESPONSE_CACHE_BYTES, config[API_RESPONSE_CACHE_BYTES], int
            ),
        )
