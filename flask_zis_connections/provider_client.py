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

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict

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
from .signals import timed_call
from .token_answer import TokenRequestRejected, TokenResponse, oauth_error, parse_token_response
from .validation import DNS_LABEL_RE, SUBDOMAIN_PLACEHOLDER

#: A monotonic instant the call must be over by, re-read while it runs.
Deadline = Callable[[], float]

#: OAuth errors meaning "this grant/client is no good any more": a person must reconnect.
REAUTH_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})

__all__ = [
    "REAUTH_ERRORS",
    "TokenRequestRejected",
    "TokenResponse",
    "create_s256_code_challenge",
    "generate_token",
]


class TokenSession(OAuth2Session):  # type: ignore[misc]  # Authlib ships no type hints
    """Authlib's session, preparing a token endpoint's form post without requests'
    general-purpose merging.

    requests (2.34 and later) checks its arguments against ``typing`` protocols, and on
    Python 3.11 each such check walks the protocol's members: eleven of them in one
    token call, about a third of the CPU the call spends before it connects (1.24 ms of
    it, uncontended).  A refresh's holder spends that CPU while every other request
    of a burst waits for its answer, and under the burst each millisecond of it costs
    many of waiting for the GIL.

    What Authlib sends a token or revocation endpoint is always the same shape: a dict
    of strings as the form, its own headers and client authentication, and nothing
    from the session but its headers and hooks (:func:`~.outbound.harden` turns off
    ``trust_env``; no cookies, proxies or query parameters).  Such a request, and only
    such, is prepared here exactly as :meth:`requests.Session.prepare_request` would
    (the form encoded as requests encodes a dict); any other goes through requests.
    """

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        data = request.data
        if (
            self.trust_env
            or self.cookies
            or self.params
            or self.auth is not None
            or any(self.hooks.values())
            or request.cookies
            or request.params
            or request.files
            or request.json is not None
            or type(data) is not dict
            or not data
            or not all(type(k) is str and type(v) is str for k, v in data.items())
        ):
            return super().prepare_request(request)  # type: ignore[no-any-return]
        headers = CaseInsensitiveDict(self.headers)
        headers.update(request.headers or {})
        for key in [k for k, v in headers.items() if v is None]:
            del headers[key]
        if "content-type" not in headers:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=str(request.method).upper(),
            url=request.url,
            headers=headers,
            data=urlencode(list(data.items())),
            auth=request.auth,
            cookies=RequestsCookieJar(),
            hooks=request.hooks,
        )
        return prepared

    def merge_environment_settings(
        self, url: Any, proxies: Mapping[str, str] | None, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if self.trust_env or proxies or self.proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)  # type: ignore[no-any-return]
        return {
            "proxies": {},
            "stream": self.stream if stream is None else stream,
            "verify": self.verify if verify is None else verify,
            "cert": self.cert if cert is None else cert,
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


class _Answered(Exception):
    """Carries the token endpoint's answer out of Authlib, unparsed."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__("answered")
        self.response = response


class ProviderClient:
    """Token operations for one OAuth client (with its secret decrypted).

    Every call goes through :func:`~flask_zis_connections.outbound.harden`: no
    redirect is followed, private destinations are refused, and the whole call
    (connect, headers, body) has one deadline and a size cap.
    """

    @classmethod
    def for_client(
        cls,
        client: OAuthClient,
        encryptor: Encryptor,
        policy: OutboundPolicy,
        subdomain: str | None,
        *,
        app: object = None,
    ) -> ProviderClient:
        """The client's token operations, its secret decrypted for this call only."""
        return cls(
            client,
            encryptor.decrypt_optional(client.client_secret_enc),
            policy=policy,
            subdomain=subdomain,
            app=app,
        )

    def __init__(
        self,
        client: OAuthClient,
        client_secret: str | None,
        *,
        policy: OutboundPolicy,
        subdomain: str | None = None,
        app: object = None,
    ) -> None:
        self.client = client
        #: The Flask app its calls are reported for (``signals.provider_called``); None: not reported.
        self.app = app
        self._secret = client_secret
        self.policy = policy
        self.timeout = policy.timeout
        self.token_url = interpolate(client.token_url, subdomain)
        # Interpolated only when revoking: a revocation URL that needs a subdomain the
        # connection lacks must not break its refreshes, only (reportedly) its revocation.
        self._subdomain = subdomain

    def _session(self, deadline: Deadline | None) -> OAuth2Session:
        session = TokenSession(
            client_id=self.client.client_id,
            client_secret=self._secret,
            token_endpoint_auth_method=self.client.token_endpoint_auth_method,
            revocation_endpoint_auth_method=self.client.token_endpoint_auth_method,
        )
        harden(session, self.policy, deadline=deadline)
        return session

    def _token_request(self, call: str, deadline: Deadline | None = None, **kwargs: Any) -> TokenResponse:
        def answer(resp: requests.Response) -> requests.Response:
            # Stop Authlib here: the answer is read by our reader, which knows the
            # provider's quirks (form-encoded bodies, nested tokens, HTTP-200 errors).
            raise _Answered(resp)

        try:
            with self._session(deadline) as session:
                session.register_compliance_hook("access_token_response", answer)
                session.register_compliance_hook("refresh_token_response", answer)
                timed_call(
                    self.app, "token", getattr(session, call), self.token_url, timeout=self.timeout, **kwargs
                )
        except _Answered as answered:
            resp = answered.response
        except OutboundRefused as exc:
            raise ProviderError(refusal_message("token endpoint", exc, self.policy)) from exc
        except requests.Timeout as exc:
            raise ProviderError(
                f"The provider's token endpoint did not answer within {self.timeout:g}s. Try again later."
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
        else:
            raise ProviderError("The provider's token response is malformed.")
        content_type = resp.headers.get("Content-Type")
        if resp.status_code != 200:
            # RFC 6749 §5.2: a 4xx that is an OAuth error answer says which error (the
            # lifecycle decides on re-authorization from it); anything else failed.
            error = oauth_error(resp.text, content_type) if 400 <= resp.status_code < 500 else None
            if error is not None:
                raise TokenRequestRejected(error)
            raise ProviderError(f"The provider's token endpoint failed (HTTP {resp.status_code}).")
        return parse_token_response(resp.text, content_type, self.client.quirks)

    def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str | None) -> TokenResponse:
        kwargs: dict[str, Any] = {
            **self.client.quirks.token_params,
            "code": code,
            "redirect_uri": redirect_uri,
            "grant_type": "authorization_code",
        }
        if code_verifier:
            kwargs["code_verifier"] = code_verifier
        return self._token_request("fetch_token", **kwargs)

    def client_credentials(self, scope: str | None, *, deadline: Deadline | None = None) -> TokenResponse:
        kwargs: dict[str, Any] = {**self.client.quirks.token_params, "grant_type": "client_credentials"}
        if scope:
            kwargs["scope"] = self.client.quirks.scope_separator.join(scope.split())
        return self._token_request("fetch_token", deadline, **kwargs)

    def refresh(self, refresh_token: str, *, deadline: Deadline | None = None) -> TokenResponse:
        """``deadline`` (a monotonic instant, re-read while the call runs) cuts the call
        short when the caller's refresh lease could lapse first."""
        params = self.client.quirks.refresh_params
        return self._token_request("refresh_token", deadline, **params, refresh_token=refresh_token)

    def revoke(self, token: str, token_type_hint: str) -> None:
        """RFC 7009 revocation; raises ``ProviderError`` on any failure (``InvalidValue``
        when the URL needs a subdomain the connection was made without)."""
        if not self.client.revocation_url:
            return
        url = interpolate(self.client.revocation_url, self._subdomain)
        try:
            with self._session(None) as session:
                resp = timed_call(
                    self.app,
                    "revocation",
                    session.revoke_token,
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
