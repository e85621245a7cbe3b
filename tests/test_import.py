"""``flask zis import``: connections from a JSON-lines export or a Flask-Dance table.

Real parts: SQLite files and PostgreSQL, a real Flask-Dance table written by Flask-Dance's
own ``SQLAlchemyStorage`` through Flask-SQLAlchemy, and the live Authlib provider (an
imported refresh token really refreshes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask
from flask_dance.consumer import OAuth2ConsumerBlueprint
from flask_dance.consumer.storage.sqla import OAuthConsumerMixin, SQLAlchemyStorage
from flask_sqlalchemy import SQLAlchemy

from flask_zis_connections import Connection, OAuthClient, ZISConnections, get_token, signals
from flask_zis_connections.domain import utcnow
from flask_zis_connections.importing import import_jsonl

from .flow_driver import auth_header, connect, register, zis_of
from .live_provider import LiveProvider

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
SQL_BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def secret(kind: str) -> str:
    return f"{kind}-{secrets.token_urlsafe(16)}"


@dataclass
class Host:
    app: Flask
    client: OAuthClient

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    def run(self, *args: str, stdin: str | None = None) -> Result:
        return self.app.test_cli_runner().invoke(args=["zis", "import", *args], input=stdin)

    def import_lines(self, tmp_path: Path, lines: list[Any], *args: str) -> Result:
        path = tmp_path / f"export-{secrets.token_hex(4)}.jsonl"
        path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
        return self.run(str(path), *args)

    def connection(self, name: str, integration: str = "acme") -> Connection:
        with self.app.app_context():
            return self.zis.get_connection(integration, name, refresh_if_due=False)

    def names(self, integration: str = "acme") -> list[str]:
        storage = self.app.extensions["zis_connections"].storage
        return sorted(rec.name for rec in storage.list_connections(integration, limit=1000).items)


@pytest.fixture
def host(make_app: Callable[..., Flask]) -> Host:
    app = make_app()
    with app.app_context():
        client = zis_of(app).create_oauth_client(
            "acme",
            name="acme",
            client_id="cid",
            client_secret="client-secret",
            auth_url="https://acme.test/oauth/authorize",
            token_url="https://acme.test/oauth/token",
        )
    return Host(app, client)


def outcomes(result: Result) -> list[list[str]]:
    """The per-input lines, split at tabs (the last line is the JSON counts)."""
    return [line.split("\t") for line in result.stdout.strip().splitlines()[:-1]]


def counts(result: Result) -> dict[str, int]:
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def zero(**changes: int) -> dict[str, int]:
    return {"imported": 0, "unchanged": 0, "skipped": 0, "invalid": 0, "failed": 0, **changes}


def database_bytes(url: str) -> bytes:
    path = Path(sa.engine.make_url(url).database or "")
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# -- JSON lines ---------------------------------------------------------------------------------
@SQLITE
def test_jsonl_round_trip_stores_encrypted_and_a_second_run_changes_nothing(
    host: Host, tmp_path: Path, database_uri: str, all_logs: pytest.LogCaptureFixture
) -> None:
    tokens = {k: secret(k) for k in ("a1", "r1", "a2", "a3")}
    expires = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    lines = [
        {
            "integration": "acme",
            "name": "main",
            "oauth_client_name": "acme",
            "access_token": tokens["a1"],
            "refresh_token": tokens["r1"],
            "token_type": "Bearer",
            "expires_at": int(expires.timestamp()),
            "refresh_token_expires_at": "2031-03-01T00:00:00+01:00",
            "scope": "read  write",
            "metadata": {"realmId": "4620816365", "region": None},
        },
        {
            "integration": "acme",
            "name": "by-uuid",
            "oauth_client_uuid": host.client.uuid.upper(),
            "access_token": tokens["a2"],
            "expires_at": "2031-01-02T03:04:05Z",
            "oauth_url_subdomain": "tenant1",
        },
        "",
        {"integration": "acme", "name": "bare", "oauth_client_name": "acme", "access_token": tokens["a3"]},
    ]
    created: list[dict[str, Any]] = []

    def on_created(sender: Flask, **kw: Any) -> None:
        created.append(kw)

    with signals.connection_created.connected_to(on_created, sender=host.app):
        result = host.import_lines(tmp_path, lines)

    assert result.exit_code == 0, result.output
    assert outcomes(result) == [
        ["line 1", "imported", "acme/main"],
        ["line 2", "imported", "acme/by-uuid"],
        ["line 4", "imported", "acme/bare"],
    ]
    assert counts(result) == zero(imported=3)
    assert [c["name"] for c in created] == ["main", "by-uuid", "bare"]
    with host.app.app_context():
        assert get_token("acme", "main") == tokens["a1"]
    main = host.connection("main")
    assert (main.refresh_token, main.token_type, main.permission_scope) == (
        tokens["r1"],
        "bearer",
        "read write",
    )
    assert main.token_expiry == expires
    assert main.refresh_token_expiry == datetime(2031, 2, 28, 23, tzinfo=UTC)
    assert main.metadata == {"realmId": "4620816365"}
    assert main.created_by == "import" and main.oauth_client_uuid == host.client.uuid
    assert tokens["r1"] in (main.oauth_access_token_response_body or "")
    by_uuid = host.connection("by-uuid")
    assert (by_uuid.token_expiry, by_uuid.oauth_url_subdomain) == (expires, "tenant1")
    assert by_uuid.refresh_token is None and by_uuid.token_type == "bearer"
    bare = host.connection("bare")
    assert bare.token_expiry is None and bare.permission_scope is None
    # Encrypted at rest: the SQLite file (and its WAL) holds no token in clear.
    raw = database_bytes(database_uri)
    assert raw and host.client.uuid.encode() in raw
    for token in tokens.values():
        assert token.encode() not in raw
        assert token not in result.output and token not in all_logs.text

    versions = {name: host.connection(name).version for name in ("main", "by-uuid", "bare")}
    again = host.import_lines(tmp_path, lines)
    assert again.exit_code == 0, again.output
    assert [line[1] for line in outcomes(again)] == ["unchanged"] * 3
    assert counts(again) == zero(unchanged=3)
    assert {name: host.connection(name).version for name in versions} == versions
    assert len(created) == 3


def test_bad_lines_are_reported_and_nothing_is_stored_for_them(host: Host, tmp_path: Path) -> None:
    token = secret("bad")
    good = {"integration": "acme", "name": "good", "oauth_client_name": "acme", "access_token": secret("ok")}
    lines = [
        '{"integration": "acme", "name": "broken", ',
        "[1, 2]",
        {**good, "name": "no-token", "access_token": None},
        {**good, "name": "has space", "access_token": token},
        {**good, "name": "typo", "acess_token": token},
        {**good, "name": "naive", "access_token": token, "expires_at": "2031-01-01T00:00:00"},
        {**good, "name": "bool", "access_token": token, "expires_at": True},
        {**good, "name": "far", "access_token": token, "expires_at": 1e300},
        {**good, "name": "up", "integration": "Acme", "access_token": token},
        {**good, "name": "noclient", "oauth_client_name": None, "access_token": token},
        {**good, "name": "meta", "access_token": token, "metadata": []},
        {**good, "name": "scope", "access_token": token, "scope": 'read "all"'},
        {**good, "name": "ctrl", "access_token": token + "\n"},
        {**good, "name": "sub", "access_token": token, "oauth_url_subdomain": "a.b"},
        {**good, "name": "ghost", "oauth_client_name": "ghost", "access_token": token},
        good,
        {**good, "access_token": token},
    ]

    result = host.import_lines(tmp_path, lines)

    assert result.exit_code == 1, result.output
    report = outcomes(result)
    assert [r[1] for r in report] == ["invalid"] * 14 + ["skipped", "imported", "skipped"]
    reasons = {r[0]: r[-1] for r in report}
    assert reasons["line 1"] == "The line is not valid JSON."
    assert reasons["line 2"] == "The line is not a JSON object."
    assert "access_token" in reasons["line 3"]
    assert "name" in reasons["line 4"] and "[A-Za-z0-9_.-]" in reasons["line 4"]
    assert "'acess_token'" in reasons["line 5"] and "not a known field" in reasons["line 5"]
    assert "expires_at" in reasons["line 6"] and "with an offset" in reasons["line 6"]
    assert "expires_at" in reasons["line 7"] and "expires_at" in reasons["line 8"]
    assert "integration" in reasons["line 9"]
    assert "oauth_client_name" in reasons["line 10"]
    assert "metadata" in reasons["line 11"] and "scope" in reasons["line 12"]
    assert "control characters" in reasons["line 13"]
    assert "oauth_url_subdomain" in reasons["line 14"]
    assert "No OAuth client 'ghost'" in reasons["line 15"]
    assert reasons["line 17"] == "line 16 already names this connection"
    assert counts(result) == zero(imported=1, skipped=2, invalid=14)
    assert host.names() == ["good"]
    assert host.connection("good").access_token == good["access_token"]
    assert token not in result.output


def test_another_access_token_is_kept_unless_replace(host: Host, tmp_path: Path) -> None:
    line = {"integration": "acme", "name": "main", "oauth_client_name": "acme", "access_token": secret("old")}
    assert host.import_lines(tmp_path, [line]).exit_code == 0
    with host.app.app_context():
        host.zis.update_connection_metadata("acme", "main", {"set_by_host": True})
    newer = {**line, "access_token": secret("new"), "metadata": {"tenant": "t1"}}

    kept = host.import_lines(tmp_path, [newer])
    assert kept.exit_code == 0
    assert outcomes(kept) == [
        ["line 1", "skipped", "acme/main", "it exists with another access token (--replace overwrites it)"]
    ]
    assert host.connection("main").access_token == line["access_token"]

    replaced = host.import_lines(tmp_path, [newer], "--replace")
    assert outcomes(replaced) == [["line 1", "imported", "acme/main"]]
    main = host.connection("main")
    assert main.access_token == newer["access_token"]
    assert main.metadata == {"set_by_host": True, "tenant": "t1"}


def test_stdin_and_usage_errors(host: Host) -> None:
    line = {"integration": "acme", "name": "piped", "oauth_client_name": "acme", "access_token": secret("a")}
    piped = host.run("-", stdin=json.dumps(line) + "\n")
    assert piped.exit_code == 0, piped.output
    assert counts(piped) == zero(imported=1)

    neither = host.run()
    assert neither.exit_code == 2 and "Give FILE or --from-flask-dance" in neither.output
    mixed = host.run("-", "--integration", "acme", stdin="")
    assert mixed.exit_code == 2 and "--integration goes with --from-flask-dance" in mixed.output
    half = host.run("--from-flask-dance", "sqlite://", "t", "--integration", "acme")
    assert half.exit_code == 2 and "needs --integration and --client" in half.output


@SQLITE
def test_an_imported_refresh_token_refreshes_at_the_provider(
    make_app: Callable[..., Flask], provider: LiveProvider, tmp_path: Path
) -> None:
    """Tokens a provider really issued, imported with an expiry in the past: the next
    ``get_token`` refreshes them at the provider with the imported refresh token."""
    app = make_app()
    register(app, provider)
    old = connect(app, provider, auth_header(app), name="old-store", allow_offline_access=True)
    with app.app_context():
        host = Host(app, zis_of(app).get_oauth_client("acme", name="acme"))
    past = int((utcnow() - timedelta(minutes=1)).timestamp())
    line = {
        "integration": "acme",
        "name": "imported",
        "oauth_client_name": "acme",
        "access_token": old["access_token"],
        "refresh_token": old["refresh_token"],
        "expires_at": past,
    }
    assert host.import_lines(tmp_path, [line]).exit_code == 0
    provider.state.reset_counters()

    with app.app_context():
        fresh = zis_of(app).get_token("acme", "imported")

    assert fresh != old["access_token"]
    assert provider.state.refresh_call_count == 1
    assert provider.state.is_access_token_active(fresh)


# -- Flask-Dance ---------------------------------------------------------------------------------
dance_db = SQLAlchemy()


class OAuth(OAuthConsumerMixin, dance_db.Model):  # type: ignore[misc, name-defined]
    """The model a Flask-Dance host declares (its table: ``flask_dance_oauth``)."""

    user_id = sa.Column(sa.Integer, nullable=True)


@dataclass
class DanceHost:
    """The old host: Flask-Dance storing tokens through Flask-SQLAlchemy."""

    app: Flask
    url: str

    def save(self, provider: str, token: dict[str, Any], user_id: int | None = None) -> None:
        """Store a token exactly as Flask-Dance does after an OAuth dance."""
        blueprint = OAuth2ConsumerBlueprint(
            provider, __name__, client_id="x", client_secret="y", token_url="https://p.test/token"
        )
        storage = SQLAlchemyStorage(OAuth, dance_db.session, user_required=False)
        with self.app.app_context():
            storage.set(blueprint, token, user_id=user_id)

    def rows(self) -> list[dict[str, Any]]:
        with self.app.app_context():
            return [
                {"id": r.id, "provider": r.provider, "user_id": r.user_id, "created_at": r.created_at}
                for r in dance_db.session.scalars(sa.select(OAuth).order_by(OAuth.id))
            ]


@pytest.fixture
def dance(database_uri: str, tmp_path: Path) -> Iterator[DanceHost]:
    """Flask-Dance's table in the same database as the extension's tables (the host
    shares its database): the same SQLite file, or the same PostgreSQL schema."""
    app = Flask("old_host", instance_path=str(tmp_path / "old"))
    app.config.update(SQLALCHEMY_DATABASE_URI=database_uri, SECRET_KEY="old")
    dance_db.init_app(app)
    with app.app_context():
        dance_db.drop_all()
        dance_db.create_all()
    yield DanceHost(app, database_uri)
    with app.app_context():
        dance_db.drop_all()
        dance_db.engine.dispose()


def dance_token(**extra: Any) -> dict[str, Any]:
    return {"access_token": secret("fd-access"), "token_type": "Bearer", **extra}


#: Flask-Dance's OAuthConsumerMixin defaults created_at to datetime.utcnow, which newer
#: Pythons deprecate: not ours to fix.
UTCNOW = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")


@UTCNOW
@SQL_BACKENDS
def test_flask_dance_table_is_imported_and_a_second_run_changes_nothing(host: Host, dance: DanceHost) -> None:
    expires_at = 1924992000.25  # 2031-01-01, a float as oauthlib writes it
    full = dance_token(refresh_token=secret("fd-refresh"), expires_in=3600, expires_at=expires_at)
    full["scope"] = ["read", "write"]
    relative = dance_token(refresh_token=secret("fd-refresh"), expires_in=7200)
    github_app = dance_token(scope="repo,user")  # no refresh token, no expiry
    # A token saved without a user first: Flask-Dance's set() without a user replaces
    # every row of the provider.
    dance.save("github", dance_token(), user_id=None)
    dance.save("github", full, user_id=1)
    dance.save("github", relative, user_id=2)
    dance.save("github", github_app, user_id=3)
    dance.save("google", dance_token(refresh_token=secret("other")), user_id=1)
    args = ["--from-flask-dance", dance.url, "flask_dance_oauth", "--integration", "acme", "--client", "acme"]

    several = host.run(*args)
    assert several.exit_code == 1
    assert "--provider" in several.output and "github, google" in several.output
    assert host.names() == []

    result = host.run(*args, "--provider", "github", "--prefix", "user-")

    assert result.exit_code == 1, result.output  # the row without a user is invalid
    ids = [row["id"] for row in dance.rows() if row["provider"] == "github"]
    assert outcomes(result) == [
        [
            f"row id={ids[0]}",
            "invalid",
            "-",
            "Invalid value for: user_id. Desc: is empty, so the row has no connection name",
        ],
        [f"row id={ids[1]}", "imported", "acme/user-1"],
        [f"row id={ids[2]}", "imported", "acme/user-2"],
        [f"row id={ids[3]}", "imported", "acme/user-3"],
    ]
    assert counts(result) == zero(imported=3, invalid=1)
    one, two, three = (host.connection(f"user-{i}") for i in (1, 2, 3))
    assert (one.access_token, one.refresh_token) == (full["access_token"], full["refresh_token"])
    assert one.token_expiry == datetime(2031, 1, 1, tzinfo=UTC)
    assert (one.token_type, one.permission_scope) == ("bearer", "read write")
    created_at = next(row["created_at"] for row in dance.rows() if row["user_id"] == 2)
    assert two.token_expiry == (created_at.replace(tzinfo=UTC) + timedelta(seconds=7200)).replace(
        microsecond=0
    )
    assert three.refresh_token is None and three.token_expiry is None
    assert three.permission_scope == "repo,user"
    for token in (full, relative, github_app):
        assert token["access_token"] not in result.output

    again = host.run(*args, "--provider", "github", "--prefix", "user-")
    assert counts(again) == zero(unchanged=3, invalid=1)
    assert len(dance.rows()) == 5  # read only


@UTCNOW
@SQLITE
def test_flask_dance_rows_are_read_page_by_page(host: Host, dance: DanceHost) -> None:
    """More rows than one page (500), written the way ``SQLAlchemyStorage.set`` writes
    them, one of them through it: every row is imported once, named by ``--name-from``."""
    table = OAuth.__table__
    rows = [
        {"provider": "github", "created_at": datetime(2030, 1, 1), "token": dance_token(), "user_id": i}
        for i in range(1, 511)
    ]
    with dance.app.app_context():
        dance_db.session.execute(sa.insert(table), rows)
        dance_db.session.commit()
    last = dance_token()
    dance.save("github", last, user_id=999)
    args = ["--from-flask-dance", dance.url, "flask_dance_oauth", "--integration", "acme", "--client", "acme"]

    result = host.run(*args, "--name-from", "id")

    assert result.exit_code == 0, result.output
    assert counts(result) == zero(imported=511)
    assert len(host.names()) == 511
    last_id = dance.rows()[-1]["id"]
    assert host.connection(str(last_id)).access_token == last["access_token"]


@SQLITE
def test_flask_dance_errors_say_what_to_fix(host: Host, tmp_path: Path, dance: DanceHost) -> None:
    base = ["--from-flask-dance", dance.url]
    missing_table = host.run(*base, "nope", "--integration", "acme", "--client", "acme")
    assert missing_table.exit_code == 1 and "no table 'nope'" in missing_table.output
    no_client = host.run(*base, "flask_dance_oauth", "--integration", "acme", "--client", "ghost")
    assert no_client.exit_code == 1 and "Register it first" in no_client.output
    no_column = host.run(
        *base, "flask_dance_oauth", "--integration", "acme", "--client", "acme", "--name-from", "email"
    )
    assert no_column.exit_code == 1 and "email" in no_column.output
    bad_url = host.run("--from-flask-dance", "nosuchdb://x", "t", "--integration", "acme", "--client", "acme")
    assert bad_url.exit_code == 1 and "DATABASE_URL" in bad_url.output


def test_import_jsonl_is_usable_from_python(host: Host) -> None:
    line = {"integration": "acme", "name": "py", "oauth_client_name": "acme", "access_token": secret("py")}
    with host.app.app_context():
        report = import_jsonl([json.dumps(line)])
    assert report.ok and report.counts() == zero(imported=1)
    assert report.results[0].connection == "acme/py"
