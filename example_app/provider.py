"""A small, real OAuth 2.0 authorization server for the demo and the test suite.

``flask-zis-connections`` is an OAuth *client*. Mocking the provider would only prove that
the client agrees with the mock, so the tests and the demo talk HTTP to this server instead.
It is built on Authlib's :class:`~authlib.integrations.flask_oauth2.AuthorizationServer`, so
the protocol rules (client authentication, PKCE, redirect URI matching, error responses) are
Authlib's, not ours.

Everything lives in memory on a :class:`ProviderState` (``app.extensions["demo_provider"]``):
registered clients, authorization codes, tokens, plus test instrumentation (a log of
token-endpoint calls and injectable faults). There is no login: the resource owner is a
fixed demo user, because the thing under test is the client, not the provider's users.

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
leaves ``expires_in`` out), ``FAULT_SLEEP`` (default 3), ``SLOW_SLEEP`` (default 0.5),
``AUTHORIZATION_CODE_EXPIRES_IN`` (default 600).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    TokenMixin,
    grants,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask, Response, current_app, g, jsonify, render_template_string, request

__all__ = [
    "DEMO_USER_ID",
    "FAULT_KINDS",
    "AuthorizationCode",
    "DemoClient",
    "DemoUser",
    "IssuedToken",
    "ProviderState",
    "create_provider_app",
]

#: The one resource owner. The consent page needs no login because nothing here tests users.
DEMO_USER_ID = "demo-user"

#: Faults :meth:`ProviderState.inject_token_fault` understands.
FAULT_KINDS = frozenset(
    {
        "timeout",
        "http500",
        "html200",
        "no_access_token",
        "invalid_grant",
        "invalid_client",
        "omit_refresh_token",
        "slow",
    }
)

_DEFAULT_CONFIG: dict[str, Any] = {
    "ISSUER": None,
    "ACCESS_TOKEN_EXPIRES_IN": 3600,
    "AUTHORIZATION_CODE_EXPIRES_IN": 600,
    "FAULT_SLEEP": 3.0,
    "SLOW_SLEEP": 0.5,
}

_EXTENSION_KEY = "demo_provider"


# --------------------------------------------------------------------------- models


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
    revoked: bool = False

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
        # secret in the body is rejected, so tests notice a client using the wrong method.
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


# --------------------------------------------------------------------------- state


class ProviderState:
    """All provider data and test instrumentation, guarded by one lock.

    Attributes other code may read: ``clients``, ``token_calls`` (one dict per request that
    reached ``/oauth/token``, failed ones included), ``revocations`` (one per
    ``/oauth/revoke`` request) and ``authorize_requests`` (the query of every consent-page
    GET, so tests can check what a client sent). Lists are appended under the lock; read them
    after the requests you care about have returned.
    """

    def __init__(self, user_id: str = DEMO_USER_ID) -> None:
        self.user_id = user_id
        self.lock = threading.Lock()
        # Authlib validates a token request before it issues anything, outside any lock of
        # ours; two concurrent requests with one code or refresh token could both pass. The
        # grants re-check under this lock while issuing, so the second one loses.
        self.issue_lock = threading.Lock()
        self.clients: dict[str, DemoClient] = {}
        self.token_calls: list[dict[str, Any]] = []
        self.revocations: list[dict[str, Any]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self._codes: dict[str, AuthorizationCode] = {}
        self._by_access: dict[str, IssuedToken] = {}
        self._by_refresh: dict[str, IssuedToken] = {}
        self._faults: deque[str] = deque()

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

    def revoke_client(self, client_id: str) -> None:
        """Make the client unknown to every endpoint: later token calls get invalid_client."""
        with self.lock:
            try:
                self.clients[client_id].revoked = True
            except KeyError:
                raise KeyError(
                    f"No client {client_id!r} is registered; call register_client first."
                ) from None

    def revoke_refresh_token(self, token: str) -> None:
        """Revoke one refresh token: the next refresh with it gets invalid_grant."""
        with self.lock:
            try:
                self._by_refresh[token].refresh_revoked = True
            except KeyError:
                raise KeyError("This provider never issued that refresh token.") from None

    def is_refresh_token_active(self, token: str) -> bool:
        with self.lock:
            issued = self._by_refresh.get(token)
            return issued is not None and not issued.refresh_revoked

    def is_access_token_active(self, token: str) -> bool:
        with self.lock:
            issued = self._by_access.get(token)
            return issued is not None and not issued.is_revoked() and not issued.is_expired()

    # -- faults and counters -----------------------------------------------------------

    def inject_token_fault(self, kind: str, times: int = 1) -> None:
        """Queue ``times`` copies of a fault for the next token-endpoint requests.

        Faults are consumed one per request, in order, whatever the grant type.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault {kind!r}; pick one of {sorted(FAULT_KINDS)}.")
        if times < 1:
            raise ValueError("times must be at least 1.")
        with self.lock:
            self._faults.extend([kind] * times)

    @property
    def pending_faults(self) -> list[str]:
        with self.lock:
            return list(self._faults)

    def reset_counters(self) -> None:
        """Forget recorded calls (token, revocation, authorize); faults stay queued."""
        with self.lock:
            self.token_calls.clear()
            self.revocations.clear()
            self.authorize_requests.clear()

    def _count(self, grant_type: str | None) -> int:
        with self.lock:
            return sum(1 for c in self.token_calls if grant_type is None or c["grant_type"] == grant_type)

    @property
    def token_call_count(self) -> int:
        return self._count(None)

    @property
    def refresh_call_count(self) -> int:
        return self._count("refresh_token")

    @property
    def code_exchange_count(self) -> int:
        return self._count("authorization_code")

    @property
    def client_credentials_call_count(self) -> int:
        return self._count("client_credentials")

    def _begin_token_call(self, entry: dict[str, Any]) -> str | None:
        """Record a token request and take the next fault, in one step so order holds."""
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
            entry["fault"] = fault
            self.token_calls.append(entry)
            return fault

    def _record(self, log: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        with self.lock:
            log.append(entry)

    def _finish(self, entry: dict[str, Any], status: int) -> None:
        with self.lock:
            entry["status"] = status

    def _record_authorize(self, params: dict[str, str]) -> None:
        with self.lock:
            self.authorize_requests.append(params)

    # -- storage used by the grants ----------------------------------------------------

    def _query_client(self, client_id: str) -> DemoClient | None:
        with self.lock:
            client = self.clients.get(client_id)
        return None if client is None or client.revoked else client

    def _save_code(self, code: AuthorizationCode) -> None:
        with self.lock:
            self._codes[code.code] = code

    def _find_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        with self.lock:
            found = self._codes.get(code)
            if found is None or found.used or found.client_id != client_id or time.time() >= found.expires_at:
                return None
            return found

    def _use_code(self, code: AuthorizationCode) -> bool:
        """Mark a code used; ``False`` when another request already did."""
        with self.lock:
            if code.used:
                return False
            code.used = True
            return True

    def _save_token(self, issued: IssuedToken) -> None:
        with self.lock:
            self._by_access[issued.access_token] = issued
            if issued.refresh_token:
                self._by_refresh[issued.refresh_token] = issued

    def _find_access(self, token: str) -> IssuedToken | None:
        with self.lock:
            return self._by_access.get(token)

    def _find_refresh(self, token: str, *, active_only: bool = True) -> IssuedToken | None:
        with self.lock:
            issued = self._by_refresh.get(token)
            if issued is None or (active_only and issued.refresh_revoked):
                return None
            return issued

    def _find_any(self, token: str) -> IssuedToken | None:
        with self.lock:
            return self._by_access.get(token) or self._by_refresh.get(token)

    def _revoke(self, issued: IssuedToken, *, access_only: bool) -> None:
        with self.lock:
            issued.access_revoked = True
            if not access_only:
                issued.refresh_revoked = True

    def _revoke_refresh(self, issued: IssuedToken) -> None:
        with self.lock:
            issued.refresh_revoked = True


# --------------------------------------------------------------------------- Authlib glue


class _Server(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server carrying our state, so grants reach it as ``self.server.state``."""

    def __init__(self, app: Flask, state: ProviderState) -> None:
        self.state = state
        super().__init__(app, query_client=state._query_client, save_token=self._store_token)

    def _store_token(self, token: dict[str, Any], oauth_request: Any) -> None:
        user = oauth_request.user
        self.state._save_token(
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


def _current_fault() -> str | None:
    """The fault the token view took for this request (``flask.g`` is request-scoped)."""
    fault: str | None = g.get("demo_provider_fault")
    return fault


def _generate_token(
    grant_type: str,
    client: DemoClient,
    user: DemoUser | None = None,
    scope: str | None = None,
    expires_in: int | None = None,
    include_refresh_token: bool = True,
) -> dict[str, Any]:
    """Token generator registered as Authlib's ``default``.

    Ours rather than Authlib's ``BearerTokenGenerator`` because that one drops ``expires_in``
    when it is 0 and cannot leave out the refresh token for the ``omit_refresh_token`` fault.
    """
    granted = client.get_allowed_scope(scope)
    if granted is None:
        raise InvalidScopeError()
    token: dict[str, Any] = {"token_type": "Bearer", "access_token": secrets.token_urlsafe(32)}
    lifetime = expires_in if expires_in is not None else current_app.config["ACCESS_TOKEN_EXPIRES_IN"]
    if lifetime is not None:
        token["expires_in"] = int(lifetime)
    if include_refresh_token and _current_fault() != "omit_refresh_token":
        token["refresh_token"] = secrets.token_urlsafe(32)
    if granted:
        token["scope"] = granted
    return token


_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        data = oauth_request.payload.data
        self.server.state._save_code(
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
        found: AuthorizationCode | None = self.server.state._find_code(code, client.client_id)
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        # Already marked used in create_token_response; kept because Authlib calls it.
        self.server.state._use_code(authorization_code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> DemoUser:
        return DemoUser(authorization_code.user_id)

    def create_token_response(self) -> tuple[int, Any, Any]:
        """Consume the code before issuing, so a replay racing this request gets invalid_grant."""
        state: ProviderState = self.server.state
        with state.issue_lock:
            if not state._use_code(self.request.authorization_code):
                raise InvalidGrantError("The authorization code was already used.")
            result: tuple[int, Any, Any] = super().create_token_response()
            return result


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS
    #: Rotation: every refresh answers with a new refresh token ...
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        found: IssuedToken | None = self.server.state._find_refresh(refresh_token)
        return found

    def authenticate_user(self, refresh_token: IssuedToken) -> DemoUser | None:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        """... and the presented one dies, so replaying it gives invalid_grant.

        Authlib calls this after saving the new token. Under the ``omit_refresh_token`` fault
        no new refresh token was issued, so the old one must stay usable (as real providers
        that do not rotate behave).
        """
        if _current_fault() == "omit_refresh_token":
            return
        self.server.state._revoke_refresh(refresh_token)

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
        found: IssuedToken | None = self.server.state._find_any(token_string)
        return found

    def revoke_token(self, token: IssuedToken, oauth_request: Any) -> None:
        # Revoking a refresh token ends the whole grant; an access token only itself.
        access_only = oauth_request.form.get("token") == token.access_token
        self.server.state._revoke(token, access_only=access_only)


class _Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: Authlib adds ``iss`` to authorization redirects when this returns one."""

    def get_issuer(self) -> str | None:
        issuer: str | None = current_app.config.get("ISSUER")
        return issuer


class _BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, state: ProviderState) -> None:
        super().__init__()
        self.state = state

    def authenticate_token(self, token_string: str) -> IssuedToken | None:
        return self.state._find_access(token_string)


# --------------------------------------------------------------------------- views

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


def _json_error(error: str, status: int) -> Response:
    response = jsonify({"error": error})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _fault_response(fault: str | None) -> Response | None:
    """The canned answer for a fault, or ``None`` to let the real endpoint answer."""
    if fault == "timeout":
        time.sleep(current_app.config["FAULT_SLEEP"])
    elif fault == "slow":
        time.sleep(current_app.config["SLOW_SLEEP"])
    elif fault == "http500":
        return Response("Internal Server Error (injected)", 500, mimetype="text/plain")
    elif fault == "html200":
        return Response("<html>oops</html>", 200, mimetype="text/html")
    elif fault == "no_access_token":
        return jsonify({"token_type": "bearer"})
    elif fault == "invalid_grant":
        return _json_error("invalid_grant", 400)
    elif fault == "invalid_client":
        return _json_error("invalid_client", 401)
    return None


def _describe_token_request() -> dict[str, Any]:
    form = request.form
    basic_id, _secret = extract_basic_authorization(request.headers)
    if basic_id:
        auth_method = "client_secret_basic"
    elif "client_secret" in form:
        auth_method = "client_secret_post"
    else:
        auth_method = "none"
    entry: dict[str, Any] = {
        "grant_type": form.get("grant_type"),
        "client_id": basic_id or form.get("client_id"),
        "auth_method": auth_method,
        "scope": form.get("scope"),
        "redirect_uri": form.get("redirect_uri"),
        "has_code_verifier": "code_verifier" in form,
        "status": None,
    }
    if entry["grant_type"] == "refresh_token":
        entry["refresh_token"] = form.get("refresh_token")
    return entry


def create_provider_app(config: dict[str, Any] | None = None) -> Flask:
    """Build a provider app; register clients on ``app.extensions["demo_provider"]``."""
    app = Flask(__name__)
    app.config.update(_DEFAULT_CONFIG)
    app.config.update(config or {})

    state = ProviderState()
    app.extensions[_EXTENSION_KEY] = state

    server = _Server(app, state)
    server.register_token_generator("default", _generate_token)
    server.register_grant(_AuthorizationCodeGrant, [_CodeChallenge(required=False)])
    server.register_grant(_RefreshTokenGrant)
    server.register_grant(_ClientCredentialsGrant)
    server.register_endpoint(_Revocation)
    issuer = _Issuer()
    server.register_extension(issuer)  # calls issuer(server), which registers the hook

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(_BearerValidator(state))

    def authorization_error(error: OAuth2Error) -> Response:
        # Errors raised before create_authorization_response (bad scope, missing PKCE) skip
        # Authlib's RFC 9207 hook; RFC 9207 wants iss on error redirects too.
        response: Response = server.handle_error_response(None, error)
        issuer.add_issuer_parameter(server, response)
        return response

    @app.route("/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        user = DemoUser(state.user_id)
        if request.method == "GET":
            state._record_authorize(request.args.to_dict())
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

    @app.post("/oauth/token")
    def issue_token() -> Response:
        entry = _describe_token_request()
        fault = state._begin_token_call(entry)
        g.demo_provider_fault = fault
        response = _fault_response(fault)
        if response is None:
            # omit_refresh_token is handled inside: _generate_token leaves the refresh token
            # out and _RefreshTokenGrant.revoke_old_credential keeps the old one alive.
            response = server.create_token_response()
        state._finish(entry, response.status_code)
        return response

    @app.post("/oauth/revoke")
    def revoke_token() -> Response:
        basic_id, _secret = extract_basic_authorization(request.headers)
        entry: dict[str, Any] = {
            "token": request.form.get("token"),
            "token_type_hint": request.form.get("token_type_hint"),
            "client_id": basic_id or request.form.get("client_id"),
            "status": None,
        }
        state._record(state.revocations, entry)
        response: Response = server.create_endpoint_response("revocation")
        state._finish(entry, response.status_code)
        return response

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


def main() -> None:
    """Run the provider alone for the demo: ``python -m example_app.provider``.

    Registers ``demo-client`` / ``demo-secret`` for the redirect URI in
    ``DEMO_PROVIDER_REDIRECT_URI`` (default: the example app's callback on port 5000).
    """
    port = int(os.environ.get("DEMO_PROVIDER_PORT", "5001"))
    app = create_provider_app({"ISSUER": f"http://127.0.0.1:{port}"})
    state: ProviderState = app.extensions[_EXTENSION_KEY]
    state.register_client(
        "demo-client",
        "demo-secret",
        [
            os.environ.get(
                "DEMO_PROVIDER_REDIRECT_URI",
                "http://127.0.0.1:5000/api/services/zis/connections/oauth/callback",
            )
        ],
    )
    app.run("127.0.0.1", port, threaded=True)


if __name__ == "__main__":
    main()
