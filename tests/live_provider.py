"""Run the instrumented demo OAuth provider on a real loopback port for a test.

The provider is the example app's, with the test suite's call logs and fault injection
(:mod:`tests.support.instrumented_provider`). The extension talks to providers over HTTP
with ``requests``; the Flask test client cannot answer those calls, so the provider gets a
real (threaded) werkzeug server on ``127.0.0.1:<free port>``. :meth:`LiveProvider.approve`
plays the user's browser on the consent page. :attr:`LiveProvider.behave_like` makes it play
a real provider's quirks (:mod:`tests.support.quirks`), and :meth:`LiveProvider.for_tenant`
gives its URLs on a per-account "host" (``/t/<tenant>/...``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .support.instrumented_provider import InstrumentedProviderState, create_instrumented_provider_app

__all__ = ["DEFAULT_REDIRECT_URI", "SUBDOMAIN", "LiveProvider"]

#: Where the extension's callback lives when a test drives it with Flask's test client
#: (whose default host is ``localhost``).
DEFAULT_REDIRECT_URI = "http://localhost/api/services/zis/connections/oauth/callback"

#: Authlib's server-side grants log every issued token at DEBUG ("Issue token ..."). Tests
#: that assert no token reaches the logs would trip over the provider's logs, not ours.
_NOISY_LOGGER = "authlib.oauth2.rfc6749.grants"

_HTTP_TIMEOUT = 10.0

#: The placeholder the extension fills with a connection's ``oauth_url_subdomain``.
SUBDOMAIN = "{{subdomain}}"


class LiveProvider:
    """A started-on-demand provider server; use as a context manager or call start/stop."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.app = create_instrumented_provider_app(config)
        self.state: InstrumentedProviderState = self.app.extensions["demo_provider"]
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._conn_lock = threading.Lock()
        # Open client connections and the threads serving them, so stop() can close idle
        # keep-alive connections and wait for their threads instead of leaking them.
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._saved_log_level: int | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> LiveProvider:
        if self._server is not None:
            raise RuntimeError("This LiveProvider is already running; call stop() first.")
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=self._handler_class()
        )
        # Python's ThreadingMixIn joins *every* handler thread in server_close(), including
        # ones idling on a keep-alive connection a test forgot to close: stop() would hang.
        # We track connections ourselves instead (see stop()).
        self._server.block_on_close = False  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"live-provider-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        noisy = logging.getLogger(_NOISY_LOGGER)
        self._saved_log_level = noisy.level
        noisy.setLevel(logging.WARNING)
        return self

    def stop(self) -> None:
        """Stop serving and release every socket and thread, so no ResourceWarning follows."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        with self._conn_lock:
            connections = list(self._connections.items())
        for conn, _thread in connections:
            # Wakes a handler blocked reading the next keep-alive request; a handler still
            # busy with a request (a "timeout" fault) gets an error writing and ends too.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _conn, thread in connections:
            thread.join(timeout=float(self.app.config["FAULT_SLEEP"]) + 5.0)
        self._server = None
        self._thread = None
        if self._saved_log_level is not None:
            logging.getLogger(_NOISY_LOGGER).setLevel(self._saved_log_level)
            self._saved_log_level = None

    def __enter__(self) -> LiveProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handler_class(self) -> type[WSGIRequestHandler]:
        live = self

        class _Handler(WSGIRequestHandler):
            def setup(self) -> None:
                super().setup()
                with live._conn_lock:
                    live._connections[self.connection] = threading.current_thread()

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with live._conn_lock:
                        live._connections.pop(self.connection, None)

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                # The access log would print authorize URLs (state, code_challenge) into
                # captured logs; tests read the provider's state instead.
                pass

        return _Handler

    # -- URLs --------------------------------------------------------------------------

    def _require_url(self) -> str:
        if not self.url:
            raise RuntimeError("The provider is not running; call start() first.")
        return self.url

    @property
    def auth_url(self) -> str:
        return f"{self._require_url()}/oauth/authorize"

    @property
    def token_url(self) -> str:
        return f"{self._require_url()}/oauth/token"

    @property
    def revocation_url(self) -> str:
        return f"{self._require_url()}/oauth/revoke"

    @property
    def api_url(self) -> str:
        """``GET /api/me``: answers 200 JSON for a live access token."""
        return f"{self._require_url()}/api/me"

    def for_tenant(self, url: str, tenant: str = SUBDOMAIN) -> str:
        """``url`` (one of this provider's) on the account ``tenant``'s "host":
        ``http://127.0.0.1:<port>/t/<tenant>/oauth/token``. The default tenant is the
        ``{{subdomain}}`` placeholder, for a client URL the extension interpolates."""
        base = self._require_url()
        if not url.startswith(base + "/"):
            raise ValueError(f"{url} is not a URL of this provider ({base}).")
        return f"{base}/t/{tenant}{url[len(base) :]}"

    # -- quirks ------------------------------------------------------------------------

    @property
    def behave_like(self) -> str | None:
        """The real provider whose quirks this one plays (``None``: the plain demo)."""
        return self.state.behave_like

    @behave_like.setter
    def behave_like(self, name: str | None) -> None:
        self.state.behave_like = name

    # -- helpers ------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        redirect_uris: Iterable[str] = (DEFAULT_REDIRECT_URI,),
        **kw: Any,
    ) -> None:
        """Register a client; ``kw`` goes to :meth:`~example_app.provider.ProviderState.register_client`."""
        self.state.register_client(client_id, client_secret, list(redirect_uris), **kw)

    def approve(
        self,
        authorize_url: str,
        *,
        confirm: bool = True,
        cookies: dict[str, str] | None = None,
    ) -> str:
        """Act as the user's browser at the provider and return where it sends the browser.

        GET the authorize URL (the consent page), then POST the consent form (``confirm=yes``
        or ``confirm=no``) to the same URL, without following redirects. The result is the
        ``Location`` of the provider's redirect: the client's redirect_uri with
        ``code`` and ``state``, or with ``error=access_denied`` and ``state``. The
        authorize URL may be a tenant's (:meth:`for_tenant`). If the provider redirects
        straight from the GET (an invalid request it can report to the
        client), that Location is returned. An error it cannot redirect raises
        ``AssertionError`` with the provider's answer.
        """
        own = re.match(rf"{re.escape(self._require_url())}(?:/t/[^/?#]+)?/oauth/authorize\?", authorize_url)
        if own is None:
            raise AssertionError(
                f"{urlsplit(authorize_url)._replace(query='').geturl()} is not this "
                f"provider's authorize endpoint {self.auth_url}."
            )
        with requests.Session() as browser:
            if cookies:
                browser.cookies.update(cookies)
            page = browser.get(authorize_url, allow_redirects=False, timeout=_HTTP_TIMEOUT)
            if page.is_redirect:
                return str(page.headers["Location"])
            if page.status_code != 200:
                raise AssertionError(f"The consent page answered {page.status_code}: {page.text[:500]}")
            answer = browser.post(
                authorize_url,
                data={"confirm": "yes" if confirm else "no"},
                allow_redirects=False,
                timeout=_HTTP_TIMEOUT,
            )
        if not answer.is_redirect:
            raise AssertionError(
                f"The consent form answered {answer.status_code} without a redirect: {answer.text[:500]}"
            )
        return str(answer.headers["Location"])
