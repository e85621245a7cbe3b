"""What the demo provider stores: clients, authorization codes and issued tokens.

Each class is shaped the way Authlib's mixins ask, so Authlib's grants can read them
directly; nothing here touches a database because the demo keeps everything in memory.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    TokenMixin,
    list_to_scope,
    scope_to_list,
)

__all__ = ["DEMO_USER_ID", "AuthorizationCode", "DemoClient", "DemoUser", "IssuedToken"]

#: The one resource owner. The consent page needs no login because the demo is about the
#: client side of OAuth, not the provider's users.
DEMO_USER_ID = "demo-user"


@dataclass(frozen=True)
class DemoUser:
    """The resource owner Authlib attaches to codes and tokens (it only needs a truthy object)."""

    user_id: str

    def get_user_id(self) -> str:
        return self.user_id


@dataclass
class DemoClient(ClientMixin):  # type: ignore[misc]
    """A registered OAuth client, shaped the way Authlib's ``ClientMixin`` asks."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    scope: str
    grant_types: tuple[str, ...]
    token_endpoint_auth_method: str
    require_pkce: bool

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only unambiguous with one registered URI; otherwise the client must send one.
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """Grant the requested scopes this client may have; all of them if none were asked.

        ``None`` (nothing requested is allowed) makes Authlib answer ``invalid_scope``.
        """
        allowed = scope_to_list(self.scope) or []
        if not scope:
            return str(list_to_scope(allowed))
        granted = [s for s in scope_to_list(scope) or [] if s in allowed]
        return str(list_to_scope(granted)) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string match, as OAuth 2.1 / RFC 9700 require: no prefix or pattern matching.
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # Strict on purpose: a client registered for client_secret_basic that sends its
        # secret in the body is rejected, so a client using the wrong method is noticed.
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    """An issued authorization code; ``used`` flips once, under the state lock."""

    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    user_id: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float
    used: bool = False

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class IssuedToken(TokenMixin):  # type: ignore[misc]
    """One token response: its access token and, usually, a refresh token."""

    access_token: str
    refresh_token: str | None
    client_id: str
    user_id: str | None
    scope: str
    token_type: str
    issued_at: float
    expires_in: int | None
    access_revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: DemoClient) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int | None:
        return self.expires_in

    def is_expired(self) -> bool:
        if self.expires_in is None:
            return False
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.access_revoked

    def get_user(self) -> DemoUser | None:
        return DemoUser(self.user_id) if self.user_id else None
