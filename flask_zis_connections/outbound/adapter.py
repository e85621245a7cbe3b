"""The requests adapter that enforces an :class:`OutboundPolicy` on every call.

:class:`GuardedAdapter` resolves the host once, checks every address, and hands the
checked addresses to urllib3 through pinned connection classes, so the connection is
made to exactly the addresses that passed (no second lookup, no DNS-rebinding window).
It then refuses redirects and reads the body itself, counting decoded bytes against
the cap, so the rules hold whatever ``allow_redirects``, ``stream`` or ``timeout`` the
caller passed.
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.exceptions import InvalidURL
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import SSL_KEYWORDS
from urllib3.util.connection import allowed_gai_family

from .call import OutboundCall, SockAddr
from .errors import DeadlineExceeded, DestinationRefused, OutboundRefused, RedirectRefused, ResponseTooLarge
from .policy import IPAddress, OutboundPolicy

__all__ = ["GuardedAdapter"]

#: Bytes asked for per read of the (decoded) body.
_CHUNK_BYTES = 16 * 1024

#: The call being sent by this thread (or task); read when requests asks for a pool.
_ACTIVE_CALL: contextvars.ContextVar[OutboundCall | None] = contextvars.ContextVar(
    "zis_outbound_call", default=None
)


# --------------------------------------------------------------------------- urllib3 glue


class _PinnedHTTPConnection(HTTPConnection):
    """Connects to the call's checked addresses instead of resolving the host again."""

    def __init__(self, *args: Any, outbound_call: OutboundCall, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbound_call = outbound_call

    def _new_conn(self) -> socket.socket:
        return self._outbound_call.connect(self)


class _PinnedHTTPSConnection(HTTPSConnection):
    """As :class:`_PinnedHTTPConnection`; TLS still verifies the certificate against
    ``host`` (the URL's host name), only the address connected to is pinned."""

    def __init__(self, *args: Any, outbound_call: OutboundCall, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbound_call = outbound_call

    def _new_conn(self) -> socket.socket:
        return self._outbound_call.connect(self)


class _PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


def _open_pool(
    call: OutboundCall, scheme: str, host: str, port: int | None, pool_kwargs: Mapping[str, Any]
) -> HTTPConnectionPool:
    """A connection pool for ``call`` only, whose connections go to the checked addresses."""
    if host.lower() != call.host:
        raise DestinationRefused(f"Connection to {host} was not checked.", host=host)
    pool: HTTPConnectionPool
    if scheme == "https":
        pool = _PinnedHTTPSConnectionPool(
            host, port or 443, maxsize=1, block=False, outbound_call=call, **pool_kwargs
        )
    elif scheme == "http":
        plain = {k: v for k, v in pool_kwargs.items() if k not in SSL_KEYWORDS}
        pool = _PinnedHTTPConnectionPool(
            host, port or 80, maxsize=1, block=False, outbound_call=call, **plain
        )
    else:
        raise InvalidURL(f"Unsupported scheme {scheme!r}.")
    call.adopt(pool)
    return pool


# --------------------------------------------------------------------------- the adapter


class GuardedAdapter(HTTPAdapter):
    """A :class:`requests.adapters.HTTPAdapter` enforcing an :class:`OutboundPolicy`.

    Cheap to create; holds no per-call state (that lives in a per-call object, found
    through a context variable), so concurrent calls never see each other's sockets,
    addresses or deadlines.
    """

    def __init__(self, policy: OutboundPolicy, *, deadline: Callable[[], float] | None = None) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self.policy = policy
        self.deadline = deadline

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url or ""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise InvalidURL("Only http:// and https:// URLs with a host can be called.")
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            raise InvalidURL(f"Invalid port in the URL for {host}.") from None
        if proxies and select_proxy(url, dict(proxies)):
            raise OutboundRefused(
                f"Calls to {host} do not go through a proxy (it would escape the destination check).",
                host=host,
            )

        call = OutboundCall(self.policy, self.deadline, host)
        call.start()
        try:
            call.targets = self._resolve_and_check(call, host, port)
            token = _ACTIVE_CALL.set(call)
            try:
                response = super().send(
                    request,
                    stream=True,
                    timeout=call.bounded_timeout(timeout),
                    verify=verify,
                    cert=cert,
                    proxies=dict(proxies) if proxies else None,
                )
            finally:
                _ACTIVE_CALL.reset(token)
            try:
                self._read_guarded(call, response, host)
            finally:
                _release(response)
            return response
        except OutboundRefused:
            raise
        except (requests.RequestException, OSError):
            if call.expired:
                raise DeadlineExceeded(
                    f"The call to {host} took longer than its deadline.", host=host
                ) from None  # requests' own message carries the path and query
            raise
        finally:
            call.finish()

    def _resolve_and_check(
        self, call: OutboundCall, host: str, port: int
    ) -> list[tuple[socket.AddressFamily, SockAddr]]:
        family = allowed_gai_family()
        literal = _ip_literal(host)
        if literal is not None:
            # Checked before anything touches the network.
            self._refuse_if_private(host, [literal])
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        else:
            try:
                infos = call.resolve(host, port, family)
            except socket.gaierror:
                raise requests.ConnectionError(f"Could not resolve {host}.") from None
        targets: list[tuple[socket.AddressFamily, SockAddr]] = []
        addresses: list[IPAddress] = []
        for af, _type, _proto, _canon, sockaddr in infos:
            if af not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
            except ValueError:
                raise DestinationRefused(f"{host} resolves to an unrecognized address.", host=host) from None
            if (af, sockaddr) not in targets:
                targets.append((af, tuple(sockaddr)))
        if not targets:
            raise requests.ConnectionError(f"Could not resolve {host}.")
        self._refuse_if_private(host, addresses)
        return targets

    def _refuse_if_private(self, host: str, addresses: list[IPAddress]) -> None:
        refused = self.policy.permits(host, addresses)
        if refused is not None:
            raise DestinationRefused(
                f"{host} resolves to a non-public address ({refused}); "
                "loopback, private and link-local destinations are refused.",
                host=host,
            )

    def _read_guarded(self, call: OutboundCall, response: requests.Response, host: str) -> None:
        status = response.status_code
        if 300 <= status < 400:
            raise RedirectRefused(
                f"{host} answered HTTP {status} (a redirect); redirects are never followed.", host=host
            )
        cap = self.policy.max_response_bytes
        declared = _content_length(response.headers.get("Content-Length"))
        if declared is not None and declared > cap:
            raise ResponseTooLarge(f"{host} announced a body over the {cap}-byte cap.", host=host)
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(_CHUNK_BYTES):
            total += len(chunk)
            if total > cap:
                raise ResponseTooLarge(f"{host} sent a body over the {cap}-byte cap.", host=host)
            chunks.append(chunk)
        if call.expired:
            # A watchdog shutdown can look like the end of a body delimited by the close.
            raise DeadlineExceeded(f"The call to {host} took longer than its deadline.", host=host)
        response._content = b"".join(chunks)  # what requests' own .content would hold

    # requests asks for a connection pool through one of these (the second before 2.32.2).

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> HTTPConnectionPool:
        call = self._active_call()
        try:
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(
                request, True if verify is None else verify, cert
            )
        except ValueError:
            raise InvalidURL("Invalid URL.") from None
        return _open_pool(
            call, str(host_params["scheme"]), str(host_params["host"]), host_params["port"], pool_kwargs
        )

    def get_connection(
        self, url: str | bytes, proxies: Mapping[str, str] | None = None
    ) -> HTTPConnectionPool:
        call = self._active_call()
        parts = urlsplit(url.decode() if isinstance(url, bytes) else url)
        return _open_pool(call, parts.scheme.lower(), parts.hostname or "", parts.port, {})

    def _active_call(self) -> OutboundCall:
        call = _ACTIVE_CALL.get()
        if call is None:
            raise OutboundRefused("Guarded connections are only opened by GuardedAdapter.send().")
        return call


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        lengths = {int(v.strip()) for v in value.split(",")}
    except ValueError:
        return None
    return max(lengths) if lengths else None


def _release(response: requests.Response) -> None:
    raw = response.raw
    if raw is None:
        return
    try:
        raw.close()
    finally:
        release = getattr(raw, "release_conn", None)
        if release is not None:
            release()
