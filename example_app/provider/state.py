"""The demo provider's memory: clients, codes and tokens behind one lock.

:class:`ProviderState` is also the provider's one extension point. The endpoints hand
every request to :meth:`ProviderState.around_request` and ask
:meth:`ProviderState.issues_refresh_token` before putting a refresh token in an answer;
both do the plain thing here. A subclass passed to
:func:`~example_app.provider.create_provider_app` can watch or disturb the endpoints
through them (count calls, answer with a failure, stop rotating refresh tokens) without
touching the protocol code, so the demo keeps no code that only a test needs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Literal

from flask import Response

from .models import DEMO_USER_ID, AuthorizationCode, DemoClient, IssuedToken

__all__ = ["Endpoint", "ProviderState"]

#: The endpoints :meth:`ProviderState.around_request` is told about.
Endpoint = Literal["authorize", "token", "revocation"]


class ProviderState:
    """All provider data, guarded by one lock.

    ``clients`` may be read by anyone; the rest is reached through the methods, which the
    grants in :mod:`example_app.provider.server` call.
    """

    def __init__(self, user_id: str = DEMO_USER_ID) -> None:
        self.user_id = user_id
        self.lock = threading.Lock()
        # Authlib validates a token request before it issues anything, outside any lock of
        # ours; two concurrent requests with one code or refresh token could both pass. The
        # grants re-check under this lock while issuing, so the second one loses.
        self.issue_lock = threading.Lock()
        self.clients: dict[str, DemoClient] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._by_access: dict[str, IssuedToken] = {}
        self._by_refresh: dict[str, IssuedToken] = {}

    # -- registration ------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: Iterable[str],
        scope: str = "read write",
        grant_types: Iterable[str] = ("authorization_code", "refresh_token", "client_credentials"),
        token_endpoint_auth_method: str = "client_secret_basic",
        require_pkce: bool = False,
    ) -> None:
        """Register (or replace) a client.

        ``token_endpoint_auth_method`` is enforced: the client must authenticate exactly that
        way (``client_secret_basic`` or ``client_secret_post``). With ``require_pkce`` an
        authorization request without an S256 ``code_challenge`` is refused.
        """
        if token_endpoint_auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ValueError(
                f"token_endpoint_auth_method {token_endpoint_auth_method!r} is not supported; "
                "use 'client_secret_basic' or 'client_secret_post'."
            )
        client = DemoClient(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=tuple(redirect_uris),
            scope=scope,
            grant_types=tuple(grant_types),
            token_endpoint_auth_method=token_endpoint_auth_method,
            require_pkce=require_pkce,
        )
        with self.lock:
            self.clients[client_id] = client

    def is_refresh_token_active(self, token: str) -> bool:
        with self.lock:
            issued = self._by_refresh.get(token)
            return issued is not None and not issued.refresh_revoked

    # -- extension point ---------------------------------------------------------------

    def around_request(self, endpoint: Endpoint, respond: Callable[[], Response]) -> Response:
        """Answer one request to ``endpoint``; ``respond`` runs the real endpoint.

        Called inside the request context, for every request (both methods of
        ``authorize``). The demo just responds. An override may look at
        :data:`flask.request` first, return its own response instead of calling
        ``respond``, or look at the response afterwards.
        """
        return respond()

    def issues_refresh_token(self) -> bool:
        """Whether the token answer being built carries a new refresh token.

        Called inside the token request, possibly more than once per request. The demo
        always issues one and rotates it on every refresh. When this answers ``False`` for
        a refresh, the refresh token the client presented stays usable, as with providers
        that never rotate.
        """
        return True

    # -- storage used by the grants ----------------------------------------------------

    def query_client(self, client_id: str) -> DemoClient | None:
        with self.lock:
            return self.clients.get(client_id)

    def save_code(self, code: AuthorizationCode) -> None:
        with self.lock:
            self._codes[code.code] = code

    def find_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        with self.lock:
            found = self._codes.get(code)
            if found is None or found.used or found.client_id != client_id or time.time() >= found.expires_at:
                return None
            return found

    def use_code(self, code: AuthorizationCode) -> bool:
        """Mark a code used; ``False`` when another request already did."""
        with self.lock:
            if code.used:
                return False
            code.used = True
            return True

    def save_token(self, issued: IssuedToken) -> None:
        with self.lock:
            self._by_access[issued.access_token] = issued
            if issued.refresh_token:
                self._by_refresh[issued.refresh_token] = issued

    def find_access_token(self, token: str) -> IssuedToken | None:
        with self.lock:
            return self._by_access.get(token)

    def find_refresh_token(self, token: str) -> IssuedToken | None:
        """The live token response ``token`` is the refresh token of, if any."""
        with self.lock:
            issued = self._by_refresh.get(token)
            if issued is None or issued.refresh_revoked:
                return None
            return issued

    def find_token(self, token: str) -> IssuedToken | None:
        """Look ``token`` up as an access token, then as a refresh token."""
        with self.lock:
            return self._by_access.get(token) or self._by_refresh.get(token)

    def revoke(self, issued: IssuedToken, *, access_only: bool) -> None:
        with self.lock:
            issued.access_revoked = True
            if not access_only:
                issued.refresh_revoked = True

    def retire_refresh_token(self, issued: IssuedToken) -> None:
        with self.lock:
            issued.refresh_revoked = True
