"""Authlib glue: the authorization server, its grants and the bearer-token validator.

The protocol rules (client authentication, PKCE, redirect URI matching, error responses)
are Authlib's. What is ours is where things are stored (:class:`ProviderState`) and two
races Authlib leaves to the storage: a code or refresh token presented twice at once is
re-checked under the state's issue lock, so only one request wins.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask, current_app

from .models import AuthorizationCode, DemoClient, DemoUser, IssuedToken
from .state import ProviderState

__all__ = ["BearerValidator", "DemoAuthorizationServer", "Issuer"]

_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class DemoAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server carrying our state, so grants reach it as ``self.server.state``."""

    def __init__(self, app: Flask, state: ProviderState) -> None:
        self.state = state
        super().__init__(app, query_client=state.query_client, save_token=self._store_token)
        self.register_token_generator("default", self._generate_token)
        self.register_grant(_AuthorizationCodeGrant, [_CodeChallenge(required=False)])
        self.register_grant(_RefreshTokenGrant)
        self.register_grant(_ClientCredentialsGrant)
        self.register_endpoint(_Revocation)

    def _store_token(self, token: dict[str, Any], oauth_request: Any) -> None:
        user = oauth_request.user
        self.state.save_token(
            IssuedToken(
                access_token=token["access_token"],
                refresh_token=token.get("refresh_token"),
                client_id=oauth_request.client.client_id,
                user_id=user.user_id if user else None,
                scope=token.get("scope", ""),
                token_type=token["token_type"],
                issued_at=time.time(),
                expires_in=token.get("expires_in"),
            )
        )

    def _generate_token(
        self,
        grant_type: str,
        client: DemoClient,
        user: DemoUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Token generator registered as Authlib's ``default``.

        Ours rather than Authlib's ``BearerTokenGenerator`` because that one drops
        ``expires_in`` when it is 0 and cannot ask the state whether to leave the refresh
        token out.
        """
        granted = client.get_allowed_scope(scope)
        if granted is None:
            raise InvalidScopeError()
        token: dict[str, Any] = {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32)}
        lifetime = expires_in if expires_in is not None else current_app.config["ACCESS_TOKEN_EXPIRES_IN"]
        if lifetime is not None:
            token["expires_in"] = int(lifetime)
        if include_refresh_token and self.state.issues_refresh_token():
            token["refresh_token"] = secrets.token_urlsafe(32)
        if granted:
            token["scope"] = granted
        return token


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        data = oauth_request.payload.data
        self.server.state.save_code(
            AuthorizationCode(
                code=code,
                client_id=oauth_request.client.client_id,
                redirect_uri=oauth_request.payload.redirect_uri,
                scope=oauth_request.scope,
                user_id=oauth_request.user.user_id,
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                expires_at=time.time() + current_app.config["AUTHORIZATION_CODE_EXPIRES_IN"],
            )
        )

    def query_authorization_code(self, code: str, client: DemoClient) -> AuthorizationCode | None:
        found: AuthorizationCode | None = self.server.state.find_code(code, client.client_id)
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        # Already marked used in create_token_response; kept because Authlib calls it.
        self.server.state.use_code(authorization_code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> DemoUser:
        return DemoUser(authorization_code.user_id)

    def create_token_response(self) -> tuple[int, Any, Any]:
        """Consume the code before issuing, so a replay racing this request gets invalid_grant."""
        state: ProviderState = self.server.state
        with state.issue_lock:
            if not state.use_code(self.request.authorization_code):
                raise InvalidGrantError("The authorization code was already used.")
            result: tuple[int, Any, Any] = super().create_token_response()
            return result


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS
    #: Rotation: every refresh answers with a new refresh token ...
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        found: IssuedToken | None = self.server.state.find_refresh_token(refresh_token)
        return found

    def authenticate_user(self, refresh_token: IssuedToken) -> DemoUser | None:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        """... and the presented one dies, so replaying it gives invalid_grant.

        Authlib calls this after saving the new token. When the state chose to issue no new
        refresh token, the old one must stay usable (as real providers that do not rotate
        behave).
        """
        state: ProviderState = self.server.state
        if state.issues_refresh_token():
            state.retire_refresh_token(refresh_token)

    def create_token_response(self) -> tuple[int, Any, Any]:
        """Issue under the state's issue lock, re-checking that the token is still live.

        Validation ran without the lock, so a concurrent refresh with the same token may have
        rotated it since; without this re-check both would succeed.
        """
        state: ProviderState = self.server.state
        with state.issue_lock:
            if not state.is_refresh_token_active(self.request.refresh_token.refresh_token):
                raise InvalidGrantError("The refresh token was already used or revoked.")
            result: tuple[int, Any, Any] = super().create_token_response()
            return result


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS


class _CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """Authlib's PKCE extension, plus "this client must use S256".

    ``CodeChallenge(required=True)`` only forces PKCE on public clients (auth method
    ``none``); our clients are confidential, so the per-client rule is added here.
    """

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        client: DemoClient = grant.request.client
        data = grant.request.payload.data
        if client.require_pkce and (
            not data.get("code_challenge") or data.get("code_challenge_method") != "S256"
        ):
            raise InvalidRequestError("This client must send a PKCE S256 'code_challenge'.")
        super().validate_code_challenge(grant, redirect_uri)


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = _AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        # The hint is only a hint (RFC 7009 §2.1): look the string up as either kind.
        found: IssuedToken | None = self.server.state.find_token(token_string)
        return found

    def revoke_token(self, token: IssuedToken, oauth_request: Any) -> None:
        # Revoking a refresh token ends the whole grant; an access token only itself.
        access_only = oauth_request.form.get("token") == token.access_token
        self.server.state.revoke(token, access_only=access_only)


class Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: Authlib adds ``iss`` to authorization redirects when this returns one."""

    def get_issuer(self) -> str | None:
        issuer: str | None = current_app.config.get("ISSUER")
        return issuer


class BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, state: ProviderState) -> None:
        super().__init__()
        self.state = state

    def authenticate_token(self, token_string: str) -> IssuedToken | None:
        return self.state.find_access_token(token_string)
