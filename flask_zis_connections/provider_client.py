"""Calls to third-party providers' token and revocation endpoints, through Authlib.

Following Authlib's own integrations, an ``OAuth2Session`` is built per operation in a
``with`` block: nothing request-scoped lives on a shared object, so concurrent flows
and refreshes cannot see each other's state.  Every way a provider can fail (timeout,
connection error, 5xx, HTML, JSON without ``access_token``) becomes a
:class:`~flask_zis_connections.errors.ProviderError` whose message never contains the
provider's body; an OAuth error answer becomes :class:`TokenRequestRejected` carrying
the (validated) OAuth error code so the lifecycle can decide on re-authorization.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from .crypto import Encryptor
from .domain import OAuthClient
from .errors import InvalidValue, ProviderError
from .outbound import (
    DeadlineExceeded,
    DestinationRefused,
    OutboundPolicy,
    OutboundRefused,
    RedirectRefused,
    ResponseTooLarge,
    harden,
)
from .validation import DNS_LABEL_RE, SUBDOMAIN_PLACEHOLDER

#: A monotonic instant the call must be over by, re-read while it runs.
Deadline = Callable[[], float]

_OAUTH_ERROR_RE = re.compile(r"[a-z0-9_.-]{1,64}")
#: OAuth errors meaning "this grant/client is no good any more": a person must reconnect.
REAUTH_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})

__all__ = [
    "REAUTH_ERRORS",
    "TokenRequestRejected",
    "TokenResponse",
    "create_s256_code_challenge",
    "generate_token",
]


class TokenRequestRejected(ProviderError):
    """The provider answered the token request with an OAuth error (RFC 6749 §5.2)."""

    def __init__(self, error: str) -> None:
        self.error = error if _OAUTH_ERROR_RE.fullmatch(error) else "invalid_response"
        super().__init__(f"The provider refused the token request ({self.error}).")


@dataclass(frozen=True)
class TokenResponse:
    """A validated token endpoint answer."""

    access_token: str
    token_type: str
    refresh_token: str | None
    expires_in: float | None
    scope: str | None
    raw_body: str

    def expiry(self, now: datetime) -> datetime | None:
        """When the access token expires, to the second (None: the provider did not say)."""
        if self.expires_in is None:
            return None
        return (now + timedelta(seconds=self.expires_in)).replace(microsecond=0)

    def stored_fields(
        self,
        encryptor: Encryptor,
        now: datetime,
        *,
        kept_refresh_token: str | None,
        kept_scope: str | None,
    ) -> dict[str, Any]:
        """The connection fields this answer sets, encrypted: one rule for a new
        connection (the flow) and a refreshed one (the lifecycle).

        An answer without a refresh token keeps ``kept_refresh_token`` (re-encrypted
        under the newest key, so this write never puts old-key ciphertext back behind a
        concurrent ``rotate-keys``); without ``scope`` the scope is ``kept_scope``: the
        requested one for a new grant, the stored one on refresh (RFC 6749 §5.1, §6).
        """
        return {
            "access_token_enc": encryptor.encrypt(self.access_token),
            "refresh_token_enc": encryptor.encrypt_optional(self.refresh_token or kept_refresh_token),
            "token_response_enc": encryptor.encrypt(self.raw_body),
            "token_type": self.token_type,
            "token_expiry": self.expiry(now),
            "permission_scope": self.scope if self.scope is not None else kept_scope,
        }


def interpolate(url: str, subdomain: str | None) -> str:
    """Replace ``{{subdomain}}``; the value must be one plain DNS label."""
    if SUBDOMAIN_PLACEHOLDER not in url:
        return url
    if subdomain is None:
        raise InvalidValue("oauth_url_subdomain", "is required: the OAuth client's URL has a {{subdomain}}")
    if not DNS_LABEL_RE.fullmatch(subdomain):
        raise InvalidValue("oauth_url_subdomain", "must be a single DNS label like 'acme'")
    return url.replace(SUBDOMAIN_PLACEHOLDER, subdomain.lower())


def parse_token_response(text: str) -> TokenResponse:
    """Validate a token response body; ``ProviderError`` when it is not usable."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise ProviderError("The provider's token response is not JSON.") from exc
    if not isinstance(data, dict):
        raise ProviderError("The provider's token response is not a JSON object.")
    if "error" in data:
        raise TokenRequestRejected(str(data["error"]))
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError("The provider's token response has no access_token.")
    token_type = data.get("token_type", "bearer")
    if not isinstance(token_type, str) or not token_type:
        raise ProviderError("The provider's token response has an invalid token_type.")
    refresh_token = data.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise ProviderError("The provider's token response has an invalid refresh_token.")
    expires_in: float | None = None
    raw_expiry = data.get("expires_in")
    if isinstance(raw_expiry, bool):
        raise ProviderError("The provider's token response has an invalid expires_in.")
    if raw_expiry is not None and raw_expiry != "":
        try:
            expires_in = float(raw_expiry)
        except (TypeError, ValueError) as exc:
            raise ProviderError("The provider's token response has an invalid expires_in.") from exc
        if not 0 <= expires_in < 10 * 365 * 86400:
            raise ProviderError("The provider's token response has an invalid expires_in.")
    scope = data.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    if scope is not None and not isinstance(scope, str):
        scope = None
    return TokenResponse(
        access_token=access_token,
        token_type=token_type.lower(),
        refresh_token=refresh_token,
        expires_in=expires_in,
        scope=scope,
        raw_body=text,
    )


def refusal_message(endpoint: str, exc: OutboundRefused, policy: OutboundPolicy) -> str:
    """What to tell the caller when the outbound guard stopped a call (no URL, no body)."""
    if isinstance(exc, RedirectRefused):
        return (
            f"The provider's {endpoint} answered with a redirect, which is never followed "
            "(it could carry the client secret or a token elsewhere). Check the OAuth "
            "client's URLs."
        )
    if isinstance(exc, DeadlineExceeded):
        return f"The provider's {endpoint} did not answer within {policy.timeout:g}s. Try again later."
    if isinstance(exc, ResponseTooLarge):
        return (
            f"The provider's {endpoint} answered with more than "
            f"{policy.max_response_bytes} bytes (ZIS_MAX_PROVIDER_RESPONSE_BYTES)."
        )
    if isinstance(exc, DestinationRefused):
        return (
            f"The provider's {endpoint} resolves to a loopback, private or link-local "
            "address, which is refused; list the host in ZIS_ALLOWED_PRIVATE_HOSTS if it "
            "is meant to be internal."
        )
    return f"The provider's {endpoint} could not be called safely."


class ProviderClient:
    """Token operations for one OAuth client (with its secret decrypted).

    Every call goes through :func:`~flask_zis_connections.outbound.harden`: no
    redirect is followed, private destinations are refused, and the whole call
    (connect, headers, body) has one deadline and a size cap.
    """

    @classmethod
    def for_client(
        cls, client: OAuthClient, encryptor: Encryptor, policy: OutboundPolicy, subdomain: str | None
    ) -> ProviderClient:
        """The client's token operations, its secret decrypted for this call only."""
        return cls(
            client, encryptor.decrypt_optional(client.client_secret_enc), policy=policy, subdomain=subdomain
        )

    def __init__(
        self,
        client: OAuthClient,
        client_secret: str | None,
        *,
        policy: OutboundPolicy,
        subdomain: str | None = None,
    ) -> None:
        self.client = client
        self._secret = client_secret
        self.policy = policy
        self.timeout = policy.timeout
        self.token_url = interpolate(client.token_url, subdomain)
        # Interpolated only when revoking: a revocation URL that needs a subdomain the
        # connection lacks must not break its refreshes, only (reportedly) its revocation.
        self._subdomain = subdomain

    def _session(self, deadline: Deadline | None) -> OAuth2Session:
        session = OAuth2Session(
            client_id=self.client.client_id,
            client_secret=self._secret,
            token_endpoint_auth_method=self.client.token_endpoint_auth_method,
            revocation_endpoint_auth_method=self.client.token_endpoint_auth_method,
        )
        harden(session, self.policy, deadline=deadline)
        return session

    def _token_request(self, call: str, deadline: Deadline | None = None, **kwargs: Any) -> TokenResponse:
        captured: list[requests.Response] = []

        def capture(resp: requests.Response) -> requests.Response:
            captured.append(resp)
            return resp

        try:
            with self._session(deadline) as session:
                session.register_compliance_hook("access_token_response", capture)
                session.register_compliance_hook("refresh_token_response", capture)
                getattr(session, call)(self.token_url, timeout=self.timeout, **kwargs)
        except OutboundRefused as exc:
            raise ProviderError(refusal_message("token endpoint", exc, self.policy)) from exc
        except requests.Timeout as exc:
            raise ProviderError(
                f"The provider's token endpoint did not answer within {self.timeout:g}s. Try again later."
            ) from exc
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise ProviderError(
                f"The provider's token endpoint failed (HTTP {status}). Try again later."
            ) from exc
        except requests.RequestException as exc:
            raise ProviderError(
                "The provider's token endpoint could not be reached. Check the OAuth "
                "client's token_url and try again."
            ) from exc
        except AuthlibBaseError as exc:
            raise TokenRequestRejected(str(getattr(exc, "error", "") or "")) from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderError("The provider's token response is malformed.") from exc
        if not captured:
            raise ProviderError("The provider's token response is malformed.")
        resp = captured[-1]
        if resp.status_code != 200:
            raise ProviderError(f"The provider's token endpoint failed (HTTP {resp.status_code}).")
        return parse_token_response(resp.text)

    def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str | None) -> TokenResponse:
        kwargs: dict[str, Any] = {
            "code": code,
            "redirect_uri": redirect_uri,
            "grant_type": "authorization_code",
        }
        if code_verifier:
            kwargs["code_verifier"] = code_verifier
        return self._token_request("fetch_token", **kwargs)

    def client_credentials(self, scope: str | None, *, deadline: Deadline | None = None) -> TokenResponse:
        kwargs: dict[str, Any] = {"grant_type": "client_credentials"}
        if scope:
            kwargs["scope"] = scope
        return self._token_request("fetch_token", deadline, **kwargs)

    def refresh(self, refresh_token: str, *, deadline: Deadline | None = None) -> TokenResponse:
        """``deadline`` (a monotonic instant, re-read while the call runs) cuts the call
        short when the caller's refresh lease could lapse first."""
        return self._token_request("refresh_token", deadline, refresh_token=refresh_token)

    def revoke(self, token: str, token_type_hint: str) -> None:
        """RFC 7009 revocation; raises ``ProviderError`` on any failure (``InvalidValue``
        when the URL needs a subdomain the connection was made without)."""
        if not self.client.revocation_url:
            return
        url = interpolate(self.client.revocation_url, self._subdomain)
        try:
            with self._session(None) as session:
                resp = session.revoke_token(
                    url,
                    token,
                    token_type_hint=token_type_hint,
                    timeout=self.timeout,
                )
        except OutboundRefused as exc:
            raise ProviderError(refusal_message("revocation endpoint", exc, self.policy)) from exc
        except requests.RequestException as exc:
            raise ProviderError("The provider's revocation endpoint could not be reached.") from exc
        if resp.status_code != 200:
            raise ProviderError(f"The provider's revocation endpoint failed (HTTP {resp.status_code}).")
