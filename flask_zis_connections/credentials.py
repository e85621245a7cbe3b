"""Credential connections: ``bearer_token``, ``basic_auth`` and ``api_key``.

Besides OAuth connections, the service's Connections API holds credentials an admin
enters once: a bearer token, a user name and password, or an API key sent in a header
of the admin's choice, each bound to the one host it may be sent to
(``allowed_domain``).  Nothing refreshes them; what they need is what OAuth tokens
get too: one validator for the HTTP and the Python API, the secret encrypted at rest
(in ``access_token_enc``, so key rotation covers it) and never shown again, and a name
unique across every type of the integration - kept by the storage's unique key, not
by a check that could race.

The functions take the app's :class:`~._state.AppState` and return storage records;
the HTTP views and :class:`~.extension.ZISConnections` only shape what they return.
"""

from __future__ import annotations

import base64
import ipaddress
import uuid as uuidlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import events, signals
from . import validation as v
from .crypto import Encryptor
from .domain import CREDENTIAL_TYPES, ConnectionRecord, ConnectionType, utcnow
from .errors import Conflict, ConnectionNotFound, InvalidRequest, InvalidValue, WrongConnectionType
from .outbound import OutboundPolicy

if TYPE_CHECKING:
    from ._state import AppState

#: The fields of each type besides ``name`` and ``allowed_domain``, the secret first.
TYPE_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "bearer_token": ("token",),
    "basic_auth": ("password", "username"),
    "api_key": ("api_key", "header_name"),
}
#: The field holding each type's secret: write-only, answered as :data:`MASK`.
SECRET_FIELD: Final[Mapping[str, str]] = {t: fields[0] for t, fields in TYPE_FIELDS.items()}
#: What every answer shows in place of a secret.
MASK: Final = "*****"
#: Longest token, API key or password accepted.
MAX_SECRET: Final = 4096
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_UPDATE_ATTEMPTS = 5


def credential_type(value: object, field: str = "type") -> ConnectionType:
    """One of the credential types (an OAuth connection comes from a flow instead)."""
    if value == "oauth":
        raise InvalidValue(
            field, "OAuth connections are made by an OAuth flow (POST /connections/oauth/start/...)"
        )
    if not isinstance(value, str) or value not in CREDENTIAL_TYPES:
        raise InvalidValue(field, "must be one of " + ", ".join(CREDENTIAL_TYPES))
    found: ConnectionType = next(t for t in CREDENTIAL_TYPES if t == value)
    return found


def create(
    st: AppState,
    integration: str,
    connection_type: str,
    body: Mapping[str, Any],
    *,
    created_by: str | None = None,
) -> ConnectionRecord:
    """Validate ``body`` (``name``, ``allowed_domain`` and the type's fields) and store
    a new connection; ``Conflict`` when the name is taken by a connection of any type."""
    v.integration_name(integration)
    kind = credential_type(connection_type)
    fields = TYPE_FIELDS[kind]
    v.reject_unknown(body, {"name", "allowed_domain", *fields})
    for required in ("name", "allowed_domain", *fields):
        if body.get(required) is None:
            raise InvalidValue(required, "is required")
    name = v.service_connection_name(body["name"])
    values = _values(st.lifecycle.outbound, kind, body)
    now = utcnow()
    secret = values.pop(SECRET_FIELD[kind])
    record = ConnectionRecord(
        uuid=str(uuidlib.uuid4()),
        integration=integration,
        name=name,
        oauth_client_uuid=None,
        access_token_enc=st.encryptor.encrypt(secret),
        token_type=kind,
        grant_type="authorization_code",  # unused by these types; the column is NOT NULL
        created_by=created_by,
        created_at=now,
        updated_at=now,
        type=kind,
        **values,
    )
    stored = st.storage.add_connection(record)
    st.lifecycle.changed(stored.integration, stored.name)
    signals.connection_created.send(
        st.lifecycle.app, integration=stored.integration, name=stored.name, uuid=stored.uuid
    )
    return stored


def update(
    st: AppState,
    integration: str,
    connection_type: str,
    name: str,
    changes: Mapping[str, Any],
    *,
    secret_follows_routing: bool = True,
) -> ConnectionRecord:
    """Change some of ``allowed_domain`` and the type's fields; the name stays.

    Written with a compare-and-swap on the row's version (retried when a concurrent
    edit lands first), so two edits of different fields both hold.
    ``secret_follows_routing=False`` (the HTTP API) refuses to move the secret to another
    ``allowed_domain`` (or API-key header) unless the same request gives it again: the
    secret is write-only over HTTP, and a token holder must not be able to have the host's
    ``zis.session`` deliver it to a server of their choosing.
    """
    rec = find(st, integration, connection_type, name)
    fields = TYPE_FIELDS[rec.type]
    v.reject_unknown(changes, {"name", "allowed_domain", *fields})
    if "name" in changes and changes["name"] != rec.name:
        raise InvalidValue("name", "cannot be changed: create a connection with the new name instead")
    wanted = {key: val for key, val in changes.items() if key != "name"}
    if not wanted:
        raise InvalidRequest("Send at least one field to change: " + ", ".join(("allowed_domain", *fields)))
    for key, val in wanted.items():
        if val is None:
            raise InvalidValue(key, "must not be null")
    values = _values(st.lifecycle.outbound, rec.type, wanted)
    if not secret_follows_routing and SECRET_FIELD[rec.type] not in values:
        moved = [f for f in ("allowed_domain", "header_name") if f in values and values[f] != getattr(rec, f)]
        if moved:
            raise InvalidValue(
                SECRET_FIELD[rec.type],
                f"is required when {', '.join(moved)} changes: the stored secret is never sent "
                "to a new host or header without being given again",
            )
    secret = values.pop(SECRET_FIELD[rec.type], None)
    encrypted = None if secret is None else st.encryptor.encrypt(secret)
    for _ in range(_UPDATE_ATTEMPTS):
        changed = rec.replace(**values, updated_at=utcnow())
        if encrypted is not None:
            changed = changed.replace(access_token_enc=encrypted)
        stored = st.storage.update_connection(changed, expected_version=rec.version)
        if stored is not None:
            st.lifecycle.changed(stored.integration, stored.name)
            secret_field = SECRET_FIELD[rec.type] if encrypted is not None else None
            names = events.changed_fields(rec, stored, secret=secret_field)
            events.record("connection.changed", integration, connection=stored, type=rec.type, fields=names)
            return stored
        rec = find(st, integration, connection_type, name)
    raise Conflict("The connection kept changing while it was updated. Read it again and retry.")


def find(st: AppState, integration: str, connection_type: str, name: str) -> ConnectionRecord:
    """The ``connection_type`` connection ``name``; 404 when there is none of that type.

    Names of any shape are looked up (a name the rules refuse simply does not exist).
    """
    v.integration_name(integration)
    kind = credential_type(connection_type)
    if not isinstance(name, str) or not v.CONNECTION_NAME_RE.fullmatch(name):
        raise ConnectionNotFound(integration, name=str(name)[:128])
    rec = st.storage.get_connection(integration, name=name)
    if rec is None or rec.type != kind:
        raise ConnectionNotFound(integration, name=name)
    return rec


def delete(st: AppState, integration: str, connection_type: str, name: str) -> ConnectionRecord:
    """Forget the connection (there is nothing to revoke: the credential is the
    admin's); returns what was deleted."""
    rec = find(st, integration, connection_type, name)
    st.lifecycle.delete(rec)
    return rec


def secret_of(rec: ConnectionRecord, encryptor: Encryptor) -> str:
    """What ``get_token`` returns for a credential connection: the token or the key."""
    if rec.type == "basic_auth":
        raise WrongConnectionType(
            rec.integration,
            rec.name,
            rec.type,
            "it has a user name and password, not a token. Call its API with "
            f"zis.session({rec.integration!r}, {rec.name!r}), or read both with zis.get_connection.",
        )
    return encryptor.decrypt(rec.access_token_enc)


def auth_header(rec: ConnectionRecord, encryptor: Encryptor) -> tuple[str, str]:
    """The header a request of connection ``rec`` carries: ``(name, value)``."""
    secret = encryptor.decrypt(rec.access_token_enc)
    if rec.type == "basic_auth":
        pair = f"{rec.username}:{secret}".encode()
        return "Authorization", "Basic " + base64.b64encode(pair).decode("ascii")
    if rec.type == "api_key":
        return str(rec.header_name), secret
    return "Authorization", f"Bearer {secret}"


def may_be_private(policy: OutboundPolicy) -> Callable[[str], bool]:
    """Whether the outbound policy lets a request reach ``host`` although it is not
    public: always with ``ZIS_ALLOW_INSECURE_HTTP``, else when ``ZIS_ALLOWED_PRIVATE_HOSTS``
    names it (a name is asked about as if it resolved to loopback)."""

    def check(host: str) -> bool:
        try:
            probe = ipaddress.ip_address(host)
        except ValueError:
            probe = _LOOPBACK
        return policy.permits(host, [probe]) is None

    return check


def _values(policy: OutboundPolicy, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The validated record fields among ``data``; the secret under its body name."""
    out: dict[str, Any] = {}
    if "allowed_domain" in data:
        out["allowed_domain"] = v.allowed_domain(
            data["allowed_domain"], "allowed_domain", may_be_private=may_be_private(policy)
        )
    if "token" in data:
        out["token"] = v.header_value(data["token"], "token", max_len=MAX_SECRET)
    if "api_key" in data:
        out["api_key"] = v.header_value(data["api_key"], "api_key", max_len=MAX_SECRET)
    if "header_name" in data:
        out["header_name"] = v.header_name(data["header_name"])
    if "username" in data:
        out["username"] = v.basic_auth_username(data["username"])
    if "password" in data:
        out["password"] = v.basic_auth_password(data["password"])
    assert set(out) <= {"allowed_domain", *TYPE_FIELDS[kind]}
    return out
