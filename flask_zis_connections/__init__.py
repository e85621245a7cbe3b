"""flask-zis-connections: OAuth connections for a Flask host application."""

from .domain import Connection, OAuthClient
from .errors import (
    ConnectionNotFound,
    ProviderError,
    ReauthorizationRequired,
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
    "ZISConnections",
    "ZISError",
    "connection_created",
    "connection_deleted",
    "connection_refresh_failed",
    "connection_refreshed",
    "get_token",
]
