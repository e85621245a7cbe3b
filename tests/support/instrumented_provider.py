"""The demo OAuth provider with the test suite's instruments: call logs, counters, faults.

The extension's tests need to see what reached the provider (how many refreshes, with
which client authentication) and to make it fail on cue (time out, answer HTML, refuse a
refresh token). None of that belongs in the demo, so it lives here, in a subclass of the
demo's :class:`~example_app.provider.ProviderState` that overrides the demo's extension
point (:meth:`~example_app.provider.ProviderState.around_request` and
:meth:`~example_app.provider.ProviderState.issues_refresh_token`). The OAuth protocol code
the tests run against is the demo's, unchanged.

Config keys added to the demo's: ``FAULT_SLEEP`` (seconds a ``timeout`` fault waits,
default 3), ``SLOW_SLEEP`` (seconds a ``slow`` fault waits before answering normally,
default 0.5) and ``BEHAVE_LIKE`` (a real provider's quirks to play, from
:data:`tests.support.quirks.BEHAVIOURS`, e.g. ``"slack"``; default ``None``, the plain
demo; the behaviours read a few keys of their own, see :mod:`tests.support.quirks`).

Every endpoint is also served under ``/t/<tenant>/...`` (the tenant recorded with each
call), so a client URL with ``{{subdomain}}`` in it really reaches "the account's host":
``*.localhost`` names do not resolve everywhere, paths do.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import Flask, Response, current_app, g, jsonify, request

from example_app.provider import Endpoint, ProviderState, create_provider_app

from .quirks import (
    REFRESH_TOKEN_DECISION_KEY,
    STANDARD_TOKEN_FIELDS,
    TENANT_ENVIRON_KEY,
    Behaviour,
    make_behaviour,
)

__all__ = [
    "DEFAULT_CONFIG",
    "FAULT_KINDS",
    "InstrumentedProviderState",
    "TenantPaths",
    "create_instrumented_provider_app",
]

#: Faults :meth:`InstrumentedProviderState.inject_token_fault` understands.
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

DEFAULT_CONFIG: dict[str, Any] = {"FAULT_SLEEP": 3.0, "SLOW_SLEEP": 0.5, "BEHAVE_LIKE": None}


class InstrumentedProviderState(ProviderState):
    """Provider state that logs every request it is told about and injects faults.

    Attributes tests read: ``token_calls`` (one dict per request that reached
    ``/oauth/token``, failed ones included), ``revocations`` (one per ``/oauth/revoke``
    request), ``authorize_requests`` (the query of every consent-page GET, so tests can
    check what a client sent) and ``authorize_calls`` (every authorize request, both
    methods, with its raw query, tenant, status and redirect ``location``). A token call
    records the whole form the client sent (``form``, without ``client_secret``), the
    fields beyond RFC 6749's (``extra_params``), the ``tenant`` path it came through, the
    ``behaviour`` that answered and the answer (``content_type``, ``answer``: the parsed
    body). Lists are appended under the lock; read them after the requests you care
    about have returned.

    ``behave_like`` (settable; the ``BEHAVE_LIKE`` config key sets it at creation) names
    the real provider whose quirks the endpoints play (:mod:`tests.support.quirks`);
    ``None`` is the plain demo. Setting it starts that behaviour with an empty memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.token_calls: list[dict[str, Any]] = []
        self.revocations: list[dict[str, Any]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.authorize_calls: list[dict[str, Any]] = []
        self._faults: deque[str] = deque()
        self._behaviour: Behaviour | None = None

    # -- which real provider to play -----------------------------------------------------

    @property
    def behave_like(self) -> str | None:
        behaviour = self._behaviour
        return None if behaviour is None else behaviour.name

    @behave_like.setter
    def behave_like(self, name: str | None) -> None:
        behaviour = None if name is None else make_behaviour(name)
        with self.lock:
            self._behaviour = behaviour

    @property
    def behaviour(self) -> Behaviour | None:
        """The behaviour object playing ``behave_like`` (``None``: the plain demo)."""
        return self._behaviour

    # -- what an operator at the provider could do ---------------------------------------

    def revoke_client(self, client_id: str) -> None:
        """Make the client unknown to every endpoint: later token calls get invalid_client."""
        with self.lock:
            if self.clients.pop(client_id, None) is None:
                raise KeyError(f"No client {client_id!r} is registered; call register_client first.")

    def revoke_refresh_token(self, token: str) -> None:
        """Revoke one refresh token: the next refresh with it gets invalid_grant."""
        with self.lock:
            try:
                self._by_refresh[token].refresh_revoked = True
            except KeyError:
                raise KeyError("This provider never issued that refresh token.") from None

    def is_access_token_active(self, token: str) -> bool:
        with self.lock:
            issued = self._by_access.get(token)
            return issued is not None and not issued.is_revoked() and not issued.is_expired()

    # -- faults and counters -------------------------------------------------------------

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
            self.authorize_calls.clear()

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

    # -- the demo's extension point ------------------------------------------------------

    def around_request(self, endpoint: Endpoint, respond: Callable[[], Response]) -> Response:
        behaviour = self._behaviour
        tenant = request.environ.get(TENANT_ENVIRON_KEY)
        if endpoint == "authorize":
            call: dict[str, Any] = {
                "method": request.method,
                "args": request.args.to_dict(),
                "raw_query": request.query_string.decode("latin-1"),
                "tenant": tenant,
                "status": None,
                "location": None,
            }
            with self.lock:
                if request.method == "GET":
                    self.authorize_requests.append(request.args.to_dict())
                self.authorize_calls.append(call)
            response = respond() if behaviour is None else behaviour.authorize(self.clients, respond)
            with self.lock:
                call["status"] = response.status_code
                call["location"] = response.headers.get("Location")
            return response
        if endpoint == "revocation":
            entry = _describe_revocation_request()
            with self.lock:
                self.revocations.append(entry)
            return self._finish(entry, respond())
        entry = _describe_token_request()
        entry["tenant"] = tenant
        entry["behaviour"] = None if behaviour is None else behaviour.name
        # Record the call and take the next fault in one step, so order holds under load.
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
            entry["fault"] = fault
            self.token_calls.append(entry)
        g.instrumented_provider_fault = fault  # flask.g is request-scoped

        def answer() -> Response:
            # omit_refresh_token is handled by issues_refresh_token: the demo then leaves
            # the refresh token out and keeps the presented one alive.
            canned = _fault_response(fault)
            return respond() if canned is None else canned

        response = answer() if behaviour is None else behaviour.token(answer)
        content_type = response.mimetype
        parsed = _parse_answer(response)
        with self.lock:
            entry["content_type"] = content_type
            entry["answer"] = parsed
        return self._finish(entry, response)

    def issues_refresh_token(self) -> bool:
        fault: str | None = g.get("instrumented_provider_fault")
        return fault != "omit_refresh_token" and bool(g.get(REFRESH_TOKEN_DECISION_KEY, True))

    def _finish(self, entry: dict[str, Any], response: Response) -> Response:
        with self.lock:
            entry["status"] = response.status_code
        return response


def create_instrumented_provider_app(config: dict[str, Any] | None = None) -> Flask:
    """The demo provider app on an :class:`InstrumentedProviderState`.

    The state is ``app.extensions["demo_provider"]``, as in the demo. The app also
    answers under ``/t/<tenant>/...`` (:class:`TenantPaths`).
    """
    state = InstrumentedProviderState()
    app = create_provider_app({**DEFAULT_CONFIG, **(config or {})}, state=state)
    state.behave_like = app.config["BEHAVE_LIKE"]
    app.wsgi_app = TenantPaths(app.wsgi_app)  # type: ignore[method-assign]
    return app


class TenantPaths:
    """WSGI middleware: serve ``/t/<tenant>/<path>`` as ``/<path>``, the prefix moved to
    ``SCRIPT_NAME`` and the tenant left in the environ for the endpoints to record.

    A real per-account provider (Zendesk, Shopify, a Microsoft tenant) has one host per
    account; a loopback test server gets one path prefix per account instead.
    """

    PREFIX = "t"

    def __init__(self, wsgi_app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        parts = str(environ.get("PATH_INFO", "")).split("/", 3)
        if len(parts) == 4 and parts[1] == self.PREFIX and parts[2]:
            environ[TENANT_ENVIRON_KEY] = parts[2]
            environ["SCRIPT_NAME"] = f"{environ.get('SCRIPT_NAME', '')}/{self.PREFIX}/{parts[2]}"
            environ["PATH_INFO"] = "/" + parts[3]
        return self.wsgi_app(environ, start_response)


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
        "form": {k: v for k, v in form.items() if k != "client_secret"},
        "extra_params": {k: v for k, v in form.items() if k not in STANDARD_TOKEN_FIELDS},
        "status": None,
    }
    if entry["grant_type"] == "refresh_token":
        entry["refresh_token"] = form.get("refresh_token")
    return entry


def _describe_revocation_request() -> dict[str, Any]:
    basic_id, _secret = extract_basic_authorization(request.headers)
    return {
        "token": request.form.get("token"),
        "token_type_hint": request.form.get("token_type_hint"),
        "client_id": basic_id or request.form.get("client_id"),
        "status": None,
    }


def _parse_answer(response: Response) -> dict[str, Any] | None:
    """The token endpoint's answer as a dict (JSON or form-encoded), else ``None``."""
    if response.is_streamed:
        return None
    if response.is_json:
        data = response.get_json(silent=True)
        return data if isinstance(data, dict) else None
    if response.mimetype == "application/x-www-form-urlencoded":
        return dict(parse_qsl(response.get_data(as_text=True), keep_blank_values=True))
    return None
