"""The demo OAuth provider with the test suite's instruments: call logs, counters, faults.

The extension's tests need to see what reached the provider (how many refreshes, with
which client authentication) and to make it fail on cue (time out, answer HTML, refuse a
refresh token). None of that belongs in the demo, so it lives here, in a subclass of the
demo's :class:`~example_app.provider.ProviderState` that overrides the demo's extension
point (:meth:`~example_app.provider.ProviderState.around_request` and
:meth:`~example_app.provider.ProviderState.issues_refresh_token`). The OAuth protocol code
the tests run against is the demo's, unchanged.

Config keys added to the demo's: ``FAULT_SLEEP`` (seconds a ``timeout`` fault waits,
default 3) and ``SLOW_SLEEP`` (seconds a ``slow`` fault waits before answering normally,
default 0.5).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import Flask, Response, current_app, g, jsonify, request

from example_app.provider import Endpoint, ProviderState, create_provider_app

__all__ = ["DEFAULT_CONFIG", "FAULT_KINDS", "InstrumentedProviderState", "create_instrumented_provider_app"]

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

DEFAULT_CONFIG: dict[str, Any] = {"FAULT_SLEEP": 3.0, "SLOW_SLEEP": 0.5}


class InstrumentedProviderState(ProviderState):
    """Provider state that logs every request it is told about and injects faults.

    Attributes tests read: ``token_calls`` (one dict per request that reached
    ``/oauth/token``, failed ones included), ``revocations`` (one per ``/oauth/revoke``
    request) and ``authorize_requests`` (the query of every consent-page GET, so tests can
    check what a client sent). Lists are appended under the lock; read them after the
    requests you care about have returned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.token_calls: list[dict[str, Any]] = []
        self.revocations: list[dict[str, Any]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self._faults: deque[str] = deque()

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
        if endpoint == "authorize":
            if request.method == "GET":
                with self.lock:
                    self.authorize_requests.append(request.args.to_dict())
            return respond()
        if endpoint == "revocation":
            entry = _describe_revocation_request()
            with self.lock:
                self.revocations.append(entry)
            return self._finish(entry, respond())
        entry = _describe_token_request()
        # Record the call and take the next fault in one step, so order holds under load.
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
            entry["fault"] = fault
            self.token_calls.append(entry)
        g.instrumented_provider_fault = fault  # flask.g is request-scoped
        # omit_refresh_token is handled by issues_refresh_token: the demo then leaves the
        # refresh token out and keeps the presented one alive.
        response = _fault_response(fault)
        return self._finish(entry, respond() if response is None else response)

    def issues_refresh_token(self) -> bool:
        fault: str | None = g.get("instrumented_provider_fault")
        return fault != "omit_refresh_token"

    def _finish(self, entry: dict[str, Any], response: Response) -> Response:
        with self.lock:
            entry["status"] = response.status_code
        return response


def create_instrumented_provider_app(config: dict[str, Any] | None = None) -> Flask:
    """The demo provider app on an :class:`InstrumentedProviderState`.

    The state is ``app.extensions["demo_provider"]``, as in the demo.
    """
    return create_provider_app({**DEFAULT_CONFIG, **(config or {})}, state=InstrumentedProviderState())


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


def _describe_revocation_request() -> dict[str, Any]:
    basic_id, _secret = extract_basic_authorization(request.headers)
    return {
        "token": request.form.get("token"),
        "token_type_hint": request.form.get("token_type_hint"),
        "client_id": basic_id or request.form.get("client_id"),
        "status": None,
    }
