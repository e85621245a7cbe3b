"""The event log: what happened to an integration's connections, clients and API tokens,
who did it, and when - never a secret.

Operations call :func:`record` once they have done their work; it writes one
:class:`~flask_zis_connections.domain.Event` through the app's storage and never raises
into the operation (a log that cannot be written is a warning, not a failed refresh).
What the blinker signals of :mod:`.signals` already announce - a connection created,
refreshed, failing to refresh, deleted - is recorded by receivers connected here, so
the code that sends them needs no second call.

Who did it is :func:`current_actor`: the request's caller, which the HTTP API names
once per request when it has authenticated it (``api-token:<id>`` or the admin's id),
else a context variable the CLI sets to ``cli``; anything else is ``system`` - a
refresh the host's own ``get_token`` caused, a scheduler calling Python.  A connection
made by the OAuth callback names whoever started its flow: the browser coming back is
nobody's session.

``detail`` is a short JSON object of plain values: a failure's OAuth error code,
whether a revocation worked, the *names* of the fields an edit changed.  Strings that
do not look like an identifier (letters, digits, ``_``, ``.``, ``-``) are replaced by
``"redacted"`` before anything is written, so a value that is not meant to be there -
a URL with its query, a token - cannot reach the table even by mistake.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from contextvars import ContextVar, Token
from typing import Any, Final

from flask import Flask, g, has_app_context

from . import signals
from ._state import state
from .domain import ConnectionRecord, Event, utcnow

log = logging.getLogger("flask_zis_connections")

#: The actor of what the extension does on its own, or host code outside a request.
SYSTEM: Final = "system"
#: The actor of every ``flask zis ...`` command.
CLI: Final = "cli"
#: Every kind of event written, by what it is about.
KINDS: Final = (
    "connection.created",
    "connection.reauthorized",
    "connection.changed",
    "connection.refreshed",
    "connection.refresh_failed",
    "connection.needs_reauth",
    "connection.deleted",
    "client.created",
    "client.changed",
    "client.deleted",
    "api_token.issued",
    "api_token.revoked",
)
#: What a string in ``detail`` may look like; anything else is written as :data:`REDACTED`.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
REDACTED: Final = "redacted"
_MAX_LIST: Final = 64
#: Fields whose difference is not a change: identity, version, times, creator.
_NOT_CHANGES: Final = frozenset({"uuid", "integration", "version", "created_at", "updated_at", "created_by"})

_actor: ContextVar[str | None] = ContextVar("zis_event_actor", default=None)
#: Where a request keeps its caller (in ``g``, which ends with the request's context).
_REQUEST_KEY: Final = "_zis_event_actor"


def set_actor(actor: str) -> Token[str | None]:
    """Make ``actor`` the one named by events recorded from here on in this context
    (outside a request that named its caller); pass the token to :func:`reset_actor`
    when that work is done."""
    return _actor.set(actor)


def reset_actor(token: Token[str | None]) -> None:
    """Undo :func:`set_actor`; a token from another context just clears the actor."""
    try:
        _actor.reset(token)
    except ValueError:
        _actor.set(None)


def act_for_request(actor: str) -> None:
    """Name ``actor`` in the events of the current request (the HTTP API calls it once
    it knows the caller; the first name given stays).  It is kept in ``g``, so it ends
    with the request's context: a worker thread serving the next request - or host
    code after a test client's request - never inherits it, and a request that records
    nothing pays for no context variable and no teardown."""
    g.setdefault(_REQUEST_KEY, actor)


def current_actor(fallback: str | None = None) -> str:
    """Who is acting: the current request's caller, else the actor set for this
    context, else ``fallback`` (who started the flow, who created the row), else
    :data:`SYSTEM`."""
    named = g.get(_REQUEST_KEY) if has_app_context() else None
    return named or _actor.get() or fallback or SYSTEM


def record(
    kind: str,
    integration: str,
    *,
    connection: ConnectionRecord | None = None,
    connection_name: str | None = None,
    connection_uuid: str | None = None,
    oauth_client_uuid: str | None = None,
    actor: str | None = None,
    app: Flask | None = None,
    **detail: Any,
) -> None:
    """Write one event of ``integration`` (``app``: default ``current_app``).

    ``connection`` fills the connection's name, uuid and OAuth client; ``actor``
    defaults to :func:`current_actor`; every other keyword goes into ``detail``.
    Never raises: a failed write is logged (without its detail) and forgotten.
    """
    if connection is not None:
        connection_name = connection_name or connection.name
        connection_uuid = connection_uuid or connection.uuid
        oauth_client_uuid = oauth_client_uuid or connection.oauth_client_uuid
    try:
        event = Event(
            integration=integration,
            kind=kind,
            actor=(actor or current_actor())[:255],
            connection_name=connection_name,
            connection_uuid=connection_uuid,
            oauth_client_uuid=oauth_client_uuid,
            detail={key: _plain(value) for key, value in detail.items()},
            created_at=utcnow(),
        )
        state(app).storage.add_event(event)
    except Exception as exc:  # the operation succeeded; its log entry is secondary
        log.warning(
            "Could not record the %s event of integration %s (%s); the operation itself is done.",
            kind,
            integration,
            type(exc).__name__,
        )


def changed_fields(before: object, after: object, *, secret: str | None = None) -> list[str]:
    """The names of the fields that differ between two versions of a stored value.

    Nested dataclasses (a client's quirks) are compared field by field; identity,
    version and time fields are not changes, and ciphertext (``*_enc``) is never
    compared - it changes on every re-encryption - so ``secret`` names the write-only
    field the caller was given a new value of, if any.
    """
    names: list[str] = []
    if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
        for attr in dataclasses.fields(before):
            if attr.name in _NOT_CHANGES or attr.name.endswith("_enc"):
                continue
            old, new = getattr(before, attr.name), getattr(after, attr.name, None)
            if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
                names += changed_fields(old, new)
            elif old != new:
                names.append(attr.name)
    if secret is not None:
        names.append(secret)
    return sorted(set(names))


def _plain(value: object) -> object:
    """``value`` as a detail may hold it: a flag, a number, None, or identifier-like text
    (or a short list of such)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) else REDACTED
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return [_plain(str(item)) for item in items[:_MAX_LIST]]
    return REDACTED


# -- what the signals announce --------------------------------------------------------------
def _on_created(sender: Flask, *, integration: str, name: str, uuid: str, **_: Any) -> None:
    """A new connection of any type (a flow's, a credential, an import); its row says who
    made it, which matters when no actor is set: the OAuth callback."""
    try:
        rec = state(sender).storage.get_connection(integration, uuid=uuid)
    except Exception:
        rec = None
    record(
        "connection.created",
        integration,
        connection_name=name,
        connection_uuid=uuid,
        oauth_client_uuid=rec.oauth_client_uuid if rec else None,
        actor=current_actor(rec.created_by if rec else None),
        app=sender,
        type=rec.type if rec else None,
    )


def _on_refreshed(sender: Flask, *, integration: str, name: str, uuid: str, **_: Any) -> None:
    record("connection.refreshed", integration, connection_name=name, connection_uuid=uuid, app=sender)


def _on_refresh_failed(
    sender: Flask, *, integration: str, name: str, uuid: str, reason: str, **_: Any
) -> None:
    record(
        "connection.refresh_failed",
        integration,
        connection_name=name,
        connection_uuid=uuid,
        app=sender,
        reason=reason,
    )


def _on_deleted(
    sender: Flask, *, integration: str, name: str, uuid: str, revoked: bool | None, **_: Any
) -> None:
    record(
        "connection.deleted",
        integration,
        connection_name=name,
        connection_uuid=uuid,
        app=sender,
        revoked=revoked,
    )


signals.connection_created.connect(_on_created)
signals.connection_refreshed.connect(_on_refreshed)
signals.connection_refresh_failed.connect(_on_refresh_failed)
signals.connection_deleted.connect(_on_deleted)

__all__ = [
    "CLI",
    "KINDS",
    "REDACTED",
    "SYSTEM",
    "act_for_request",
    "changed_fields",
    "current_actor",
    "record",
    "reset_actor",
    "set_actor",
]
