"""The outbound guard against real sockets on loopback: redirects, slow and silent
servers, oversized and compressed bodies, private destinations and DNS rebinding,
environment proxies and ``.netrc``, and Authlib's ``OAuth2Session`` over TLS.

Servers are raw sockets in threads, so each test controls the bytes on the wire and
can tell whether a connection was ever made.  ``socket.getaddrinfo`` is replaced only
to make names resolve to addresses that do not exist here (or, for DNS rebinding, to
change its answer between two lookups).
"""

from __future__ import annotations

import _thread
import contextlib
import datetime
import gzip
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flask_zis_connections.outbound import (
    DeadlineExceeded,
    DestinationRefused,
    GuardedAdapter,
    OutboundPolicy,
    OutboundRefused,
    RedirectRefused,
    ResponseTooLarge,
    guarded_session,
    harden,
    is_public_address,
)
from flask_zis_connections.outbound.resolver import MAX_THREADS, RESOLVER, Resolver

from .helpers import in_forked_child, run_threads

MiB = 1024 * 1024
QUERY_SECRET = "q-s3cr3t"
BODY_SECRET = "b-s3cr3t"
HEADER_SECRET = "h-s3cr3t"
SECRETS = (QUERY_SECRET, BODY_SECRET, HEADER_SECRET)

#: Loopback servers are the destinations here: private addresses allowed.
LOOPBACK = OutboundPolicy(timeout=2.0, max_response_bytes=MiB, allow_private=True)
#: The production default: private destinations refused.
STRICT = OutboundPolicy(timeout=2.0, max_response_bytes=MiB, allow_private=False)


# --------------------------------------------------------------------------- servers

Handler = Callable[["Server", socket.socket], None]


class Server:
    """A TCP server on loopback running ``handler(server, conn)`` per connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        backlog: int = 16,
        accept: bool = True,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.bind((host, port))
            self.listener.listen(backlog)
        except OSError:
            self.listener.close()
            raise
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self.handler = handler
        self.tls = tls
        self.stop = threading.Event()
        self.broken = threading.Event()  # a read or write to the client failed
        self.connections = 0
        self.sent = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._stop_accepting = threading.Event()
        self._acceptor: threading.Thread | None = None
        if accept:
            self.listener.settimeout(0.02)
            self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
            self._acceptor.start()

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def _accept_loop(self) -> None:
        while not self._stop_accepting.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._workers.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(self, conn)
        except OSError:
            self.broken.set()
        finally:
            conn.close()

    def _halt_accepting(self) -> None:
        self._stop_accepting.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None

    def seen(self) -> int:
        """Connections ever made, including any still waiting in the listen backlog.
        Stops accepting: call it when the test is done with this server."""
        self._halt_accepting()
        self.listener.setblocking(False)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                break
            conn.close()
            self.connections += 1
        return self.connections

    def close(self) -> None:
        self.stop.set()
        self._halt_accepting()
        self.listener.close()
        for worker in self._workers:
            worker.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, **kwargs: Any) -> Server:
        server = Server(handler, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def read_request(server: Server, conn: socket.socket) -> bytes:
    """Read one request (head and Content-Length body) and record it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    request = head + b"\r\n\r\n" + body
    with server._lock:
        server.requests.append(request)
    return request


def head(status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    """A complete response with a Content-Length."""

    def handle(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        conn.sendall(head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)

    return handle


def drip(prefix: bytes, payload: bytes, interval: float = 0.2) -> Handler:
    """Send ``prefix`` at once, then ``payload`` one byte every ``interval`` seconds."""

    def handle(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        conn.sendall(prefix)
        for i in range(len(payload)):
            conn.sendall(payload[i : i + 1])
            if server.stop.wait(interval):
                return

    return handle


def silent(server: Server, conn: socket.socket) -> None:
    """Read the request, never answer."""
    read_request(server, conn)
    server.stop.wait()


def assert_clean(exc: BaseException, *also: str) -> None:
    """No query string, body or header value in what the exception says."""
    text = " ".join([str(exc), repr(exc.args), getattr(exc, "reason", ""), repr(exc.__cause__)])
    for needle in (*SECRETS, *also):
        assert needle not in text, text


def secret_request(session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
    return session.post(
        f"{url}?code={QUERY_SECRET}",
        data={"grant_type": "authorization_code", "client_secret": BODY_SECRET},
        headers={"Authorization": f"Bearer {HEADER_SECRET}"},
        **kwargs,
    )


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("allow_redirects", [None, True], ids=["default", "allow_redirects"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(
    serve: Callable[..., Server], status: int, allow_redirects: bool | None
) -> None:
    elsewhere = serve(answer(200, b'{"stolen": true}'))
    location = elsewhere.url(f"/collect?where={QUERY_SECRET}")
    origin = serve(answer(status, b"moved", {"Location": location}))
    kwargs = {} if allow_redirects is None else {"allow_redirects": allow_redirects}

    with guarded_session(LOOPBACK) as session, pytest.raises(RedirectRefused) as info:
        secret_request(session, origin.url("/token"), **kwargs)

    assert f"HTTP {status}" in str(info.value)
    assert_clean(info.value, location, "/collect")
    assert origin.seen() == 1
    assert elsewhere.seen() == 0


def test_redirect_to_the_metadata_address_is_refused(serve: Callable[..., Server]) -> None:
    location = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    origin = serve(answer(302, b"", {"Location": location}))
    with guarded_session(LOOPBACK) as session, pytest.raises(RedirectRefused) as info:
        session.get(origin.url("/revoke"), allow_redirects=True, stream=True)
    assert_clean(info.value, location, "169.254.169.254")


def test_a_redirect_is_refused_through_the_adapter_alone(serve: Callable[..., Server]) -> None:
    """Even a session whose max_redirects was raised again never follows one."""
    elsewhere = serve(answer(200, b"{}"))
    origin = serve(answer(307, b"", {"Location": elsewhere.url("/")}))
    with guarded_session(LOOPBACK) as session:
        session.max_redirects = 30
        with pytest.raises(RedirectRefused):
            secret_request(session, origin.url("/token"))
    assert elsewhere.seen() == 0


# --------------------------------------------------------------------------- deadline


def test_drip_fed_headers_hit_the_total_deadline(serve: Callable[..., Server]) -> None:
    server = serve(drip(b"", head(200, {"Content-Length": "2"}) + b"{}"))
    with guarded_session(replace(LOOPBACK, timeout=1.0)) as session:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            # A per-read timeout of 0.5 s never trips: a byte arrives every 0.2 s.
            secret_request(session, server.url("/token"), timeout=0.5)
        elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 2.0
    assert_clean(info.value)


@pytest.mark.parametrize(
    ("framing", "timeout"),
    [("content-length", 1.0), ("chunked", 0.6), ("close", 0.6)],
)
def test_drip_fed_body_hits_the_total_deadline(
    serve: Callable[..., Server], framing: str, timeout: float
) -> None:
    headers = {
        "content-length": {"Content-Length": "100"},
        "chunked": {"Transfer-Encoding": "chunked"},
        "close": {},
    }[framing]
    payload = b"64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n" if framing == "chunked" else b"x" * 100
    server = serve(drip(head(200, headers), payload))
    policy = replace(LOOPBACK, timeout=timeout)
    with guarded_session(policy) as session:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            secret_request(session, server.url("/token"), timeout=5)
        elapsed = time.monotonic() - started
    # "close" framing: the watchdog's shutdown looks like the end of the body; it must
    # still not be taken for a complete answer.
    assert timeout - 0.05 <= elapsed < timeout + 1.0
    assert_clean(info.value)


def test_a_server_that_never_answers_hits_the_deadline(serve: Callable[..., Server]) -> None:
    server = serve(silent)
    with guarded_session(replace(LOOPBACK, timeout=0.5)) as session:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            session.get(server.url("/"))
        elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5


def test_a_black_holed_connect_hits_the_deadline(serve: Callable[..., Server]) -> None:
    # A listener that never accepts, with a full backlog: further SYNs are dropped.
    server = serve(silent, backlog=0, accept=False)
    filler = socket.create_connection(("127.0.0.1", server.port), timeout=1)
    probe = socket.socket()
    try:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", server.port))
            pytest.skip("this system accepts connects beyond a full backlog")
        except TimeoutError:
            pass
        with guarded_session(replace(LOOPBACK, timeout=0.5)) as session:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                session.get(server.url("/"), timeout=30)
            elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 1.5
    finally:
        probe.close()
        filler.close()


def test_an_earlier_caller_deadline_wins(serve: Callable[..., Server]) -> None:
    server = serve(silent)
    started = time.monotonic()
    session = guarded_session(replace(LOOPBACK, timeout=10), deadline=lambda: started + 0.4)
    with session, pytest.raises(DeadlineExceeded):
        session.get(server.url("/"))
    assert time.monotonic() - started < 1.2


class MovableDeadline:
    """A lease-like deadline: another thread moves it while the call runs."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self._timers: list[threading.Timer] = []

    def __call__(self) -> float:
        return self.at

    def move_after(self, delay: float, seconds_from_then: float) -> None:
        def move() -> None:
            self.at = time.monotonic() + seconds_from_then

        timer = threading.Timer(delay, move)
        self._timers.append(timer)
        timer.start()

    def join(self) -> None:
        for timer in self._timers:
            timer.cancel()
            timer.join()


@pytest.mark.parametrize("phase", ["response", "connect"])
def test_a_deadline_moved_earlier_is_honoured(serve: Callable[..., Server], phase: str) -> None:
    if phase == "response":
        server = serve(silent)
        filler = None
    else:
        server = serve(silent, backlog=0, accept=False)
        filler = socket.create_connection(("127.0.0.1", server.port), timeout=1)
    deadline = MovableDeadline(30)
    deadline.move_after(0.3, 0.1)
    try:
        with guarded_session(replace(LOOPBACK, timeout=10), deadline=deadline) as session:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                session.get(server.url("/"), timeout=30)
            elapsed = time.monotonic() - started
    finally:
        deadline.join()
        if filler is not None:
            filler.close()
    assert 0.35 <= elapsed < 1.0


def test_a_deadline_moved_later_lets_the_call_finish(serve: Callable[..., Server]) -> None:
    def slow(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        if not server.stop.wait(0.8):
            conn.sendall(head(200, {"Content-Length": "2"}) + b"{}")

    server = serve(slow)
    deadline = MovableDeadline(0.5)  # a lease renewed at 0.2 s
    deadline.move_after(0.2, 3)
    try:
        with guarded_session(replace(LOOPBACK, timeout=5), deadline=deadline) as session:
            assert session.get(server.url("/")).json() == {}
    finally:
        deadline.join()


def test_calls_sharing_a_session_keep_their_own_deadlines(serve: Callable[..., Server]) -> None:
    """One call's watchdog never touches another call's sockets."""

    def late(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        if not server.stop.wait(0.7):
            conn.sendall(head(200, {"Content-Length": "4"}) + b"late")

    stalled, slow = serve(silent), serve(late)
    outcomes: dict[str, object] = {}
    with guarded_session(replace(LOOPBACK, timeout=1.0)) as session:

        def call(name: str, url: str, delay: float) -> None:
            time.sleep(delay)
            try:
                outcomes[name] = session.get(url).content
            except Exception as exc:
                outcomes[name] = exc

        # "a" expires at 1.0 s, while "b" (started at 0.6 s, answered at 1.3 s) is
        # still reading: its deadline is 1.6 s.
        threads = [
            threading.Thread(target=call, args=("a", stalled.url("/"), 0.0)),
            threading.Thread(target=call, args=("b", slow.url("/"), 0.6)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert isinstance(outcomes["a"], DeadlineExceeded)
    assert outcomes["b"] == b"late"


def test_concurrent_sessions(serve: Callable[..., Server]) -> None:
    server = serve(answer(200, b'{"ok": true}'))
    results: list[object] = []

    def call() -> None:
        with guarded_session(LOOPBACK) as session:
            results.append(session.get(server.url("/")).json())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [{"ok": True}] * 8


# --------------------------------------------------------------------------- size cap


def flood(framing: str, total: int) -> Handler:
    """Stream ``total`` bytes (close-delimited or chunked) until the client goes away."""

    def handle(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        conn.sendall(head(200, {"Transfer-Encoding": "chunked"} if framing == "chunked" else {}))
        block = b"x" * 65536
        while server.sent < total and not server.stop.is_set():
            conn.sendall(b"10000\r\n" + block + b"\r\n" if framing == "chunked" else block)
            server.sent += len(block)
        if framing == "chunked":
            conn.sendall(b"0\r\n\r\n")

    return handle


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_a_huge_body_is_cut_off_at_the_cap(serve: Callable[..., Server], framing: str) -> None:
    server = serve(flood(framing, 20 * MiB))
    with guarded_session(LOOPBACK) as session:
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge) as info:
            secret_request(session, server.url("/token"))
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert str(MiB) in str(info.value)
    assert_clean(info.value)
    # The client went away long before the end: the server's writes failed.
    assert server.broken.wait(3)
    assert server.sent < 20 * MiB


def test_a_declared_content_length_over_the_cap_is_refused_before_reading(
    serve: Callable[..., Server],
) -> None:
    def announce(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        conn.sendall(head(200, {"Content-Length": str(2 * MiB)}))
        server.stop.wait()  # the body never comes

    server = serve(announce)
    with guarded_session(LOOPBACK) as session:
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge):
            session.get(server.url("/"))
        assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("framing", "size", "accepted"),
    [
        ("content-length", MiB, True),
        ("close", MiB, True),
        ("content-length", MiB + 1, False),
        ("close", MiB + 1, False),
    ],
)
def test_a_body_at_the_cap_is_accepted_one_byte_more_is_not(
    serve: Callable[..., Server], framing: str, size: int, accepted: bool
) -> None:
    body = b"y" * size

    def send(server: Server, conn: socket.socket) -> None:
        read_request(server, conn)
        conn.sendall(head(200, {"Content-Length": str(size)} if framing == "content-length" else {}) + body)

    server = serve(send)
    with guarded_session(LOOPBACK) as session:
        if accepted:
            response = session.get(server.url("/"))
            assert response.content == body
            assert len(response.text) == size
        else:
            with pytest.raises(ResponseTooLarge):
                session.get(server.url("/"))


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return gzip.compress(bytes(20 * MiB), compresslevel=9)


def test_a_gzip_bomb_is_refused(serve: Callable[..., Server], gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 64 * 1024
    server = serve(answer(200, gzip_bomb, {"Content-Encoding": "gzip"}))
    with guarded_session(LOOPBACK) as session:
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge):
            session.get(server.url("/"))
        assert time.monotonic() - started < 1.0


def test_a_small_gzip_body_is_decoded(serve: Callable[..., Server]) -> None:
    body = gzip.compress(json.dumps({"access_token": "at"}).encode())
    server = serve(answer(200, body, {"Content-Encoding": "gzip", "Content-Type": "application/json"}))
    with guarded_session(LOOPBACK) as session:
        assert session.get(server.url("/")).json() == {"access_token": "at"}


# --------------------------------------------------------------------------- destinations


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/token",
        "http://localhost:{port}/token",
        "http://0.0.0.0:{port}/token",
        "http://[::ffff:127.0.0.1]:{port}/token",
        "http://127.1:{port}/token",
        "http://2130706433:{port}/token",
    ],
)
def test_loopback_destinations_are_refused(serve: Callable[..., Server], url: str) -> None:
    server = serve(answer(200, b"{}"))
    with guarded_session(STRICT) as session, pytest.raises(DestinationRefused) as info:
        secret_request(session, url.format(port=server.port))
    assert_clean(info.value)
    assert server.seen() == 0


def test_ipv6_loopback_is_refused(serve: Callable[..., Server]) -> None:
    try:
        server = serve(answer(200, b"{}"), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with guarded_session(STRICT) as session, pytest.raises(DestinationRefused):
        session.get(server.url("/"))
    assert server.seen() == 0


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[fd12:3456::1]",
        "[ff02::1]",
        "[::ffff:10.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[64:ff9b::a00:1]",
        "[2002:a00:1::1]",
    ],
)
def test_non_public_literal_addresses_are_refused_before_any_connect(host: str) -> None:
    with guarded_session(STRICT) as session, pytest.raises(DestinationRefused):
        session.get(f"http://{host}/latest/meta-data/?k={QUERY_SECRET}", timeout=0.2)


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Callable[[], list[str]]]) -> list[str]:
    """Make the names in ``answers`` resolve to what their function returns; others as usual."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        result = []
        for ip in answers[host]():
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
            result.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return result

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_resolving_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(
        monkeypatch,
        {
            "intranet.example": lambda: ["10.1.2.3"],
            # One public address does not excuse a private one next to it.
            "mixed.example": lambda: ["93.184.216.34", "10.0.0.7"],
            "v6.example": lambda: ["2606:4700::1111", "fd00::5"],
        },
    )
    with guarded_session(STRICT) as session:
        for name in ("intranet.example", "mixed.example", "v6.example"):
            with pytest.raises(DestinationRefused) as info:
                session.get(f"http://{name}/token?x={QUERY_SECRET}", timeout=0.5)
            assert name in str(info.value)
            assert_clean(info.value)
    assert asked == ["intranet.example", "mixed.example", "v6.example"]


def test_allowed_private_hosts_are_reached(serve: Callable[..., Server]) -> None:
    server = serve(answer(200, b'{"ok": true}'))
    policy = replace(STRICT, allowed_private_hosts=frozenset({"localhost"}))
    with guarded_session(policy) as session:
        assert session.get(f"http://localhost:{server.port}/").json() == {"ok": True}
        # The name is allowed, not the address behind it.
        with pytest.raises(DestinationRefused):
            session.get(server.url("/"))
    assert server.seen() == 1


def test_allowed_private_networks_are_reached(serve: Callable[..., Server]) -> None:
    server = serve(answer(200, b'{"ok": true}'))
    policy = replace(STRICT, allowed_private_hosts=frozenset({"127.0.0.0/8"}))
    with guarded_session(policy) as session:
        assert session.get(server.url("/")).json() == {"ok": True}
        assert session.get(f"http://localhost:{server.port}/").json() == {"ok": True}


def test_dns_rebinding_cannot_move_the_connection(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the address that was checked, never to a second answer.

    ``rebind.test`` first resolves to 127.0.0.2 (allowed by the policy), then to
    127.0.0.1 (not allowed).  Two servers listen on the same port, one per address: a
    client resolving again at connect time (as urllib3 does by itself) would reach the
    127.0.0.1 one.
    """
    try:
        checked = serve(answer(200, b"checked"), host="127.0.0.2")
        rebound = serve(answer(200, b"rebound"), host="127.0.0.1", port=checked.port)
    except OSError:
        pytest.skip("cannot listen on 127.0.0.2 and 127.0.0.1 with one port")
    lookups = iter([["127.0.0.2"]])
    asked = fake_dns(monkeypatch, {"rebind.test": lambda: next(lookups, ["127.0.0.1"])})
    policy = replace(STRICT, allowed_private_hosts=frozenset({"127.0.0.2/32"}))

    with guarded_session(policy) as session:
        response = session.get(f"http://rebind.test:{checked.port}/")
        assert response.content == b"checked"
        assert asked == ["rebind.test"]  # one lookup, no second one at connect time
        assert b"Host: rebind.test:" in checked.requests[0]
        # The next call checks again, at its own request time.
        with pytest.raises(DestinationRefused):
            session.get(f"http://rebind.test:{checked.port}/")
    assert asked == ["rebind.test", "rebind.test"]
    assert rebound.seen() == 0
    assert checked.seen() == 1


# --------------------------------------------------------------------------- name lookups


@pytest.fixture
def stuck_dns() -> Iterator[threading.Event]:
    """A gate that lookups made to hang wait on; opened after the test, so the resolver
    threads they hold are free again for the next one."""
    gate = threading.Event()
    yield gate
    gate.set()


def _hangs(gate: threading.Event) -> Callable[[], list[str]]:
    """A lookup that answers once ``gate`` opens (each test hangs names of its own: a
    caller asking for a name still being looked up would share that lookup)."""

    def lookup() -> list[str]:
        gate.wait(30)
        return ["93.184.216.34"]

    return lookup


def _resolver_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "zis-resolver")


def test_a_name_that_never_resolves_fails_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, stuck_dns: threading.Event
) -> None:
    """``getaddrinfo`` cannot be interrupted: the caller stops waiting for it."""
    fake_dns(monkeypatch, {"never.example": _hangs(stuck_dns)})
    policy = replace(STRICT, timeout=0.5)
    with guarded_session(policy) as session:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            session.get(f"http://never.example/token?x={QUERY_SECRET}", timeout=5)
        waited = time.monotonic() - started
    assert 0.45 <= waited < 1.5, waited
    assert "Resolving never.example" in str(info.value)
    assert_clean(info.value)


def test_a_stuck_name_does_not_hold_up_another(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, stuck_dns: threading.Event
) -> None:
    server = serve(answer(200, b'{"ok": true}'))
    fake_dns(monkeypatch, {"held.example": _hangs(stuck_dns), "api.example": lambda: ["127.0.0.1"]})
    policy = replace(STRICT, timeout=3.0, allowed_private_hosts=frozenset({"api.example"}))
    failures: list[BaseException] = []

    def stuck_call() -> None:
        with guarded_session(policy) as session:
            try:
                session.get("http://held.example/")
            except BaseException as exc:
                failures.append(exc)

    caller = threading.Thread(target=stuck_call)
    caller.start()
    time.sleep(0.1)  # its lookup holds a resolver thread now
    with guarded_session(policy) as session:
        started = time.monotonic()
        assert session.get(f"http://api.example:{server.port}/").json() == {"ok": True}
        assert time.monotonic() - started < 1.0
    assert caller.is_alive()  # still waiting for its own name
    caller.join(5)
    assert len(failures) == 1 and isinstance(failures[0], DeadlineExceeded)


def test_callers_of_one_name_at_once_share_one_lookup(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of calls to one provider: one lookup, every caller its own connection to
    the address it found (and each a fresh lookup once that one is done)."""
    server = serve(answer(200, b'{"ok": true}'))

    def slow_answer() -> list[str]:
        time.sleep(1.0)
        return ["127.0.0.1"]

    asked = fake_dns(monkeypatch, {"shared.example": slow_answer})
    policy = replace(STRICT, timeout=5.0, allowed_private_hosts=frozenset({"shared.example"}))
    callers = 16

    def call(_: int) -> Any:
        with guarded_session(policy) as session:
            return session.get(f"http://shared.example:{server.port}/").json()

    bodies, errors = run_threads(callers, call)
    assert errors == []
    assert bodies == [{"ok": True}] * callers
    assert asked == ["shared.example"]
    with guarded_session(policy) as session:
        session.get(f"http://shared.example:{server.port}/")
    assert asked == ["shared.example", "shared.example"]  # answers are not kept
    assert server.seen() == callers + 1


def test_a_name_that_does_not_resolve_fails_each_of_its_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers sharing a lookup that fails each get the failure as a connection error
    of their own, naming the host and nothing of the request."""

    def gone() -> list[str]:
        time.sleep(0.5)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    asked = fake_dns(monkeypatch, {"gone.example": gone})
    callers = 8

    def call(_: int) -> None:
        with guarded_session(STRICT) as session:
            session.get(f"http://gone.example/token?x={QUERY_SECRET}")

    _, failures = run_threads(callers, call)
    assert asked == ["gone.example"]
    assert len(failures) == callers and len({id(f) for f in failures}) == callers
    for failure in failures:
        assert type(failure) is requests.ConnectionError
        assert str(failure) == "Could not resolve gone.example."
        assert_clean(failure)


def test_a_resolver_outage_holds_a_bounded_number_of_threads(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, stuck_dns: threading.Event
) -> None:
    """Every lookup hangs: each caller fails at its deadline, at most ``MAX_THREADS``
    threads are stuck (lookups nobody waits for any more are dropped before they start),
    and once the resolver answers again so do the calls."""
    names = [f"n{i}.outage.example" for i in range(3 * MAX_THREADS)]
    answers = {**{n: _hangs(stuck_dns) for n in names}, "api.example": lambda: ["127.0.0.1"]}
    asked = fake_dns(monkeypatch, answers)
    policy = replace(STRICT, timeout=0.5, allowed_private_hosts=frozenset({"api.example"}))

    def call(index: int) -> None:
        with guarded_session(policy) as session:
            session.get(f"http://{names[index]}/")

    _, failures = run_threads(len(names), call)
    assert len(failures) == len(names)
    assert all(isinstance(f, DeadlineExceeded) for f in failures), failures
    assert 0 < len(asked) <= MAX_THREADS
    assert RESOLVER.threads <= MAX_THREADS and _resolver_threads() <= MAX_THREADS

    stuck_dns.set()
    server = serve(answer(200, b'{"ok": true}'))
    with guarded_session(policy) as session:
        assert session.get(f"http://api.example:{server.port}/").json() == {"ok": True}
    # Lookups are served in order: the ones abandoned in line would have run by now.
    assert len([name for name in asked if name != "api.example"]) <= MAX_THREADS


def test_a_lookup_thread_that_cannot_start_fails_the_call_and_is_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of threads, the caller gets the error at once (not a wait for a lookup no
    thread will run), and the resolver starts a thread for the next lookup as usual."""
    resolver = Resolver(max_threads=2)

    def refuse(*args: Any) -> int:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(_thread, "start_new_thread", refuse)
        with pytest.raises(RuntimeError):
            resolver.resolve("localhost", 80, socket.AF_INET, lambda: 5.0)
    assert resolver.threads == 0
    infos = resolver.resolve("localhost", 80, socket.AF_INET, lambda: 5.0)
    assert infos and all(info[4][0] == "127.0.0.1" for info in infos)
    assert resolver.threads == 1


def test_lookups_after_the_first_start_no_thread(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's lookup runs on a resolver thread that is already there: the calling
    thread starts none (each start waits for the GIL under load)."""
    server = serve(answer(200, b'{"ok": true}'))
    fake_dns(monkeypatch, {"api.example": lambda: ["127.0.0.1"]})
    policy = replace(STRICT, allowed_private_hosts=frozenset({"api.example"}))
    caller = threading.get_ident()
    started: list[Any] = []

    def counting(real: Callable[..., Any]) -> Callable[..., Any]:
        def start(function: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == caller:
                started.append(function)
            return real(function, *args, **kwargs)

        return start

    with guarded_session(policy) as session:
        session.get(f"http://api.example:{server.port}/")
        monkeypatch.setattr(_thread, "start_new_thread", counting(_thread.start_new_thread))
        monkeypatch.setattr(threading, "_start_new_thread", counting(threading._start_new_thread))  # type: ignore[attr-defined]
        for _ in range(20):
            assert session.get(f"http://api.example:{server.port}/").json() == {"ok": True}
    assert started == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_resolves_on_threads_of_its_own(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, stuck_dns: threading.Event
) -> None:
    """The parent's resolver threads, all stuck at the fork, are not the child's: its
    lookups do not queue behind them."""
    server = serve(answer(200, b'{"ok": true}'))
    names = [f"n{i}.fork.example" for i in range(MAX_THREADS)]
    fake_dns(monkeypatch, {**{n: _hangs(stuck_dns) for n in names}, "api.example": lambda: ["127.0.0.1"]})
    policy = replace(STRICT, timeout=3.0, allowed_private_hosts=frozenset({"api.example"}))
    parent_callers = []
    for name in names:

        def stuck_call(name: str = name) -> None:
            with guarded_session(policy) as session, contextlib.suppress(DeadlineExceeded):
                session.get(f"http://{name}/")

        parent_callers.append(threading.Thread(target=stuck_call))
        parent_callers[-1].start()
    time.sleep(0.2)

    def child_resolves() -> bool:
        with guarded_session(policy) as session:
            return bool(session.get(f"http://api.example:{server.port}/", timeout=1).json() == {"ok": True})

    assert in_forked_child(child_resolves)
    stuck_dns.set()
    for t in parent_callers:
        t.join(5)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::5db8:d822", True),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("100.127.255.254", False),
        ("192.0.0.8", False),
        ("198.18.0.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("fe80::1", False),
        ("fec0::1", False),
        ("2001::1", False),
        ("2001:db8::1", False),
        ("64:ff9b:1::1", False),
        ("ff0e::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_policy_normalizes_its_allowlist() -> None:
    policy = OutboundPolicy(
        timeout=1,
        max_response_bytes=10,
        allow_private=False,
        allowed_private_hosts=["IdP.Internal.", " 10.0.0.0/8 ", ""],  # type: ignore[arg-type]
    )
    assert policy.allowed_private_hosts == frozenset({"idp.internal", "10.0.0.0/8"})
    assert policy.permits("idp.internal", [ipaddress.ip_address("192.168.0.1")]) is None
    assert policy.permits("other", [ipaddress.ip_address("10.9.9.9")]) is None
    assert policy.permits("other", [ipaddress.ip_address("192.168.0.1")]) is not None
    with pytest.raises(ValueError):
        OutboundPolicy(timeout=0, max_response_bytes=10, allow_private=False)


# --------------------------------------------------------------------------- environment


def test_environment_proxies_are_ignored(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = serve(answer(200, b"via proxy"))
    target = serve(answer(200, b"direct"))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url("/"))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    with requests.Session() as plain:  # the set-up works: a plain session uses the proxy
        assert plain.get(target.url("/")).content == b"via proxy"
    with guarded_session(LOOPBACK) as session:
        assert session.get(target.url("/")).content == b"direct"
    assert proxy.seen() == 1
    assert target.seen() == 1


def test_explicit_proxies_are_refused(serve: Callable[..., Server]) -> None:
    proxy = serve(answer(200, b"via proxy"))
    with guarded_session(LOOPBACK) as session, pytest.raises(OutboundRefused):
        session.get("http://127.0.0.1:9/", proxies={"http": proxy.url("/")})
    assert proxy.seen() == 0


def test_netrc_credentials_are_not_sent(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = serve(answer(200, b"{}"))
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    with requests.Session() as plain:  # the set-up works: a plain session sends them
        plain.get(server.url("/"))
    with guarded_session(LOOPBACK) as session:
        session.get(server.url("/"))
    assert b"Authorization: Basic" in server.requests[0]
    assert b"Authorization" not in server.requests[1]


def test_harden_replaces_every_adapter() -> None:
    with OAuth2Session(client_id="c") as session:
        session.mount("http://127.0.0.1", requests.adapters.HTTPAdapter())
        hardened = harden(session, LOOPBACK)
        assert hardened is session
        assert session.trust_env is False
        assert session.max_redirects == 0
        assert set(session.adapters) == {"http://", "https://"}
        assert all(isinstance(a, GuardedAdapter) for a in session.adapters.values())


def test_the_adapter_opens_no_connection_outside_send() -> None:
    adapter = GuardedAdapter(LOOPBACK)
    request = requests.Request("GET", "http://127.0.0.1:9/").prepare()
    with pytest.raises(OutboundRefused):
        adapter.get_connection_with_tls_context(request, True)
    adapter.close()


# --------------------------------------------------------------------------- TLS and Authlib


@dataclass
class Certs:
    ca: Path
    localhost: ssl.SSLContext  # a server context for "localhost" / 127.0.0.1
    other: ssl.SSLContext  # a server context for "other.example" only


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = root / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def server_context(stem: str, sans: list[x509.GeneralName]) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(stem))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = root / f"{stem}.pem", root / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context

    return Certs(
        ca=ca_path,
        localhost=server_context(
            "localhost",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ),
        other=server_context("other", [x509.DNSName("other.example")]),
    )


def test_authlib_fetches_a_token_through_the_guard_over_tls(
    serve: Callable[..., Server], certs: Certs
) -> None:
    token = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600}
    server = serve(
        answer(200, json.dumps(token).encode(), {"Content-Type": "application/json"}), tls=certs.localhost
    )
    policy = replace(STRICT, allowed_private_hosts=frozenset({"localhost"}))
    with OAuth2Session(
        client_id="cid", client_secret=BODY_SECRET, token_endpoint_auth_method="client_secret_post"
    ) as oauth:
        harden(oauth, policy)
        oauth.verify = str(certs.ca)
        fetched = oauth.fetch_token(
            f"https://localhost:{server.port}/token", grant_type="client_credentials", timeout=5
        )
    assert fetched["access_token"] == "at-1"
    assert f"client_secret={BODY_SECRET}".encode() in server.requests[0]


def test_tls_still_verifies_the_url_host_name(serve: Callable[..., Server], certs: Certs) -> None:
    """The address is pinned, the certificate is still checked against the URL's host."""
    server = serve(answer(200, b"{}"), tls=certs.other)
    with guarded_session(replace(LOOPBACK, timeout=5)) as session:
        session.verify = str(certs.ca)
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://localhost:{server.port}/")
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://127.0.0.1:{server.port}/")
