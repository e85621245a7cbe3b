"""Blinker signals for host code (audit logs, metrics).

Payloads carry identifiers only (integration, name, uuid, reason), never a token or
secret, so a careless receiver cannot leak one into a log.  Every signal's ``sender``
is the Flask app.  Receivers run inside the operation that sends: keep them quick and
never let them raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from blinker import Namespace

from .outbound.errors import RedirectRefused

_signals = Namespace()

#: ``sender`` is the Flask app; kwargs: ``integration``, ``name``, ``uuid``.
connection_created = _signals.signal("zis-connection-created")
#: kwargs: ``integration``, ``name``, ``uuid``, ``token_expiry``.
connection_refreshed = _signals.signal("zis-connection-refreshed")
#: kwargs: ``integration``, ``name``, ``uuid``, ``reason`` (an OAuth error code or a short text),
#: ``needs_reauth`` (the provider refused: a person must connect again), ``backoff_started``
#: (the first failure in a row: the connection starts backing off).
connection_refresh_failed = _signals.signal("zis-connection-refresh-failed")
#: kwargs: ``integration``, ``name``, ``uuid``, ``revoked`` (True/False/None when not attempted).
connection_deleted = _signals.signal("zis-connection-deleted")
#: A refresh was due or asked for but not attempted: the connection is backing off after
#: a failed one.  kwargs: ``integration``, ``name``, ``uuid``, ``retry_after`` (seconds).
refresh_backed_off = _signals.signal("zis-refresh-backed-off")

#: An authorization-code flow was recorded, or a client-credentials token is being
#: fetched.  kwargs: ``integration``, ``name`` (the connection's), ``grant_type``.
flow_started = _signals.signal("zis-flow-started")
#: A flow stored its connection.  kwargs: ``integration``, ``name``, ``uuid``, ``grant_type``.
flow_completed = _signals.signal("zis-flow-completed")
#: A started flow ended without a connection (the provider or the person refused, the code
#: exchange failed).  kwargs: ``integration``, ``name``, ``grant_type``, ``reason`` (an
#: OAuth error code or a short text).
flow_failed = _signals.signal("zis-flow-failed")

#: One HTTP call to a provider is over.  kwargs: ``endpoint`` (``"token"``,
#: ``"revocation"``, ``"proxy"`` or ``"api"``), ``status_class`` (``"2xx"`` to ``"5xx"``,
#: or ``"error"`` when no answer came: timeout, refused destination, connection error),
#: ``seconds``.
provider_called = _signals.signal("zis-provider-called")
#: ``zis.session`` is sending a request again.  kwargs: ``integration``, ``name``,
#: ``reason`` (``"401"``: after a refresh; ``"429"``: after waiting out ``Retry-After``).
session_retried = _signals.signal("zis-session-retried")

#: The endpoints :data:`provider_called` reports.
PROVIDER_ENDPOINTS: Final = ("token", "revocation", "proxy", "api")
#: Its status classes.
STATUS_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx", "error")

_T = TypeVar("_T")


def timed_call(sender: object, endpoint: str, call: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``call(*args, **kwargs)``, reported as :data:`provider_called` once it is over.

    The status class comes from the answer, or from an exception that carries one
    (``.response``, as ``requests`` errors do); a refused redirect is ``"3xx"``;
    anything else that ended the call is ``"error"``.  Nothing is sent without a sender.
    """
    if sender is None:
        return call(*args, **kwargs)
    started = time.perf_counter()
    answer: object = None
    try:
        result = call(*args, **kwargs)
        answer = result
        return result
    except RedirectRefused:
        answer = 300
        raise
    except Exception as exc:
        answer = getattr(exc, "response", None)
        raise
    finally:
        provider_called.send(
            sender,
            endpoint=endpoint,
            status_class=status_class(answer),
            seconds=time.perf_counter() - started,
        )


def status_class(answer: object) -> str:
    """``"2xx"`` .. ``"5xx"`` for an answer (or its status code), else ``"error"``."""
    code = answer if isinstance(answer, int) else getattr(answer, "status_code", None)
    if isinstance(code, int) and 200 <= code < 600:
        return f"{code // 100}xx"
    return "error"
