"""A real loopback HTTP server that misbehaves on purpose: redirects, drips, floods.

The extension must be safe against a provider (or whatever its URL points at) that
answers with a redirect to another host, drips its answer one byte at a time, sends
megabytes, or stalls.  Each test gives :class:`HostileServer` a ``behave`` function
that writes the raw answer to the socket; every request that reached the server is
recorded (method, path, headers, body), so a test can prove a request was never sent.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Behaviour = Callable[["HostileHandler"], None]


class HostileHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.record(Seen(self.command, self.path, dict(self.headers.items()), body))
        # The client giving up on us (a broken pipe) is exactly what some tests want.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.owner.behave(self)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- answers tests compose ---------------------------------------------------------
    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def json(self, body: bytes, status: int = 200) -> None:
        self.answer(status, body, {"Content-Type": "application/json"})

    def redirect(self, status: int, location: str) -> None:
        self.answer(status, b"", {"Location": location})

    def drip(self, data: bytes, every: float, *, headers_too: bool = False) -> None:
        """Send ``data`` one byte per ``every`` seconds (after the headers, or with them)."""
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        stream = head + data if headers_too else data
        if not headers_too:
            self.wfile.write(head)
            self.wfile.flush()
        for i in range(len(stream)):
            self.wfile.write(stream[i : i + 1])
            self.wfile.flush()
            time.sleep(every)

    def flood(self, size: int, chunk: int = 64 * 1024) -> None:
        """A ``size``-byte JSON-ish body, declared honestly or not at all (chunked)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        sent = 0
        block = b" " * chunk
        while sent < size:
            piece = block[: min(chunk, size - sent)]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileServer


class HostileServer:
    """``with HostileServer(behave) as srv: srv.url ...``; ``srv.seen`` lists requests."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), HostileHandler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
