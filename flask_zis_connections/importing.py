"""Bring in connections from elsewhere (a JSON-lines export, a Flask-Dance table), so a
host leaving another token store need not make every user connect again.

Each input becomes a checked :class:`TokenEntry`, stored as the OAuth flow stores one.
A connection already holding the imported access token is left alone, so a run can be
repeated; one holding *another* is skipped unless ``replace``: once the extension
refreshed it (rotation kills the old refresh token) the old store's copy is stale.
The CLI prints the :class:`ImportReport`; nothing here reports or logs a token.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from . import signals
from . import validation as v
from ._state import state
from .clients import require_client
from .domain import ConnectionRecord, OAuthClient, utcnow
from .errors import InvalidRequest, InvalidValue, OAuthClientNotFound, ZISError

Outcome = Literal["imported", "unchanged", "skipped", "invalid", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("imported", "unchanged", "skipped", "invalid", "failed")
_TOKEN_KEYS = ("access_token", "token_type", "refresh_token", "scope", "expires_at")
_OTHER_KEYS = ("integration", "name", "oauth_client_name", "oauth_client_uuid", "metadata")
#: What one JSON line may hold.
JSONL_FIELDS = frozenset((*_TOKEN_KEYS, *_OTHER_KEYS, "refresh_token_expires_at", "oauth_url_subdomain"))
#: JWT access tokens (Microsoft's) run to several kilobytes: more than the usual cap.
_MAX_TOKEN_LEN = 16384
_MAX_EPOCH, _MAX_LIFETIME = 253402300799, 10 * 365 * 86400  # 9999-12-31, ten years
#: Rows per query, each page read in a short transaction: memory stays bounded, and no
#: read stays open on the host's database (on SQLite one could hold writers off the file).
_PAGE = 500


@dataclass(frozen=True)
class ImportResult:
    """What happened to one line or row; ``reason`` says why, never quoting a token."""

    source: str
    outcome: Outcome
    connection: str | None = None
    reason: str = ""


@dataclass
class ImportReport:
    """Every line's or row's result, in input order."""

    results: list[ImportResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {o: sum(r.outcome == o for r in self.results) for o in OUTCOMES}

    @property
    def ok(self) -> bool:
        """False when an input was invalid or could not be stored: fix it, run again."""
        return not any(r.outcome in ("invalid", "failed") for r in self.results)


@dataclass(frozen=True)
class TokenEntry:
    """A checked connection to import: ``fields`` of a :class:`ConnectionRecord`, its two
    tokens in clear until stored; ``raw`` is kept (encrypted) as the token answer."""

    integration: str
    name: str
    client: Mapping[str, str | None]  # {"uuid": ..., "name": ...}: either may be None
    fields: Mapping[str, Any]
    raw: str


def import_jsonl(lines: Iterable[str], *, replace: bool = False) -> ImportReport:
    """Import one connection per JSON line (blank lines are ignored)."""
    now = utcnow()
    numbered = ((n, line) for n, line in enumerate(lines, 1) if line.strip())
    return _run(((f"line {n}", functools.partial(_jsonl_entry, line, now)) for n, line in numbered), replace)


def import_flask_dance(
    database_url: str,
    table: str,
    *,
    integration: str,
    client: str,
    name_from: str | None = None,
    provider: str | None = None,
    prefix: str = "",
    replace: bool = False,
) -> ImportReport:
    """Import a Flask-Dance ``OAuthConsumerMixin`` table by SQLAlchemy Core reflection
    (no Flask-Dance needed): row -> connection ``prefix + row[name_from or user_id/id]``.
    Several Flask-Dance providers in the table need ``provider``: one user's GitHub and
    Google tokens would otherwise land on one connection name."""
    integration, client = v.integration_name(integration), v.client_name(client, "--client")
    owner = require_client(state().storage, integration, name=client)
    try:
        engine = sa.create_engine(database_url)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise InvalidValue("DATABASE_URL", f"not a usable SQLAlchemy URL ({type(exc).__name__})") from None
    schema, _, name = table.rpartition(".")
    try:
        tbl = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=engine)
        column = name_from or ("user_id" if "user_id" in tbl.c else "id")
        missing = sorted({"id", "provider", "token", column} - set(tbl.c.keys()))
        if missing:
            raise InvalidValue("TABLE", "has no column " + ", ".join(missing) + " (see --name-from)")
        if provider is None:
            with engine.connect() as conn:
                found = sorted(map(str, conn.scalars(sa.select(tbl.c.provider).distinct())))
            if len(found) > 1:
                raise InvalidValue("--provider", "needed: the table holds tokens of " + ", ".join(found))
        entry = functools.partial(_dance_entry, column=column, prefix=prefix, client=owner, now=utcnow())
        rows = _rows(engine, tbl, provider)
        return _run(((f"row id={row['id']}", functools.partial(entry, row)) for row in rows), replace)
    except sa.exc.NoSuchTableError:
        raise InvalidValue("TABLE", f"no table {table!r} in that database") from None
    except sa.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise InvalidRequest(f"Reading {table!r} failed ({type(exc).__name__}: {detail}).") from None
    finally:
        engine.dispose()


def _rows(engine: sa.Engine, tbl: sa.Table, provider: str | None) -> Iterator[dict[str, Any]]:
    chosen = sa.true() if provider is None else tbl.c.provider == provider
    page = query = sa.select(tbl).where(chosen).order_by(tbl.c.id).limit(_PAGE)
    while True:
        with engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(page)]
        yield from rows
        if len(rows) < _PAGE:
            return
        page = query.where(tbl.c.id > rows[-1]["id"])


def _jsonl_entry(line: str, now: datetime) -> TokenEntry:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise InvalidRequest("The line is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The line is not a JSON object.")
    if set(data) - JSONL_FIELDS:
        raise InvalidValue(repr(min(set(data) - JSONL_FIELDS))[:64], "is not a known field")
    ref_uuid, ref_name = data.get("oauth_client_uuid"), data.get("oauth_client_name")
    if ref_uuid is None and ref_name is None:
        raise InvalidValue("oauth_client_name", "is required (or oauth_client_uuid)")
    subdomain = _optional(data, "oauth_url_subdomain", 63)
    if subdomain is not None and not v.DNS_LABEL_RE.fullmatch(subdomain):
        raise InvalidValue("oauth_url_subdomain", "must be a single DNS label like 'acme'")
    given = v.metadata_changes({} if data.get("metadata") is None else data["metadata"])
    metadata = {k: x for k, x in given.items() if x is not None}
    if len(json.dumps(metadata)) > v.METADATA_MAX_BYTES:
        raise InvalidValue("metadata", f"must stay under {v.METADATA_MAX_BYTES} bytes as JSON")
    ref = {
        "uuid": None if ref_uuid is None else v.uuid_value(ref_uuid, "oauth_client_uuid"),
        "name": None if ref_name is None else v.client_name(ref_name, "oauth_client_name"),
    }
    fields = {**_token_fields(data, now), "oauth_url_subdomain": subdomain, "metadata": metadata}
    raw = json.dumps({k: data[k] for k in (*_TOKEN_KEYS, "refresh_token_expires_at") if k in data})
    integration, name = v.integration_name(data.get("integration")), v.connection_name(data.get("name"))
    return TokenEntry(integration, name, ref, fields, raw)


def _dance_entry(
    row: Mapping[str, Any], column: str, prefix: str, client: OAuthClient, now: datetime
) -> TokenEntry:
    value = row.get(column)
    if value is None or value == "":
        raise InvalidValue(column, "is empty, so the row has no connection name")
    name = v.connection_name(f"{prefix}{value}", f"name ({prefix}<{column}>)")
    token = row.get("token")
    with contextlib.suppress(ValueError):  # a JSON column reflected as text
        token = json.loads(token) if isinstance(token, str | bytes) else token
    if not isinstance(token, dict):
        raise InvalidValue("token", "must be a JSON object (Flask-Dance's token dict)")
    # Flask-Dance replaces the row on each token save: created_at (naive UTC) dates the token.
    issued = row["created_at"] if isinstance(row.get("created_at"), datetime) else now
    fields = _token_fields(token, issued if issued.tzinfo else issued.replace(tzinfo=UTC))
    ref = {"uuid": client.uuid, "name": None}
    return TokenEntry(client.integration, name, ref, fields, json.dumps(token, default=str))


def _token_fields(data: Mapping[str, Any], issued: datetime) -> dict[str, Any]:
    """The checked token fields of a token dict; a relative lifetime counts from ``issued``."""
    scope = data.get("scope")
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        scope = " ".join(scope)  # oauthlib keeps the scope as a list
    rt_in = ("refresh_token_expires_in", "x_refresh_token_expires_in")  # QuickBooks: x_
    return {
        "access_token": v.string(data.get("access_token"), "access_token", max_len=_MAX_TOKEN_LEN),
        "refresh_token": _optional(data, "refresh_token", _MAX_TOKEN_LEN),
        "token_type": v.string(data.get("token_type") or "bearer", "token_type", max_len=64).lower(),
        "permission_scope": None if scope is None else v.scopes(scope, "scope"),
        "token_expiry": _expiry(data, "expires_at", ("expires_in",), issued),
        "refresh_token_expiry": _expiry(data, "refresh_token_expires_at", rt_in, issued),
    }


def _optional(data: Mapping[str, Any], key: str, max_len: int) -> str | None:
    return None if data.get(key) is None else v.string(data[key], key, max_len=max_len)


def _expiry(data: Mapping[str, Any], at: str, relative: tuple[str, ...], issued: datetime) -> datetime | None:
    """``data[at]`` as epoch seconds or ISO 8601 with an offset (a naive time is
    ambiguous, and a wrong expiry hands out dead tokens), else ``issued`` plus the
    first ``relative`` lifetime given, else None."""
    value, moment = data.get(at), None
    if value is None:
        key = next((k for k in relative if data.get(k) is not None), None)
        if key is None:
            return None
        if type(data[key]) not in (int, float) or not 0 <= data[key] < _MAX_LIFETIME:  # no bool
            raise InvalidValue(key, "must be a number of seconds under ten years")
        moment = issued + timedelta(seconds=data[key])
    elif type(value) in (int, float) and 0 <= value <= _MAX_EPOCH:  # also refuses NaN, inf
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value)
    if moment is None or moment.tzinfo is None:
        raise InvalidValue(at, "must be epoch seconds or ISO 8601 with an offset (2030-01-31T12:00Z)")
    return moment.astimezone(UTC).replace(microsecond=0)


def _run(items: Iterable[tuple[str, Callable[[], TokenEntry]]], replace: bool) -> ImportReport:
    """Store each entry that parses; one bad input never stops the others."""
    report, seen = ImportReport(), dict[tuple[str, str], str]()
    for source, build in items:
        try:
            entry = build()
        except ZISError as exc:  # InvalidValue, InvalidRequest: the input's fault
            report.results.append(ImportResult(source, "invalid", reason=exc.message))
            continue
        key, label = (entry.integration, entry.name), f"{entry.integration}/{entry.name}"
        outcome: Outcome = "skipped"
        if key in seen:  # two inputs for one connection: the first one wins
            reason = f"{seen[key]} already names this connection"
        else:
            seen[key] = source
            try:
                outcome, reason = _store(entry, replace)
            except OAuthClientNotFound as exc:
                reason = exc.message
            except ZISError as exc:  # storage unavailable, a stored row the keys cannot decrypt
                outcome, reason = "failed", exc.message
        report.results.append(ImportResult(source, outcome, label, reason))
    return report


def _store(entry: TokenEntry, replace: bool) -> tuple[Outcome, str]:
    st, enc = state(), state().encryptor
    client = require_client(st.storage, entry.integration, **entry.client)
    fields = dict(entry.fields)
    access, refresh = fields.pop("access_token"), fields.pop("refresh_token")
    previous = st.storage.get_connection(entry.integration, name=entry.name)
    if previous is not None:
        if hmac.compare_digest(enc.decrypt(previous.access_token_enc).encode(), access.encode()):
            return "unchanged", ""
        if not replace:
            return "skipped", "it exists with another access token (--replace overwrites it)"
        fields["metadata"] = {**previous.metadata, **fields.get("metadata", {})}  # as on re-auth
    now, new_uuid = utcnow(), str(uuidlib.uuid4())
    rec = st.storage.upsert_connection(
        ConnectionRecord(
            uuid=new_uuid,
            integration=entry.integration,
            name=entry.name,
            oauth_client_uuid=client.uuid,
            access_token_enc=enc.encrypt(access),
            refresh_token_enc=enc.encrypt_optional(refresh),
            token_response_enc=enc.encrypt(entry.raw),
            created_by="import",
            grant_type=client.grant_type,
            created_at=now,
            updated_at=now,
            **fields,
        )
    )
    st.lifecycle.changed(rec.integration, rec.name)
    if rec.uuid == new_uuid:
        app = st.lifecycle.app
        signals.connection_created.send(app, integration=rec.integration, name=rec.name, uuid=rec.uuid)
    else:
        st.storage.clear_refresh_backoff(rec.uuid)  # new tokens: past failures are moot
    return "imported", ""


__all__ = ["ImportReport", "ImportResult", "TokenEntry", "import_flask_dance", "import_jsonl"]
