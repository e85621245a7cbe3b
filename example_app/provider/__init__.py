"""A small, real OAuth 2.0 authorization server for the demo.

``flask-zis-connections`` is an OAuth *client*, so the demo needs a provider to connect to;
this one is mounted at ``/provider`` by the example app. It is built on Authlib's
:class:`~authlib.integrations.flask_oauth2.AuthorizationServer`, so the protocol rules
(client authentication, PKCE, redirect URI matching, error responses) are Authlib's.

Everything lives in memory on a :class:`ProviderState` (``app.extensions["demo_provider"]``):
registered clients, authorization codes and tokens. There is no login: the resource owner
is a fixed demo user, because the demo is about the client, not the provider's users.

Endpoints:

=========================  ====================================================
``GET /oauth/authorize``   consent page (Approve / Deny)
``POST /oauth/authorize``  ``confirm=yes`` approves; anything else denies
``POST /oauth/token``      authorization_code (+PKCE), refresh_token (rotating),
                           client_credentials
``POST /oauth/revoke``     RFC 7009 token revocation
``GET /api/me``            a protected resource, to show a token works
=========================  ====================================================

Config keys (plain, this is not the extension): ``ISSUER`` (RFC 9207 ``iss`` on authorization
responses; default ``None``), ``ACCESS_TOKEN_EXPIRES_IN`` (seconds, default 3600; ``None``
leaves ``expires_in`` out), ``AUTHORIZATION_CODE_EXPIRES_IN`` (default 600).

Modules: :mod:`.models` (what is stored), :mod:`.state` (the store and the extension point),
:mod:`.server` (Authlib's server and grants), :mod:`.app` (the views). Run it alone with
``python -m example_app.provider``.
"""

from __future__ import annotations

from .app import EXTENSION_KEY, create_provider_app
from .models import DEMO_USER_ID, AuthorizationCode, DemoClient, DemoUser, IssuedToken
from .state import Endpoint, ProviderState

__all__ = [
    "DEMO_USER_ID",
    "EXTENSION_KEY",
    "AuthorizationCode",
    "DemoClient",
    "DemoUser",
    "Endpoint",
    "IssuedToken",
    "ProviderState",
    "create_provider_app",
]
