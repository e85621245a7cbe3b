"""``flask zis ...``: operations a host runs from a shell or cron.

Commands print identifiers and counts, never a stored token or secret (the one
exception is ``tokens issue``, whose whole point is to show the new token once).

A little over 400 lines on purpose: one command group, each command short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO

import click
from flask.cli import AppGroup
from sqlalchemy import Engine

from . import events
from ._state import state
from .domain import ConnectionRecord, utcnow
from .errors import NotFound, ZISError
from .importing import import_flask_dance, import_jsonl
from .storage import SQLAlchemyStorage, Storage


def _acting_as_cli() -> None:
    """Events written by any ``flask zis`` command name the CLI as their actor (until the
    command is over: a test runner may invoke several in one thread)."""
    token = events.set_actor(events.CLI)
    click.get_current_context().call_on_close(lambda: events.reset_actor(token))


zis_cli = AppGroup(
    "zis", help="Manage flask-zis-connections (OAuth clients, tokens, keys).", callback=_acting_as_cli
)


def _fail(exc: ZISError) -> None:
    raise click.ClickException(exc.message)


# -- OAuth clients ------------------------------------------------------------------------
clients_cli = AppGroup("clients", help="List, create and delete OAuth clients.")
zis_cli.add_command(clients_cli)


@clients_cli.command("list")
@click.argument("integration", required=False)
def clients_list(integration: str | None) -> None:
    for client in state().storage.list_clients(integration):
        click.echo(
            f"{client.integration}\t{client.name}\t{client.uuid}\t{client.grant_type}\t{client.token_url}"
        )


@clients_cli.command("create")
@click.argument("integration")
@click.option("--name", required=True)
@click.option("--client-id", required=True)
@click.option(
    "--client-secret",
    envvar="ZIS_CLIENT_SECRET",
    help="Or set ZIS_CLIENT_SECRET, to keep it out of shell history.",
)
@click.option("--auth-url")
@click.option("--token-url", required=True)
@click.option("--default-scopes", default="")
@click.option(
    "--grant-type",
    default="authorization_code",
    type=click.Choice(["authorization_code", "client_credentials"]),
)
@click.option(
    "--token-endpoint-auth-method",
    default="client_secret_basic",
    type=click.Choice(["client_secret_basic", "client_secret_post"]),
)
@click.option("--no-pkce", is_flag=True)
@click.option("--issuer")
@click.option("--revocation-url")
def clients_create(
    integration: str,
    name: str,
    client_id: str,
    client_secret: str | None,
    auth_url: str | None,
    token_url: str,
    default_scopes: str,
    grant_type: str,
    token_endpoint_auth_method: str,
    no_pkce: bool,
    issuer: str | None,
    revocation_url: str | None,
) -> None:
    try:
        client = state().ext.create_oauth_client(
            integration,
            name=name,
            client_id=client_id,
            client_secret=client_secret,
            auth_url=auth_url,
            token_url=token_url,
            default_scopes=default_scopes,
            grant_type=grant_type,
            token_endpoint_auth_method=token_endpoint_auth_method,
            pkce=not no_pkce,
            issuer=issuer,
            revocation_url=revocation_url,
            created_by="cli",
        )
    except ZISError as exc:
        _fail(exc)
        return
    click.echo(f"Created OAuth client {client.name} ({client.uuid}) for {integration}.")


@clients_cli.command("delete")
@click.argument("integration")
@click.argument("uuid")
def clients_delete(integration: str, uuid: str) -> None:
    try:
        state().ext.delete_oauth_client(integration, uuid)
    except ZISError as exc:
        _fail(exc)
    click.echo(f"Deleted OAuth client {uuid} and its connections.")


# -- API tokens ---------------------------------------------------------------------------
tokens_cli = AppGroup("tokens", help="Issue and revoke API bearer tokens.")
zis_cli.add_command(tokens_cli)


@tokens_cli.command("issue")
@click.argument("integration")
def tokens_issue(integration: str) -> None:
    try:
        click.echo(state().ext.issue_access_token(integration))
    except ZISError as exc:
        _fail(exc)


@tokens_cli.command("revoke")
@click.argument("token_or_id")
def tokens_revoke(token_or_id: str) -> None:
    if not state().ext.revoke_access_token(token_or_id):
        raise click.ClickException("No such token (give the token itself or its id).")
    click.echo("Revoked.")


@tokens_cli.command("list")
@click.argument("integration", required=False)
def tokens_list(integration: str | None) -> None:
    for token in state().storage.list_api_tokens(integration):
        click.echo(f"{token.integration}\t{token.id}\t{token.created_at:%Y-%m-%dT%H:%M:%SZ}")


# -- keys and jobs ------------------------------------------------------------------------
@zis_cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored secret with the newest ZIS_ENCRYPTION_KEYS entry."""
    st = state()
    try:
        count = st.storage.reencrypt(st.encryptor.rotate)
    except ZISError as exc:
        _fail(exc)
        return
    click.echo(f"Re-encrypted {count} rows with the newest key. Older keys can now be removed.")


#: Xero's and QuickBooks' refresh tokens die after weeks unused; refreshing a connection
#: due within a week keeps an idle connection alive with a daily job.
REFRESH_TOKEN_WINDOW = 7 * 86400


@zis_cli.command("refresh-due")
@click.option(
    "--within",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="Refresh tokens that expire within this many seconds.",
)
@click.option(
    "--refresh-token-within",
    default=REFRESH_TOKEN_WINDOW,
    show_default=True,
    type=click.IntRange(min=0),
    help="Also refresh connections whose refresh token expires within this many seconds "
    "(so idle connections stay alive; lists every connection); 0 turns this off.",
)
def refresh_due(within: int, refresh_token_within: int) -> None:
    """Refresh connections about to expire (run it from cron)."""
    result = refresh_due_connections(within=within, refresh_token_within=refresh_token_within)
    for line in result.errors:
        click.echo(line, err=True)
    click.echo(json.dumps(result.counts))
    if result.counts["failed"]:
        raise SystemExit(1)


@dataclass(frozen=True)
class RefreshDueResult:
    """What :func:`refresh_due_connections` did: counts, and one line per connection that
    failed or needs re-authorization (``integration/name: message``, never a token)."""

    counts: dict[str, int]
    errors: list[str] = field(default_factory=list)


def refresh_due_connections(
    *, within: int = 300, refresh_token_within: int = REFRESH_TOKEN_WINDOW
) -> RefreshDueResult:
    """Refresh, in the current app context, every connection whose access token expires
    within ``within`` seconds (at least ``ZIS_REFRESH_LEEWAY``) or whose refresh token
    expires within ``refresh_token_within`` seconds (0: not looked at).

    What ``flask zis refresh-due`` runs, for schedulers that call Python (Celery beat).
    Each refresh goes through the lifecycle, so it is one refresh at a time across
    processes, and a connection backing off after failures fails fast (counted failed).
    """
    st = state()
    now = utcnow()
    due = st.storage.connections_expiring_before(now + timedelta(seconds=max(within, st.lifecycle.leeway)))
    if refresh_token_within:
        listed = {rec.uuid for rec in due}
        idle = refresh_tokens_expiring_before(st.storage, now + timedelta(seconds=refresh_token_within))
        due += [rec for rec in idle if rec.uuid not in listed]
    counts = {"due": len(due), "refreshed": 0, "needs_reauth": 0, "failed": 0, "skipped": 0}
    errors: list[str] = []
    for rec in due:
        before = rec.version
        try:
            after = st.lifecycle.ensure_fresh(rec, force=True)
        except NotFound:  # deleted since it was listed
            counts["skipped"] += 1
            continue
        except ZISError as exc:
            key = "needs_reauth" if exc.status == 422 else "failed"
            counts[key] += 1
            errors.append(f"{rec.integration}/{rec.name}: {exc.message}")
            continue
        counts["refreshed" if after.version != before else "skipped"] += 1
    return RefreshDueResult(counts, errors)


def refresh_tokens_expiring_before(storage: Storage, moment: datetime) -> list[ConnectionRecord]:
    """Connections (any integration, not ``needs_reauth``) whose refresh token expires
    before ``moment``, soonest first.

    The storage interface has no query on ``refresh_token_expiry``, so this pages through
    every integration's connections (500 a query) and filters here: one read of the
    connections table per run, no token decrypted: cheap daily, and every few minutes up
    to some tens of thousands of connections.  Every storage backend, a host's own
    included, supports it unchanged.
    """
    found: list[ConnectionRecord] = []
    for integration in sorted({client.integration for client in storage.list_clients()}):
        cursor: str | None = None
        while True:
            page = storage.list_connections(integration, limit=500, cursor=cursor)
            found += [
                rec
                for rec in page.items
                if rec.refresh_token_expiry is not None
                and rec.refresh_token_expiry < moment
                and rec.refresh_token_enc is not None
                and not rec.needs_reauth
            ]
            cursor = page.next_cursor
            if cursor is None:
                break
    return sorted(found, key=lambda rec: (rec.refresh_token_expiry, rec.uuid))


# -- importing ------------------------------------------------------------------------------
@zis_cli.command("import")
@click.argument("file", required=False, type=click.File("r", encoding="utf-8-sig"))
@click.option(
    "--from-flask-dance",
    "flask_dance",
    nargs=2,
    metavar="DATABASE_URL TABLE",
    help="Read a Flask-Dance OAuthConsumerMixin table instead of FILE.",
)
@click.option("--integration", help="With --from-flask-dance: the integration to import into.")
@click.option("--client", "client_name", help="With --from-flask-dance: the OAuth client's name.")
@click.option(
    "--name-from",
    metavar="COLUMN",
    help="With --from-flask-dance: the column naming each connection [default: user_id, or id].",
)
@click.option("--prefix", default="", help="With --from-flask-dance: put before each connection name.")
@click.option("--provider", metavar="NAME", help="With --from-flask-dance: only this provider's rows.")
@click.option("--replace", is_flag=True, help="Overwrite connections that hold another access token.")
def import_cmd(
    file: IO[str] | None,
    flask_dance: tuple[str, str] | None,
    integration: str | None,
    client_name: str | None,
    name_from: str | None,
    prefix: str,
    provider: str | None,
    replace: bool,
) -> None:
    """Import connections from FILE.jsonl or from a Flask-Dance table.

    FILE ('-': standard input) holds one JSON object a line: integration, name,
    oauth_client_name (or oauth_client_uuid), access_token, and optionally refresh_token,
    token_type, scope, expires_at and refresh_token_expires_at (epoch seconds or ISO 8601
    with an offset), metadata, oauth_url_subdomain.

    Prints one line per input (imported, unchanged, skipped, invalid or failed, and why),
    then the counts as JSON; exits 1 when an input was invalid or could not be stored.
    Running it again changes nothing already imported.
    """
    dance_only = {"--integration": integration, "--client": client_name, "--name-from": name_from}
    dance_only.update({"--prefix": prefix or None, "--provider": provider})
    try:
        if file is not None and flask_dance is None:
            given = [opt for opt, value in dance_only.items() if value is not None]
            if given:
                raise click.UsageError(f"{given[0]} goes with --from-flask-dance (FILE names its own).")
            report = import_jsonl(file, replace=replace)
        elif flask_dance is not None and file is None:
            if integration is None or client_name is None:
                raise click.UsageError("--from-flask-dance needs --integration and --client.")
            report = import_flask_dance(
                *flask_dance,
                integration=integration,
                client=client_name,
                name_from=name_from,
                provider=provider,
                prefix=prefix,
                replace=replace,
            )
        else:
            raise click.UsageError("Give FILE or --from-flask-dance DATABASE_URL TABLE (one of them).")
    except ZISError as exc:
        _fail(exc)
        return
    for result in report.results:
        fields = [result.source, result.outcome, result.connection or "-"]
        click.echo("\t".join([*fields, result.reason] if result.reason else fields))
    click.echo(json.dumps(report.counts()))
    if not report.ok:
        raise SystemExit(1)


@zis_cli.command("check")
def check_cmd() -> None:
    """Exit non-zero unless storage and encryption keys are usable."""
    from .health import check

    report = check(state())
    click.echo(json.dumps(report))
    if not report["ok"]:
        raise SystemExit(1)


@zis_cli.command("purge")
def purge() -> None:
    """Delete expired flows, verification codes and leases, and events older than
    ZIS_EVENT_RETENTION_DAYS."""
    st, now = state(), utcnow()
    days = st.settings.event_retention_days
    click.echo(f"Purged {st.storage.purge_expired(now)} expired rows.")
    click.echo(f"Purged {st.storage.purge_events(now - timedelta(days=days))} events older than {days} days.")


# -- schema migrations ----------------------------------------------------------------------
db_cli = AppGroup("db", help="Schema migrations (Alembic) for the zis_* tables.")
zis_cli.add_command(db_cli)


def _engine() -> Engine:
    storage = state().storage
    if not isinstance(storage, SQLAlchemyStorage):
        raise click.ClickException("Migrations apply to the SQLAlchemy storage only (ZIS_STORAGE).")
    return storage.engine


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the zis_* tables to REVISION (default: head)."""
    from .migrate import current, upgrade

    engine = _engine()
    upgrade(engine, revision)
    click.echo(f"Schema at revision {current(engine)}.")


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the zis_* tables to REVISION ('base' drops them)."""
    from .migrate import current, downgrade

    engine = _engine()
    downgrade(engine, revision)
    click.echo(f"Schema at revision {current(engine)}.")


@db_cli.command("current")
def db_current() -> None:
    from .migrate import current

    click.echo(current(_engine()) or "none")
