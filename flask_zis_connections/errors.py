"""The exception tree.

Python callers catch :class:`ZISError` subclasses; the HTTP layer turns every one of
them (and every werkzeug ``HTTPException``) into the service's error envelope
``{"errors": [{"code", "detail", "status"}]}``.  Each exception carries the HTTP
status and envelope code it maps to, so the mapping lives with the error rather than
in a table in the views.  Messages say what to do next and never contain a token,
secret or raw provider body.
"""

from __future__ import annotations

#: Envelope codes of the service's API reference, plus our own for what it does not cover.
CODE_UNAUTHORIZED = "1200"
CODE_TOO_MANY_REQUESTS = "1300"
CODE_INVALID_REQUEST = "1301"
CODE_NOT_FOUND = "1302"
CODE_INVALID_VALUE = "1303"
CODE_CONFLICT = "1304"
CODE_PROVIDER_ERROR = "1305"
CODE_STORAGE_UNAVAILABLE = "1306"
CODE_INTERNAL = "1307"
CODE_NOT_CONFIGURED = "1308"


class ZISError(Exception):
    """Base of every error the extension raises on purpose."""

    status: int = 500
    code: str = CODE_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ZISError):
    """The request itself is malformed (missing parameter, bad JSON, wrong type)."""

    status = 400
    code = CODE_INVALID_REQUEST


class InvalidValue(ZISError):
    """A value is well-formed but not acceptable; ``field`` names the culprit."""

    status = 422
    code = CODE_INVALID_VALUE

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"Invalid value for: {field}. Desc: {description}")
        self.field = field
        self.description = description


class WrongConnectionType(InvalidValue):
    """An operation was asked of a connection whose type does not have it.

    Refreshing, for instance, only means something for an OAuth connection; a
    ``basic_auth`` connection has no single token for ``get_token`` to return.
    ``connection_type`` is the type the connection has.
    """

    def __init__(self, integration: str, name: str, connection_type: str, description: str) -> None:
        super().__init__(
            "type",
            f"connection {name!r} of integration {integration!r} is a {connection_type} "
            f"connection: {description}",
        )
        self.integration = integration
        self.name = name
        self.connection_type = connection_type


class NotFound(ZISError, LookupError):
    """Something named in the request does not exist (for this integration)."""

    status = 404
    code = CODE_NOT_FOUND


class ConnectionNotFound(NotFound):
    """No connection with that name or uuid exists for the integration."""

    def __init__(self, integration: str, name: str | None = None, uuid: str | None = None):
        what = f"name {name!r}" if name is not None else f"uuid {uuid!r}"
        super().__init__(
            f"No connection with {what} for integration {integration!r}. "
            "Start an OAuth flow to create it (or create a bearer_token, basic_auth or api_key "
            "connection), or list the integration's connections."
        )
        self.integration = integration
        self.name = name
        self.uuid = uuid


class OAuthClientNotFound(NotFound):
    """The OAuth client named in the request is not registered for the integration."""

    def __init__(self, integration: str, ref: str) -> None:
        super().__init__(
            f"No OAuth client {ref!r} for integration {integration!r}. "
            f"Register it first with create_oauth_client or POST "
            f"/connections/oauth/clients/{integration}."
        )
        self.integration = integration


class Conflict(ZISError):
    """The write would break a uniqueness rule (e.g. a duplicate client name)."""

    status = 409
    code = CODE_CONFLICT


class Unauthorized(ZISError):
    """No valid credentials were presented."""

    status = 401
    code = CODE_UNAUTHORIZED


class Forbidden(ZISError):
    """Valid credentials, but not for this integration or origin."""

    status = 403
    code = CODE_UNAUTHORIZED


class ReauthorizationRequired(ZISError):
    """The provider refused the refresh token or the client: a person must connect again."""

    status = 422
    code = CODE_INVALID_VALUE

    def __init__(self, integration: str, name: str, reason: str) -> None:
        super().__init__(
            f"Connection {name!r} of integration {integration!r} needs re-authorization "
            f"({reason}). Start a new OAuth flow with the same connection name to restore it."
        )
        self.integration = integration
        self.name = name
        self.reason = reason


class ProviderError(ZISError):
    """The provider failed, timed out or answered nonsense; nothing stored changed.

    ``retry_after`` (seconds), when set, is when the connection's next refresh attempt
    is allowed (it is backing off after failures); the HTTP API sends it as
    ``Retry-After``.
    """

    status = 502
    code = CODE_PROVIDER_ERROR

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageUnavailable(ZISError):
    """The database could not be reached or answered with an operational error."""

    status = 503
    code = CODE_STORAGE_UNAVAILABLE


class DecryptionError(ZISError):
    """Stored ciphertext does not decrypt with any configured key: fail closed."""

    status = 500
    code = CODE_INTERNAL

    def __init__(self) -> None:
        super().__init__(
            "Stored data could not be decrypted with ZIS_ENCRYPTION_KEYS. Put the key the "
            "data was written with back into the list (old keys go after the newest), then "
            "run `flask zis rotate-keys`."
        )


class ConfigurationError(ZISError):
    """The extension is misconfigured or used outside an app that called ``init_app``."""


class UnsupportedMediaType(InvalidRequest):
    """The body is not ``application/json``."""

    status = 415


class TooManyRequests(ZISError):
    """A rate limit of the HTTP API is exhausted.

    ``retry_after`` is the number of seconds until the limit admits the next request; the
    HTTP layer sends it as ``Retry-After`` so well-behaved clients wait instead of hammering.
    """

    status = 429
    code = CODE_TOO_MANY_REQUESTS

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotConfigured(ZISError):
    """The host has not configured what this endpoint needs (503 until it does)."""

    status = 503
    code = CODE_NOT_CONFIGURED
