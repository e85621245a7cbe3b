"""Hardening for every outbound HTTP call the extension makes.

The extension talks to servers it does not control: OAuth token endpoints (through
Authlib's ``OAuth2Session``, a :class:`requests.Session`), RFC 7009 revocation
endpoints and the token proxy.  Their URLs come from OAuth client records, so a
mistaken or hostile record, or a compromised provider, must not be able to:

* **redirect** the call elsewhere.  A token request carries the client secret and an
  authorization code or refresh token; following a 3xx would replay them to whatever
  ``Location`` names - another host, plain ``http://`` or the cloud metadata address.
  RFC 9700 §4.11 (open redirection) and §4.11.1 (307/308 resend the body) are the
  reason redirects are refused outright rather than filtered;
* reach **internal addresses** (server-side request forgery, see the OWASP SSRF
  Prevention Cheat Sheet): loopback, RFC 1918, link-local (``169.254.169.254``), CGNAT,
  unique-local, multicast, reserved and unspecified addresses, also when written as an
  IPv4-mapped, NAT64 or 6to4 IPv6 address.  The check runs on the addresses the host
  name resolves to, at request time, and the connection is made to exactly those
  addresses: there is no second resolution, hence no DNS-rebinding window;
* hold a worker for ever by answering slowly.  Per-read socket timeouts restart with
  every byte, so a server dripping one byte per second never trips them; the call has
  one **total deadline** covering resolution, connect, TLS, headers and body;
* exhaust memory with a huge or **decompression-bomb** body: the body is read in
  chunks and counted after content decoding, up to a cap.

:func:`harden` applies all of this to a session by mounting :class:`GuardedAdapter`
for ``http://`` and ``https://``.  Every rule is enforced inside
:meth:`GuardedAdapter.send`, so it holds whatever the caller passes as
``allow_redirects``, ``stream`` or ``timeout``.  The session also stops trusting the
environment (``trust_env = False``): no proxy from ``HTTP_PROXY`` and friends (a proxy
would connect on our behalf, out of reach of the destination check) and no
credentials from ``~/.netrc``.

Deadline enforcement: every call gets a watchdog thread that re-reads the deadline (a
caller holding a renewable lease may move it) and, once it has passed, shuts down
(``shutdown(SHUT_RDWR)``) the sockets this call opened.  Whatever read or write was
blocked then fails at once and the failure is reported as :class:`DeadlineExceeded`.
Connects are non-blocking and polled against the same deadline.

Connections are not kept alive between calls: every call uses its own connection pool,
closed when the call returns.  Provider calls are rare enough that this costs little,
and it means a connection is only ever used for the call that checked its address.

Exceptions raised here derive from :class:`OutboundRefused` (a
:class:`requests.RequestException`); their message (``reason``) may name the host but
never contains the URL's path or query, a header value or a body.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.exceptions import InvalidURL
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import SSL_KEYWORDS
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import Timeout
from urllib3.util.wait import wait_for_write

__all__ = [
    "DeadlineExceeded",
    "DestinationRefused",
    "GuardedAdapter",
    "OutboundPolicy",
    "OutboundRefused",
    "RedirectRefused",
    "ResponseTooLarge",
    "guarded_session",
    "harden",
    "is_public_address",
]

#: Default for ``ZIS_MAX_PROVIDER_RESPONSE_BYTES``.
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024

#: How often a watchdog re-reads a caller-supplied deadline (it may move earlier).
_POLL_SECONDS = 0.05
#: Bytes asked for per read of the (decoded) body.
_CHUNK_BYTES = 16 * 1024

_SessionT = TypeVar("_SessionT", bound=requests.Session)
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_SockAddr = tuple[Any, ...]

#: Ranges the standard library's ``is_global`` lets through on Python 3.11 but that are
#: not reachable public destinations.
_EXTRA_NON_PUBLIC: tuple[_IPNetwork, ...] = (
    ipaddress.IPv4Network("100.64.0.0/10"),  # CGNAT shared address space (RFC 6598)
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.IPv6Network("fec0::/10"),  # deprecated site-local
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class OutboundPolicy:
    """The rules every outbound call follows.

    ``allowed_private_hosts`` holds host names (matched case-insensitively, without a
    trailing dot) whose addresses are accepted even when non-public, and IP addresses
    or CIDR networks (``"10.0.0.0/8"``) whose members are accepted whatever name led to
    them.  Any iterable of strings is accepted and normalized to a lower-case frozenset.
    """

    #: Total seconds per call: resolution, connect, TLS, headers and body (``ZIS_HTTP_TIMEOUT``).
    timeout: float
    #: Largest (decoded) body accepted (``ZIS_MAX_PROVIDER_RESPONSE_BYTES``).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: Loopback and private destinations allowed (``ZIS_ALLOW_INSECURE_HTTP``, development only).
    allow_private: bool = False
    #: Internal hosts, addresses or networks allowed anyway (``ZIS_ALLOWED_PRIVATE_HOSTS``).
    allowed_private_hosts: frozenset[str] = frozenset()
    _allowed_names: frozenset[str] = field(init=False, repr=False, compare=False)
    _allowed_networks: tuple[_IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("OutboundPolicy.timeout must be positive.")
        if self.max_response_bytes < 0:
            raise ValueError("OutboundPolicy.max_response_bytes must not be negative.")
        entries = frozenset(_normalize_host(str(h)) for h in self.allowed_private_hosts if str(h).strip())
        names: set[str] = set()
        networks: list[_IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        object.__setattr__(self, "allowed_private_hosts", entries)
        object.__setattr__(self, "_allowed_names", frozenset(names))
        object.__setattr__(self, "_allowed_networks", tuple(networks))

    def permits(self, host: str, addresses: Iterable[_IPAddress]) -> _IPAddress | None:
        """The first of ``addresses`` (what ``host`` resolved to) this policy refuses, or None."""
        if self.allow_private or _normalize_host(host) in self._allowed_names:
            return None
        for address in addresses:
            if is_public_address(address):
                continue
            plain = _unmapped(address)
            if any(plain in network for network in self._allowed_networks):
                continue
            return address
        return None


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _unmapped(address: _IPAddress) -> _IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public_address(address: _IPAddress) -> bool:
    """Whether ``address`` is a public unicast address an outbound call may connect to.

    Refused: loopback, private (RFC 1918, unique-local ``fc00::/7``), link-local
    (``169.254.0.0/16``, ``fe80::/10``), CGNAT ``100.64.0.0/10``, multicast, reserved,
    unspecified (``0.0.0.0``, ``::``), documentation and benchmarking ranges; an IPv6
    address embedding an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by that IPv4
    address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
        if address.teredo is not None or address.is_site_local:
            return False
    if any(address in network for network in _EXTRA_NON_PUBLIC if network.version == address.version):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


# --------------------------------------------------------------------------- exceptions


class OutboundRefused(requests.RequestException):
    """An outbound call was stopped by the guard.

    ``reason`` is a short message safe to log or show: it may name the host, never the
    URL's path or query, a header value or a body.
    """

    def __init__(self, reason: str, *, host: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host = host

    def __str__(self) -> str:
        return self.reason


class RedirectRefused(OutboundRefused):
    """The server answered with a 3xx status; redirects are never followed (RFC 9700 §4.11)."""


class DestinationRefused(OutboundRefused):
    """The host resolves to a loopback, private, link-local or otherwise non-public address."""


class ResponseTooLarge(OutboundRefused):
    """The body (after content decoding) or its declared ``Content-Length`` exceeds the cap."""


class DeadlineExceeded(OutboundRefused):
    """The whole call (resolution, connect, headers, body) outlasted its deadline."""


# --------------------------------------------------------------------------- one call


class _Call:
    """State of one :meth:`GuardedAdapter.send`: its deadline, checked addresses,
    sockets and pools.  Never shared between calls."""

    def __init__(self, policy: OutboundPolicy, deadline: Callable[[], float] | None, host: str) -> None:
        self.host = host
        self.targets: list[tuple[socket.AddressFamily, _SockAddr]] = []
        self._limit = time.monotonic() + policy.timeout
        self._deadline = deadline
        self._lock = threading.Lock()
        self._expired = False
        self._done = threading.Event()
        self._watched: list[socket.socket] = []
        self._pools: list[HTTPConnectionPool] = []
        self._watchdog: threading.Thread | None = None

    # -- deadline

    def remaining(self) -> float:
        """Seconds left before the effective deadline (re-reading the caller's)."""
        limit = self._limit
        if self._deadline is not None:
            try:
                limit = min(limit, float(self._deadline()))
            except Exception:
                return 0.0  # a deadline that cannot be read is one that has passed
        return limit - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._expired or self.remaining() <= 0

    def start(self) -> None:
        self._watchdog = threading.Thread(target=self._watch, name="zis-outbound-deadline", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while True:
            remaining = self.remaining()
            if remaining <= 0:
                self._expire()
                return
            wait = remaining if self._deadline is None else min(remaining, _POLL_SECONDS)
            if self._done.wait(wait):
                return

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            watched = list(self._watched)
        for sock in watched:
            _shutdown(sock)

    def bounded_timeout(self, timeout: Any) -> tuple[float, float]:
        """The caller's requests ``timeout`` (per connect and per read), no longer than
        what is left of ``policy.timeout``.  Not bounded by the caller's deadline, which
        may move later; the watchdog enforces that one."""
        remaining = max(self._limit - time.monotonic(), 0.001)
        if isinstance(timeout, tuple):
            connect, read = timeout
        elif isinstance(timeout, Timeout):
            connect, read = timeout.connect_timeout, timeout.read_timeout
        else:
            connect = read = timeout
        return _at_most(connect, remaining), _at_most(read, remaining)

    # -- sockets and pools

    def _watch_socket(self, sock: socket.socket) -> socket.socket:
        # A duplicate descriptor of the same socket: TLS wrapping detaches the original
        # object, but shutdown() through any descriptor still ends the connection.
        dup = sock.dup()
        with self._lock:
            self._watched.append(dup)
            expired = self._expired
        if expired:
            _shutdown(dup)
        return dup

    def _unwatch(self, dup: socket.socket) -> None:
        with self._lock:
            if dup in self._watched:
                self._watched.remove(dup)
        dup.close()

    def connect(self, conn: HTTPConnection) -> socket.socket:
        """Open a socket for ``conn`` to one of the checked addresses, within the deadline."""
        if not self.targets:
            raise NewConnectionError(conn, f"No checked address to connect to for {self.host}.")
        timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
        failure: OSError | None = None
        for family, sockaddr in self.targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            dup: socket.socket | None = None
            try:
                for option in conn.socket_options or ():
                    sock.setsockopt(*option)
                if conn.source_address:
                    sock.bind(conn.source_address)
                dup = self._watch_socket(sock)
                self._connect_within_deadline(sock, sockaddr, timeout)
                sock.settimeout(timeout)
            except OSError as exc:
                sock.close()
                if dup is not None:
                    self._unwatch(dup)
                failure = exc
                continue
            sys.audit("http.client.connect", conn, conn.host, conn.port)
            return sock
        if isinstance(failure, TimeoutError):
            raise ConnectTimeoutError(conn, f"Connection to {self.host} timed out.")
        detail = failure.strerror if failure is not None and failure.strerror else "connection failed"
        raise NewConnectionError(conn, f"Failed to establish a new connection to {self.host}: {detail}")

    def _connect_within_deadline(
        self, sock: socket.socket, sockaddr: _SockAddr, timeout: float | None
    ) -> None:
        # Non-blocking connect polled against the deadline, so that a deadline moved
        # earlier while a black-holed address is being tried is still honoured.
        started = time.monotonic()
        sock.setblocking(False)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
        while code != 0:
            left = self.remaining()
            if timeout is not None:
                left = min(left, started + timeout - time.monotonic())
            if left <= 0 or self._expired:
                raise TimeoutError("connect timed out")
            if wait_for_write(sock, timeout=min(left, _POLL_SECONDS)):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, errno.errorcode.get(code, "connect failed"))
                break

    def open_pool(
        self, scheme: str, host: str, port: int | None, pool_kwargs: Mapping[str, Any]
    ) -> HTTPConnectionPool:
        """A connection pool for this call only, whose connections go to the checked addresses."""
        if host.lower() != self.host:
            raise DestinationRefused(f"Connection to {host} was not checked.", host=host)
        pool: HTTPConnectionPool
        if scheme == "https":
            pool = _PinnedHTTPSConnectionPool(
                host, port or 443, maxsize=1, block=False, outbound_call=self, **pool_kwargs
            )
        elif scheme == "http":
            plain = {k: v for k, v in pool_kwargs.items() if k not in SSL_KEYWORDS}
            pool = _PinnedHTTPConnectionPool(
                host, port or 80, maxsize=1, block=False, outbound_call=self, **plain
            )
        else:
            raise InvalidURL(f"Unsupported scheme {scheme!r}.")
        with self._lock:
            self._pools.append(pool)
        return pool

    def finish(self) -> None:
        """Stop the watchdog, close this call's pools and socket duplicates."""
        self._done.set()
        if self._watchdog is not None:
            self._watchdog.join()
        with self._lock:
            pools, self._pools = self._pools, []
            watched, self._watched = self._watched, []
        for pool in pools:
            pool.close()
        for sock in watched:
            sock.close()

    def run_bounded(self, fn: Callable[[], list[Any]]) -> list[Any]:
        """Run ``fn`` (a blocking name lookup) in a helper thread, giving up at the deadline."""
        result: list[list[Any]] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)

        worker = threading.Thread(target=target, name="zis-outbound-resolve", daemon=True)
        worker.start()
        while worker.is_alive():
            left = self.remaining()
            if left <= 0:
                raise DeadlineExceeded(
                    f"Resolving {self.host} took longer than the deadline.", host=self.host
                )
            worker.join(min(left, _POLL_SECONDS))
        if error:
            raise error[0]
        return result[0]


def _at_most(value: Any, limit: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return min(float(value), limit)
    return limit


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (yet), or already gone
        sock.shutdown(socket.SHUT_RDWR)


#: The call being sent by this thread (or task); read when requests asks for a pool.
_ACTIVE_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("zis_outbound_call", default=None)


# --------------------------------------------------------------------------- urllib3 glue


class _PinnedHTTPConnection(HTTPConnection):
    """Connects to the call's checked addresses instead of resolving the host again."""

    def __init__(self, *args: Any, outbound_call: _Call, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbound_call = outbound_call

    def _new_conn(self) -> socket.socket:
        return self._outbound_call.connect(self)


class _PinnedHTTPSConnection(HTTPSConnection):
    """As :class:`_PinnedHTTPConnection`; TLS still verifies the certificate against
    ``host`` (the URL's host name), only the address connected to is pinned."""

    def __init__(self, *args: Any, outbound_call: _Call, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbound_call = outbound_call

    def _new_conn(self) -> socket.socket:
        return self._outbound_call.connect(self)


class _PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


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

        call = _Call(self.policy, self.deadline, host)
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
        self, call: _Call, host: str, port: int
    ) -> list[tuple[socket.AddressFamily, _SockAddr]]:
        family = allowed_gai_family()
        literal = _ip_literal(host)
        if literal is not None:
            # Checked before anything touches the network.
            self._refuse_if_private(host, [literal])
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        else:
            try:
                infos = call.run_bounded(lambda: socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
            except socket.gaierror:
                raise requests.ConnectionError(f"Could not resolve {host}.") from None
        targets: list[tuple[socket.AddressFamily, _SockAddr]] = []
        addresses: list[_IPAddress] = []
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

    def _refuse_if_private(self, host: str, addresses: list[_IPAddress]) -> None:
        refused = self.policy.permits(host, addresses)
        if refused is not None:
            raise DestinationRefused(
                f"{host} resolves to a non-public address ({refused}); "
                "loopback, private and link-local destinations are refused.",
                host=host,
            )

    def _read_guarded(self, call: _Call, response: requests.Response, host: str) -> None:
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
        return call.open_pool(
            str(host_params["scheme"]), str(host_params["host"]), host_params["port"], pool_kwargs
        )

    def get_connection(
        self, url: str | bytes, proxies: Mapping[str, str] | None = None
    ) -> HTTPConnectionPool:
        call = self._active_call()
        parts = urlsplit(url.decode() if isinstance(url, bytes) else url)
        return call.open_pool(parts.scheme.lower(), parts.hostname or "", parts.port, {})

    def _active_call(self) -> _Call:
        call = _ACTIVE_CALL.get()
        if call is None:
            raise OutboundRefused("Guarded connections are only opened by GuardedAdapter.send().")
        return call


def _ip_literal(host: str) -> _IPAddress | None:
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


# --------------------------------------------------------------------------- public helpers


def harden(
    session: _SessionT, policy: OutboundPolicy, *, deadline: Callable[[], float] | None = None
) -> _SessionT:
    """Make ``session`` follow ``policy`` and return it.

    Replaces every mounted adapter by one :class:`GuardedAdapter` on ``http://`` and
    ``https://``, turns off ``trust_env`` (no proxies or ``.netrc`` credentials from
    the environment) and sets ``max_redirects`` to 0.  ``deadline``, when given, returns
    a :func:`time.monotonic` instant each call must be over by; it is re-read while the
    call runs (from another thread, so it must be safe to call from one), and a call
    ends at the earlier of it and ``policy.timeout`` after the call started.
    """
    adapter = GuardedAdapter(policy, deadline=deadline)
    for old in list(session.adapters.values()):
        old.close()
    session.adapters.clear()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False
    # trust_env also carried requests' CA-bundle variables; keep honouring those (a
    # deployment behind a TLS-inspecting proxy sets them), without its proxies or netrc.
    if session.verify is True:
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    session.max_redirects = 0
    return session


def guarded_session(
    policy: OutboundPolicy, *, deadline: Callable[[], float] | None = None
) -> requests.Session:
    """A new :class:`requests.Session` hardened with :func:`harden`."""
    return harden(requests.Session(), policy, deadline=deadline)
