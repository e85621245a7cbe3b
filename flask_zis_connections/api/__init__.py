"""The HTTP API (prefix ``/api/services/zis``): the service's Connections API.

Views are thin: parse and authenticate the request, call the extension's services,
shape JSON.  Where to look:

=====================  ==========================================================
``blueprint.py``       the blueprint and what every request goes through (body
                       limit, rate limits on credential-less routes, private headers)
``errors.py``          the error envelope every failure under the prefix leaves as
``auth.py``            who is calling: bearer tokens, admin sessions, CSRF check
``helpers.py``         what views share (auth with rate limits, origins, lookups)
``flow.py``            start, start_redirect, the provider's callback, access codes
``connections.py``     show, refresh, delete, and the listing of every type
``credentials.py``     bearer token, basic auth and API key connections
``clients.py``         the OAuth Clients API
``events.py``          the event log, newest first
``providers.py``       the provider preset catalog (no credentials)
``token_proxy.py``     the token endpoint proxied to the host's own
``health.py``          ``GET /health``
``openapi.py``         ``GET /openapi.json`` and the request validation built from it
``openapi_doc.py``     the OpenAPI 3.1 document itself
``serializers.py``     the JSON shapes
=====================  ==========================================================
"""

from __future__ import annotations

from . import (  # noqa: F401 - register the routes (openapi: and the request validation hook)
    clients,
    connections,
    credentials,
    events,
    flow,
    health,
    openapi,
    providers,
    token_proxy,
)
from .blueprint import URL_PREFIX, bp

__all__ = ["URL_PREFIX", "bp"]
