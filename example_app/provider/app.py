"""The demo provider's Flask app: consent page, token and revocation endpoints, ``/api/me``.

The views only parse the request and hand it to Authlib; each goes through
:meth:`ProviderState.around_request`, the provider's extension point.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from flask import Flask, Response, jsonify, render_template_string, request

from .models import DemoUser
from .server import BearerValidator, DemoAuthorizationServer, Issuer
from .state import ProviderState

__all__ = ["EXTENSION_KEY", "create_provider_app"]

#: Where :func:`create_provider_app` puts the app's :class:`ProviderState`.
EXTENSION_KEY = "demo_provider"

_DEFAULT_CONFIG: dict[str, Any] = {
    "ISSUER": None,
    "ACCESS_TOKEN_EXPIRES_IN": 3600,
    "AUTHORIZATION_CODE_EXPIRES_IN": 600,
}

_CONSENT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Authorize {{ client_id }}</title></head>
<body>
  <h1>Authorize {{ client_id }}?</h1>
  <p>Signed in as <strong>{{ user_id }}</strong> (demo provider, no login).</p>
  <p>{{ client_id }} asks for: <code>{{ scope or "(default scope)" }}</code></p>
  <p>You will be sent back to <code>{{ redirect_uri }}</code>.</p>
  <form method="post" action="{{ action }}">
    <button type="submit" name="confirm" value="yes">Approve</button>
    <button type="submit" name="confirm" value="no">Deny</button>
  </form>
</body>
</html>
"""


def create_provider_app(config: dict[str, Any] | None = None, state: ProviderState | None = None) -> Flask:
    """Build a provider app; register clients on ``app.extensions["demo_provider"]``.

    ``state`` replaces the plain :class:`ProviderState`, for a subclass that overrides its
    extension point.
    """
    app = Flask(__package__ or __name__)  # the package's name, for its logger
    app.config.update(_DEFAULT_CONFIG)
    app.config.update(config or {})

    state = ProviderState() if state is None else state
    app.extensions[EXTENSION_KEY] = state

    server = DemoAuthorizationServer(app, state)
    issuer = Issuer()
    server.register_extension(issuer)  # calls issuer(server), which registers the hook

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(BearerValidator(state))

    def authorization_error(error: OAuth2Error) -> Response:
        # Errors raised before create_authorization_response (bad scope, missing PKCE) skip
        # Authlib's RFC 9207 hook; RFC 9207 wants iss on error redirects too.
        response: Response = server.handle_error_response(None, error)
        issuer.add_issuer_parameter(server, response)
        return response

    def consent() -> Response:
        user = DemoUser(state.user_id)
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return authorization_error(error)
        if request.method == "GET":
            page = render_template_string(
                _CONSENT_PAGE,
                client_id=grant.client.client_id,
                user_id=user.user_id,
                scope=grant.request.scope,
                redirect_uri=grant.redirect_uri,
                # The form posts back the same query: Authlib re-validates it on POST.
                action=request.script_root + request.full_path,
            )
            response = Response(page, mimetype="text/html")
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Cache-Control"] = "no-store"
            return response
        approved = request.form.get("confirm") == "yes"
        result: Response = server.create_authorization_response(
            grant=grant, grant_user=user if approved else None
        )
        return result

    @app.route("/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        return state.around_request("authorize", consent)

    @app.post("/oauth/token")
    def issue_token() -> Response:
        return state.around_request("token", server.create_token_response)

    @app.post("/oauth/revoke")
    def revoke_token() -> Response:
        return state.around_request("revocation", lambda: server.create_endpoint_response("revocation"))

    @app.get("/api/me")
    def me() -> Response:
        with require_oauth.acquire() as token:
            return jsonify(
                {
                    "sub": token.user_id,
                    "user_id": token.user_id,
                    "client_id": token.client_id,
                    "scope": token.scope,
                }
            )

    return app
