"""Calling a provider's API with a connection's credentials: ``zis.session(integration, name)``.

A :class:`ConnectionSession` is a :class:`requests.Session` that knows one connection.
The point of the class is where the access token may go, not how it is attached:

* **Only to the provider.**  The ``Authorization`` header is added to a request only
  when its host is the OAuth client's ``api_base_url`` host or one of its
  ``allowed_domains`` (exact, case-insensitive; the port is not part of the match, as
  for ``allowed_domain`` of the other connection types), over https (plain http only
  with ``ZIS_ALLOW_INSECURE_HTTP``).  A request to any other URL raises
  :class:`ForbiddenDestination` before a socket is opened: nothing is sent at all, so a
  mistyped or attacker-supplied URL cannot even learn that the caller exists.
* **Never along a redirect.**  The session is hardened by
  :func:`~flask_zis_connections.outbound.harden`: any 3xx answer raises
  :class:`~flask_zis_connections.outbound.RedirectRefused` (a
  :class:`requests.RequestException`), so the header is never replayed to whatever the
  ``Location`` names.  It is not turned into a ``ProviderError``: like the guard's other
  refusals (deadline, size cap, private address) it is a failure of *this* HTTP call, and
  a caller of a ``requests.Session`` already handles ``requests.RequestException``.  The
  guard also gives every call a total deadline (``ZIS_HTTP_TIMEOUT``) and a body cap
  (``ZIS_MAX_PROVIDER_RESPONSE_BYTES``).

Credential connections (``bearer_token``, ``basic_auth``, ``api_key``) have no client:
their one host is the connection's ``allowed_domain`` (any port), relative URLs are
joined to ``https://<allowed_domain>/``, and the request carries ``Authorization:
Bearer``, ``Authorization: Basic`` or the API key's own header.  Nothing of theirs can
be refreshed, so their ``401`` is returned as it came.

Besides, the session keeps an OAuth token usable: it refreshes a token that is due before
sending, and on a ``401`` it refreshes once (through the lifecycle, so a burst of
callers holding the same stale token makes one provider call) and retries once.  A
``429`` whose ``Retry-After`` is at most ``max_retry_after`` seconds is waited out and
retried once; a longer or missing one is returned to the caller, who knows better
whether to wait.  Only a body that can be sent twice (``bytes``, ``str``, form data,
JSON, files, or none) is retried; a generator or file object is consumed by the first
attempt, so its ``401`` or ``429`` is returned as is.

What the session needs is captured when it is opened, inside an app context: the app,
its lifecycle and settings, the connection's record and its client's ``api_base_url``
and ``allowed_domains``.  Requests made in the ``with`` block need no app context; a
refresh pushes the app's context when none is active (the lifecycle sends signals whose
receivers may read ``current_app``).  A changed ``api_base_url`` or ``allowed_domains``
is seen by the next session, not by an open one: a session is meant to live for one
``with`` block, as Authlib's sessions do.

A session may be shared by threads: the connection's current record is kept under a
lock, and everything else about a call lives in the call.  Log lines and exception
messages name the host at most, never a path, query string or token.

A little over 400 lines on purpose: where a credential may go and when a request is
retried are one policy, read together.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import requests
from flask import Flask, current_app, has_app_context

from . import signals
from ._state import state
from .credentials import auth_header
from .domain import ConnectionRecord, OAuthClient, ProviderQuirks, utcnow
from .errors import InvalidRequest, InvalidValue, ReauthorizationRequired
from .lifecycle import Lifecycle
from .outbound import harden
from .provider_client import interpolate
from .validation import provider_url

__all__ = ["DEFAULT_MAX_RETRY_AFTER", "ConnectionSession", "ForbiddenDestination"]

log = logging.getLogger("flask_zis_connections")

#: Longest ``Retry-After`` (seconds) a session waits out by default before retrying a 429.
DEFAULT_MAX_RETRY_AFTER = 30.0

_METADATA_PREFIX = "{{metadata."


class ForbiddenDestination(InvalidRequest):
    """A request of a :class:`ConnectionSession` would carry the credentials elsewhere.

    Raised before anything is sent.  ``host`` is the refused host (None when the URL
    has none); the message names it, never the URL's path or query.
    """

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host


@dataclass(frozen=True)
class _Credentials:
    """The record a request was authorized with, and the header made from it."""

    record: ConnectionRecord
    header: tuple[str, str]

    def apply(self, request: requests.PreparedRequest) -> None:
        name, value = self.header
        request.headers[name] = value


class ConnectionSession(requests.Session):
    """A :class:`requests.Session` that sends one connection's credentials to its provider.

    Open it with :meth:`ZISConnections.session
    <flask_zis_connections.ZISConnections.session>` inside an app context and use it as a
    context manager; see the module documentation for the rules it follows.

    Relative URLs (``"/crm/v3/objects/contacts"``) are joined to the path of the
    client's ``api_base_url``; ``.`` and ``..`` segments are refused, so a relative URL
    stays under that base.  Absolute URLs are allowed to the base's host and to
    ``allowed_domains``.

    :raises ForbiddenDestination: from any request whose URL is not allowed to receive
        the credentials (nothing is sent).
    :raises InvalidValue: for a relative URL when the client has no ``api_base_url``.
    :raises ReauthorizationRequired: when a refresh is needed and the provider refused it.
    :raises ProviderError: when a needed refresh failed at the provider.
    :raises requests.RequestException: as any ``requests`` call; the guard's own
        refusals (redirect, deadline, size cap, private address) are
        :class:`~flask_zis_connections.outbound.OutboundRefused`.
    """

    def __init__(
        self,
        app: Flask,
        lifecycle: Lifecycle,
        record: ConnectionRecord,
        client: OAuthClient | None,
        *,
        allow_insecure_http: bool,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        if not max_retry_after >= 0:  # also refuses NaN
            raise InvalidValue("max_retry_after", "must be a number of seconds, 0 or more")
        base = _api_base(client, record, allow_insecure_http)  # may refuse: before any set-up
        super().__init__()
        harden(self, lifecycle.outbound)
        self.max_retry_after = float(max_retry_after)
        self._app = app
        self._lifecycle = lifecycle
        self._allow_insecure = allow_insecure_http
        self._where = f"connection {record.name!r} of integration {record.integration!r}"
        self._base = base
        self._oauth = record.type == "oauth"
        #: Some APIs take the token in a header of their own (Shopify's
        #: X-Shopify-Access-Token) instead of ``Authorization: Bearer``.
        self._token_header = client.quirks.api_token_header if client is not None else None
        hosts = {_host_key(h) for h in client.quirks.allowed_domains} if client is not None else set()
        if self._base is not None:
            hosts.add(_host_key(self._base.hostname or ""))
        self._allowed_hosts = frozenset(hosts)
        self._lock = threading.Lock()
        self._credentials = self._credentials_for(record)

    @classmethod
    def open(
        cls, integration: str, name: str, *, max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    ) -> ConnectionSession:
        """A session for ``current_app``'s connection ``name`` of ``integration``."""
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        st = state(app)
        lifecycle = st.lifecycle
        record = lifecycle.find(integration, name=name)
        client = None
        if record.oauth_client_uuid is not None:
            client = st.storage.get_client(record.integration, uuid=record.oauth_client_uuid)
            if client is None:
                raise ReauthorizationRequired(record.integration, record.name, "its OAuth client is gone")
        return cls(
            app,
            lifecycle,
            record,
            client,
            allow_insecure_http=st.settings.allow_insecure_http,
            max_retry_after=max_retry_after,
        )

    # -- requests' entry points ----------------------------------------------------------
    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        """As :meth:`requests.Session.request`; a relative ``url`` is joined to the base."""
        return super().request(method, self._resolve(url), *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Check the destination, add the credentials, send; refresh or wait and retry once.

        Every request goes through here (also a prepared one sent directly), so the
        check cannot be bypassed by building the request by hand.
        """
        host = self._check_destination(request.url)
        creds = self._usable_credentials()
        creds.apply(request)
        response = signals.timed_call(self._app, "api", super().send, request, **kwargs)
        refreshed = waited = False
        while response.status_code in (401, 429) and _resendable(request):
            if response.status_code == 401:
                if refreshed or not self._oauth:
                    break
                refreshed = True
                log.info("%s answered 401 for %s; refreshing the token once and retrying.", host, self._where)
                creds = self._refreshed_after_401(creds)
            else:
                delay = retry_after_seconds(response.headers.get("Retry-After"))
                if waited or delay is None or delay > self.max_retry_after:
                    break
                waited = True
                log.info("%s answered 429 for %s; retrying once in %.1fs.", host, self._where, delay)
                time.sleep(delay)
                creds = self._usable_credentials()  # the token may have fallen due meanwhile
            retry = request.copy()
            creds.apply(retry)
            self._send_retried(creds.record, response.status_code)
            response = signals.timed_call(self._app, "api", super().send, retry, **kwargs)
        return response

    def _send_retried(self, record: ConnectionRecord, status: int) -> None:
        signals.session_retried.send(
            self._app, integration=record.integration, name=record.name, reason=str(status)
        )

    # -- where a request may go ----------------------------------------------------------
    def _resolve(self, url: str | bytes) -> str:
        text = url.decode("utf-8") if isinstance(url, bytes) else str(url)
        try:
            parts = urlsplit(text)
        except ValueError:
            raise InvalidRequest(f"Not a valid URL for {self._where}.") from None
        if parts.scheme:
            return text  # absolute: send() checks its host
        if parts.netloc or text.startswith("//"):
            raise InvalidRequest(
                "Scheme-relative URLs ('//host/...') are not accepted: pass a path relative to "
                "the OAuth client's api_base_url, or an absolute https URL."
            )
        if self._base is None:  # only an OAuth client can lack a base
            raise InvalidValue(
                "api_base_url",
                f"is not set on the OAuth client of {self._where}, so a relative URL has nothing "
                "to be relative to. Set api_base_url on the client (update_oauth_client) or pass "
                "an absolute URL.",
            )
        if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
            raise InvalidRequest(
                "A relative URL may not contain '.' or '..' segments: it stays under the OAuth "
                "client's api_base_url. Pass an absolute URL to reach another path."
            )
        base = self._base
        path = base.path.rstrip("/") + "/" + parts.path.lstrip("/") if parts.path else base.path or "/"
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))

    def _check_destination(self, url: str | None) -> str:
        """The host of ``url`` when it may receive the credentials; else raise."""
        try:
            parts = urlsplit(url or "")
            host = _host_key(parts.hostname or "")
        except ValueError:
            raise InvalidRequest(f"Not a valid URL for {self._where}.") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not host:
            raise ForbiddenDestination(
                f"The credentials of {self._where} are only sent to http(s) URLs with a host.",
                host=host or None,
            )
        if host not in self._allowed_hosts:
            if not self._oauth:
                allowed, fix = "its allowed_domain", "change the connection's allowed_domain"
            elif self._allowed_hosts:
                allowed = "the host of its OAuth client's api_base_url or one of its allowed_domains"
                fix = "add it to the client's allowed_domains"
            else:
                allowed = "any host: its OAuth client has neither api_base_url nor allowed_domains"
                fix = "add it to the client's allowed_domains"
            raise ForbiddenDestination(
                f"Refusing to send the credentials of {self._where} to {host}: they go only to "
                f"{allowed}. If {host} is where they belong, {fix}.",
                host=host,
            )
        if scheme == "http" and not self._allow_insecure:
            raise ForbiddenDestination(
                f"Refusing to send the credentials of {self._where} to {host} over plain http; "
                "use https (ZIS_ALLOW_INSECURE_HTTP allows http for local development only).",
                host=host,
            )
        return host

    # -- which token ---------------------------------------------------------------------
    def _credentials_for(self, record: ConnectionRecord) -> _Credentials:
        encryptor = self._lifecycle.encryptor
        if record.type != "oauth":
            return _Credentials(record, auth_header(record, encryptor))
        token = encryptor.decrypt(record.access_token_enc)
        if self._token_header:
            return _Credentials(record, (self._token_header, token))
        return _Credentials(record, ("Authorization", f"{_auth_scheme(record.token_type)} {token}"))

    def _remember(self, record: ConnectionRecord) -> _Credentials:
        """Keep ``record`` unless another thread already keeps a newer one; return the kept."""
        with self._lock:
            if record.version > self._credentials.record.version:
                self._credentials = self._credentials_for(record)
            return self._credentials

    def _usable_credentials(self) -> _Credentials:
        with self._lock:
            creds = self._credentials
        if not self._lifecycle.is_due(creds.record):
            return creds
        with self._app_context():
            return self._remember(self._lifecycle.ensure_fresh(creds.record, force=False))

    def _refreshed_after_401(self, used: _Credentials) -> _Credentials:
        """Force a refresh on behalf of the record the refused request carried.

        Passing the record *used* (not a re-read one) is what collapses concurrent
        401s into one provider call: a newer version counts as done on our behalf.
        """
        with self._app_context():
            self._lifecycle.forget_cached(used.record.integration, used.record.name)
            return self._remember(self._lifecycle.ensure_fresh(used.record, force=True))

    @contextlib.contextmanager
    def _app_context(self) -> Iterator[None]:
        if has_app_context() and current_app._get_current_object() is self._app:  # type: ignore[attr-defined]
            yield
            return
        with self._app.app_context():
            yield


# -- helpers -------------------------------------------------------------------------------
def _host_key(host: str) -> str:
    """Hosts compare lower-case, without a trailing dot, IPv6 addresses compressed."""
    key = host.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(key).compressed
    except ValueError:
        return key


def _auth_scheme(token_type: str | None) -> str:
    """The scheme word of the ``Authorization`` header: ``Bearer`` for ``bearer``."""
    if not token_type or token_type.lower() == "bearer":
        return "Bearer"
    return token_type[:1].upper() + token_type[1:]


def _resendable(request: requests.PreparedRequest) -> bool:
    """Whether the body can be sent again (a stream or file was consumed by the first try)."""
    return request.body is None or isinstance(request.body, bytes | str)


def _api_base(
    client: OAuthClient | None, record: ConnectionRecord, allow_insecure: bool
) -> SplitResult | None:
    """The parsed base URL relative URLs are joined to, or None when the client has none.

    A credential connection's base is ``https://<allowed_domain>/``.

    ``{{subdomain}}`` takes the connection's ``oauth_url_subdomain``;
    ``{{metadata.KEY}}`` takes the connection's metadata value, which came from the
    provider or the host and is checked here like any provider URL before a token may
    follow it.
    """
    if client is None:
        host = str(record.allowed_domain)
        return urlsplit(f"https://[{host}]/" if ":" in host else f"https://{host}/")
    quirks: ProviderQuirks = client.quirks
    raw = quirks.api_base_url
    if raw is None:
        return None
    if raw.startswith(_METADATA_PREFIX):
        key, _, rest = raw[len(_METADATA_PREFIX) :].partition("}}")
        value = record.metadata.get(key)
        field = f"metadata.{key}"
        if value is None:
            raise InvalidValue(
                field,
                f"is missing on the connection, and the OAuth client's api_base_url is taken from "
                f"it. Set it with update_connection_metadata({record.integration!r}, "
                f"{record.name!r}, {{{key!r}: 'https://...'}}) or reconnect.",
            )
        base = provider_url(value, field, allow_insecure=allow_insecure, allow_placeholder=False)
        url = base.rstrip("/") + rest
    else:
        url = interpolate(raw, record.oauth_url_subdomain)
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidValue(
            "api_base_url", "must not contain a query or fragment: relative URLs are joined to it"
        )
    return parts


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110 §10.2.3), or None if unreadable.

    Both forms are read: a non-negative integer of seconds, or an HTTP date (a date in
    the past means now).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP date is always GMT; one without a zone is not one
    return max(0.0, (when - (now or utcnow())).total_seconds())
