"""flask-zis-connections: OAuth (and bearer token, basic auth, API key) connections for a Flask host."""

from .domain import Connection, OAuthClient
from .errors import (
    ConnectionNotFound,
    ProviderError,
    ReauthorizationRequired,
    WrongConnectionType,
    ZISError,
)
from .extension import ZISConnections, get_token
from .providers import ProviderPreset
from .session import ConnectionSession, ForbiddenDestination
from .signals import (
    connection_created,
    connection_deleted,
    connection_refresh_failed,
    connection_refreshed,
)

__all__ = [
    "Connection",
    "ConnectionNotFound",
    "ConnectionSession",
    "ForbiddenDestination",
    "OAuthClient",
    "ProviderError",
    "ProviderPreset",
    "ReauthorizationRequired",
    "WrongConnectionType",
    "ZISConnections",
    "ZISError",
    "connection_created",
    "connection_deleted",
    "connection_refresh_failed",
    "connection_refreshed",
    "get_token",
]
