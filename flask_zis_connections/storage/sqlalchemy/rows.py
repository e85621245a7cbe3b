"""Rows <-> domain values, the same way for every table.

A model is read as the columns named after its fields, in field order
(:func:`columns`), so a row becomes the model by pairing its field names with the
row's values; only what the database stores differently is decoded - datetimes
(epoch milliseconds, :mod:`~flask_zis_connections.storage.times`), flags (some
drivers return 0/1) and mappings (JSON text).  Writing is the mirror image: the
``*_row`` functions give the column value of every field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa

from ...domain import (
    ApiToken,
    ConnectionRecord,
    Event,
    OAuthClient,
    PendingFlow,
    ProviderQuirks,
    RefreshBackoff,
    VerificationCode,
)
from ..times import from_ms, to_ms


def _fields(model: type[Any]) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(model))


CLIENT_FIELDS: Final = _fields(OAuthClient)
CONNECTION_FIELDS: Final = _fields(ConnectionRecord)
FLOW_FIELDS: Final = _fields(PendingFlow)
CODE_FIELDS: Final = _fields(VerificationCode)
TOKEN_FIELDS: Final = _fields(ApiToken)
BACKOFF_FIELDS: Final = _fields(RefreshBackoff)
EVENT_FIELDS: Final = _fields(Event)

#: Columns an update of a client leaves alone: its identity, creator, creation time
#: and version (which the statement itself increments).
_CLIENT_KEPT: Final = frozenset({"uuid", "integration", "created_by", "created_at", "version"})
#: Columns a token write leaves alone: the identity (a connection never changes type),
#: version, ``needs_reauth`` (each write says what it becomes) and creation time.
_CONNECTION_KEPT: Final = frozenset(
    {"uuid", "integration", "name", "type", "needs_reauth", "version", "created_at"}
)


def columns(table: sa.Table, fields: Sequence[str]) -> list[sa.Column[Any]]:
    """The columns of ``table`` that hold ``fields``, in that order."""
    return [table.c[name] for name in fields]


def dump_json(mapping: Mapping[str, Any]) -> str:
    """Serialize a mapping deterministically (sorted keys)."""
    return json.dumps(dict(mapping), sort_keys=True, separators=(",", ":"))


def load_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return dict(value) if isinstance(value, dict) else {}


def _values(value: object, fields: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(value, name) for name in fields}


# -- OAuth clients -----------------------------------------------------------------------
def client_row(client: OAuthClient) -> dict[str, Any]:
    values = _values(client, CLIENT_FIELDS)
    values["authorize_params"] = dump_json(client.authorize_params)
    values["offline_access_params"] = dump_json(client.offline_access_params)
    values["quirks"] = dump_json(client.quirks.to_json())
    values["created_at"] = to_ms(client.created_at)
    values["updated_at"] = to_ms(client.updated_at)
    return values


def client_update(client: OAuthClient) -> dict[str, Any]:
    return {name: value for name, value in client_row(client).items() if name not in _CLIENT_KEPT}


def client_from_row(row: Sequence[Any]) -> OAuthClient:
    values = dict(zip(CLIENT_FIELDS, row, strict=True))
    values["pkce"] = bool(values["pkce"])
    values["per_client_callback"] = bool(values["per_client_callback"])
    values["authorize_params"] = load_json(values["authorize_params"])
    values["offline_access_params"] = load_json(values["offline_access_params"])
    values["quirks"] = ProviderQuirks.from_json(load_json(values["quirks"]))
    values["created_at"] = from_ms(values["created_at"])
    values["updated_at"] = from_ms(values["updated_at"])
    return OAuthClient(**values)


# -- connections -------------------------------------------------------------------------
def connection_row(record: ConnectionRecord) -> dict[str, Any]:
    values = _values(record, CONNECTION_FIELDS)
    values["token_expiry"] = None if record.token_expiry is None else to_ms(record.token_expiry)
    values["refresh_token_expiry"] = (
        None if record.refresh_token_expiry is None else to_ms(record.refresh_token_expiry)
    )
    values["metadata"] = dump_json(record.metadata)
    values["created_at"] = to_ms(record.created_at)
    values["updated_at"] = to_ms(record.updated_at)
    return values


#: The columns a token write replaces (:func:`token_update`), in their order.
TOKEN_UPDATE_FIELDS: Final = tuple(name for name in CONNECTION_FIELDS if name not in _CONNECTION_KEPT)


def token_update(record: ConnectionRecord) -> dict[str, Any]:
    """The columns a token write replaces."""
    return {name: value for name, value in connection_row(record).items() if name not in _CONNECTION_KEPT}


def connection_from_row(row: Sequence[Any]) -> ConnectionRecord:
    values = dict(zip(CONNECTION_FIELDS, row, strict=True))
    expiry = values["token_expiry"]
    values["token_expiry"] = None if expiry is None else from_ms(expiry)
    rt_expiry = values["refresh_token_expiry"]
    values["refresh_token_expiry"] = None if rt_expiry is None else from_ms(rt_expiry)
    values["metadata"] = load_json(values["metadata"])
    values["needs_reauth"] = bool(values["needs_reauth"])
    values["created_at"] = from_ms(values["created_at"])
    values["updated_at"] = from_ms(values["updated_at"])
    return ConnectionRecord(**values)


# -- flows, verification codes, API tokens, back-off -----------------------------------------
def flow_row(flow: PendingFlow) -> dict[str, Any]:
    values = _values(flow, FLOW_FIELDS)
    values["created_at"] = to_ms(flow.created_at)
    values["expires_at"] = to_ms(flow.expires_at)
    return values


def flow_from_row(row: Sequence[Any]) -> PendingFlow:
    values = dict(zip(FLOW_FIELDS, row, strict=True))
    values["allow_offline_access"] = bool(values["allow_offline_access"])
    values["created_at"] = from_ms(values["created_at"])
    values["expires_at"] = from_ms(values["expires_at"])
    return PendingFlow(**values)


def code_row(code: VerificationCode) -> dict[str, Any]:
    values = _values(code, CODE_FIELDS)
    values["expires_at"] = to_ms(code.expires_at)
    values["created_at"] = to_ms(code.created_at)
    return values


def code_from_row(row: Sequence[Any]) -> VerificationCode:
    values = dict(zip(CODE_FIELDS, row, strict=True))
    values["expires_at"] = from_ms(values["expires_at"])
    values["created_at"] = from_ms(values["created_at"])
    return VerificationCode(**values)


def token_row(token: ApiToken) -> dict[str, Any]:
    values = _values(token, TOKEN_FIELDS)
    values["created_at"] = to_ms(token.created_at)
    return values


def token_from_row(row: Sequence[Any]) -> ApiToken:
    values = dict(zip(TOKEN_FIELDS, row, strict=True))
    values["created_at"] = from_ms(values["created_at"])
    values["revoked"] = bool(values["revoked"])
    return ApiToken(**values)


def backoff_from_row(row: Sequence[Any]) -> RefreshBackoff:
    values = dict(zip(BACKOFF_FIELDS, row, strict=True))
    values["failures"] = int(values["failures"])
    values["failed_at"] = from_ms(values["failed_at"])
    values["retry_at"] = from_ms(values["retry_at"])
    return RefreshBackoff(**values)


def event_row(event: Event) -> dict[str, Any]:
    """The columns of a new event; the database gives the id."""
    values = _values(event, EVENT_FIELDS)
    del values["id"]
    values["detail"] = dump_json(event.detail)
    values["created_at"] = to_ms(event.created_at)
    return values


def event_from_row(row: Sequence[Any]) -> Event:
    values = dict(zip(EVENT_FIELDS, row, strict=True))
    values["id"] = int(values["id"])
    values["detail"] = load_json(values["detail"])
    values["created_at"] = from_ms(values["created_at"])
    return Event(**values)
