"""Who may use the console, and the checks every form goes through.

Admission is the host's ``@zis.admin_session_loader``, asked per integration (the
integrations page asks it once for each integration found in storage).  Every request
that changes something is a ``POST`` that must pass, in order: admission, the same
trusted-origin check as the HTTP API (:func:`~..api.auth.check_same_origin`: the host's
own origin and ``ZIS_TRUSTED_ORIGINS``), and a CSRF token.

The CSRF token is a random value per browser session kept in the host's own Flask
session (a cookie signed with ``SECRET_KEY``), sent back in a hidden form field
``csrf_token`` or an ``X-CSRF-Token`` header, and compared in constant time.  Two
independent defences: the origin check stops cross-site forms in browsers that send
``Origin`` or Fetch Metadata, the token stops them everywhere else.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session

from .. import events
from .._state import state
from ..api.auth import check_same_origin
from ..api.helpers import own_origins
from ..errors import Forbidden, Unauthorized
from ..validation import integration_name

#: Where the token lives in the host's Flask session.
CSRF_SESSION_KEY = "_zis_admin_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """This browser session's console CSRF token, made on first use.

    Host templates that post to the console (or call ``zis-connect.js`` with a token
    of their own) can put it in a page: ``{{ zis_admin_csrf_token() }}``."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def admin_for(integration: str) -> str | None:
    """The admin id the host's loader gives for ``integration``, or None."""
    loader = state().ext.admin_loader
    if loader is None:
        return None
    admitted = loader(integration)
    return str(admitted) if admitted else None


def admit(integration: str) -> str:
    """The admin acting on ``integration``, or ``Unauthorized``/``Forbidden``.

    The loader only ever sees a validated name; the admin becomes the actor of the
    events this request records."""
    integration_name(integration)
    if state().ext.admin_loader is None:
        raise Forbidden(
            "Forbidden: the admin console is off on this app. Register a function with "
            "@zis.admin_session_loader to let admins in."
        )
    admin = admin_for(integration)
    if admin is None:
        raise Unauthorized("Unauthorized: sign in as an admin of this integration to use the console.")
    events.act_for_request(admin)
    return admin


def check_write() -> None:
    """The trusted-origin check and the CSRF token of a state-changing request."""
    check_same_origin(request, own_origins() + list(state().settings.trusted_origins))
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = session.get(CSRF_SESSION_KEY)
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(
            "Forbidden: the form's security token is missing or out of date. Reload the page and try again."
        )


def admit_write(integration: str) -> str:
    """:func:`admit`, then :func:`check_write`: the gate of every console ``POST``."""
    admin = admit(integration)
    check_write()
    return admin
