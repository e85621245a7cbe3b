"""``flask zis ...``: operations a host runs from a shell or cron.

Commands print identifiers and counts, never a stored token or secret (the one
exception is ``tokens issue``, whose whole point is to show the new token once).
"""

from __future__ import annotations

import json
from datetime import timedelta

import click
from flask.cli import AppGroup
from sqlalchemy import Engine

from ._state import state
from .domain import utcnow
from .errors import ZISError
from .storage import SQLAlchemyStorage

zis_cli = AppGroup("zis", help="Manage flask-zis-connections (OAuth clients, tokens, keys).")


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


@zis_cli.command("refresh-due")
@click.option(
    "--within",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="Refresh tokens that expire within this many seconds.",
)
def refresh_due(within: int) -> None:
    """Refresh connections about to expire (run it from cron)."""
    st = state()
    due = st.storage.connections_expiring_before(
        utcnow() + timedelta(seconds=max(within, st.lifecycle.leeway))
    )
    counts = {"refreshed": 0, "needs_reauth": 0, "failed": 0, "skipped": 0}
    for rec in due:
        before = rec.version
        try:
            after = st.lifecycle.ensure_fresh(rec, force=True)
        except ZISError as exc:
            key = "needs_reauth" if exc.status == 422 else "failed"
            counts[key] += 1
            click.echo(f"{rec.integration}/{rec.name}: {exc.message}", err=True)
            continue
        counts["refreshed" if after.version != before else "skipped"] += 1
    click.echo(json.dumps({"due": len(due), **counts}))
    if counts["failed"]:
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
    """Delete expired flows, verification codes and leases."""
    click.echo(f"Purged {state().storage.purge_expired(utcnow())} expired rows.")


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
