"""Schemathesis fuzzes the API from the document it serves.

The app is a real host app (SQLite storage) holding an OAuth client and an OAuth
connection made through the whole flow against the live provider, and one connection
of each credential type, named as the document's examples name them; every request
carries a valid bearer token for ``acme`` (the integration path parameter is pinned to
it, or nearly every case would be a 403).  Each case checks that the answer is no
server error and that its status, content type and body are the ones the document
gives for the operation.

Schemathesis runs as its CLI would (its engine: probing, examples, coverage and
fuzzing phases) rather than through its pytest plugin, whose lazy-fixture schemas do
not run under pytest 9.  Generation is derandomized (Hypothesis's fixed-randomness
mode), so every run sends the same cases and a failure found in CI reproduces on a
laptop.  To hunt for more, randomize it locally: ``ZIS_FUZZ_RANDOM=1
ZIS_FUZZ_MAX_EXAMPLES=150`` (and ``ZIS_FUZZ_STORAGE`` / ``ZIS_FUZZ_DATABASE_URI`` for
another backend); ``-s`` prints what was answered.

Fuzzed bodies may set a client's URLs to any host, and refreshes and deletes then
call them: every outbound name lookup except the live provider's is refused here, so
the run never sends anything off this machine.  Deletes remove what later cases
want to find, so the fixtures are put back before each case.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from cryptography.fernet import Fernet
from flask import Flask
from schemathesis import engine
from schemathesis.checks import not_a_server_error
from schemathesis.engine import Status, events
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flask_zis_connections import ZISConnections
from flask_zis_connections.domain import ConnectionRecord, OAuthClient

from .conftest import ORIGIN
from .flow_driver import auth_header, connect, register
from .helpers import PREFIX
from .live_provider import LiveProvider

pytestmark = pytest.mark.slow

#: Fuzzing-phase cases per operation (the examples and coverage phases add their own).
MAX_EXAMPLES = int(os.environ.get("ZIS_FUZZ_MAX_EXAMPLES", "25"))
#: Off in CI: the same cases every run.
RANDOM = bool(os.environ.get("ZIS_FUZZ_RANDOM"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CREDENTIALS = {
    "bearer_token": {"name": "crm_token", "token": "my_token"},
    "basic_auth": {"name": "crm_login", "username": "my_user", "password": "my_password"},
    "api_key": {"name": "crm_key", "api_key": "my_api_key", "header_name": "X-Api-Key"},
}


@dataclass
class FuzzEnv:
    """The app under test and what each case may expect to find in it."""

    app: Flask
    headers: dict[str, str]
    client: OAuthClient
    connection: ConnectionRecord
    cases: int = 0
    #: (method, route, status) -> count, printed after the run.
    answers: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def restore(self) -> None:
        """Put back the client, the OAuth connection and the credentials a previous
        case deleted (a changed one is left as the case made it)."""
        st = self.app.extensions["zis_connections"]
        with self.app.app_context():
            if st.storage.get_client("acme", uuid=self.client.uuid) is None:
                st.storage.add_client(self.client)
            if st.storage.get_connection("acme", name=self.connection.name) is None:
                st.storage.add_connection(self.connection)
            zis: ZISConnections = st.ext
            for kind, fields in CREDENTIALS.items():
                if st.storage.get_connection("acme", name=fields["name"]) is None:
                    secrets = {k: v for k, v in fields.items() if k != "name"}
                    zis.create_connection(
                        "acme", fields["name"], type=kind, allowed_domain="api.example.com", **secrets
                    )


def _loopback_only(allowed_port: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``socket.getaddrinfo`` that resolves only the live provider's loopback address."""

    def guarded(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost") or str(port) != str(allowed_port):
            raise socket.gaierror(socket.EAI_NONAME, f"the fuzz run resolves no {name}:{port}")
        return real(host, port, *args, **kwargs)

    return guarded


@pytest.fixture
def fuzz_env(tmp_path: Any, provider: LiveProvider, monkeypatch: pytest.MonkeyPatch) -> Iterator[FuzzEnv]:
    app = Flask("fuzzed_host", instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SECRET_KEY="fuzz-secret-key",
        ZIS_STORAGE=os.environ.get("ZIS_FUZZ_STORAGE", "sqlalchemy"),
        ZIS_DATABASE_URI=os.environ.get("ZIS_FUZZ_DATABASE_URI") or f"sqlite:///{tmp_path / 'fuzz.sqlite3'}",
        ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        ZIS_ALLOW_INSECURE_HTTP=True,
        ZIS_ALLOWED_REDIRECT_ORIGINS=[ORIGIN],
        ZIS_HTTP_TIMEOUT=2,
        ZIS_HOST_TOKEN_URL=provider.token_url,
        ZIS_ACCOUNT_ID=123456,
        # The limits stay on (their code paths are fuzzed too) but never run out.
        ZIS_RATELIMIT="100000 per minute",
        ZIS_RATELIMIT_UNAUTHENTICATED="100000 per minute",
        ZIS_RATELIMIT_TOKEN_PROXY="100000 per minute",
    )
    zis = ZISConnections(app)
    app.register_blueprint(zis.blueprint)
    client = register(app, provider)
    headers = auth_header(app)
    made = connect(app, provider, headers, name="my_oauth_connection")
    st = app.extensions["zis_connections"]
    with app.app_context():
        connection = st.storage.get_connection("acme", uuid=made["uuid"])
        client = st.storage.get_client("acme", uuid=client.uuid)
    env = FuzzEnv(app=app, headers=headers, client=client, connection=connection)
    env.restore()
    port = urlsplit(provider.url).port
    assert port is not None
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only(port, socket.getaddrinfo))
    yield env
    st.storage.close()


class _Restoring:
    """The app as schemathesis calls it: the fixtures put back before each request."""

    def __init__(self, env: FuzzEnv) -> None:
        self.env = env

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.env.restore()
        self.env.cases += 1

        def record(status: str, headers: Any, *args: Any) -> Any:
            key = (environ["REQUEST_METHOD"], _route(environ["PATH_INFO"]), int(status.split()[0]))
            self.env.answers[key] = self.env.answers.get(key, 0) + 1
            return start_response(status, headers, *args)

        return self.env.app.wsgi_app(environ, record)


def _route(path: str) -> str:
    """The path without the parts that vary from case to case (for the summary)."""
    parts = path.removeprefix(PREFIX).split("/")
    return "/".join(parts[:4])


def test_the_api_keeps_the_document_under_fuzzing(fuzz_env: FuzzEnv) -> None:
    """Every failure of any check is collected, and the run fails listing them all
    (each with the curl command that reproduces it)."""

    config = schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": not RANDOM},
            "parameters": {"path.integration": "acme"},
            "headers": dict(fuzz_env.headers),
            "checks": {
                "enabled": False,
                **{check.__name__: {"enabled": True} for check in CHECKS},
            },
            "phases": {"stateful": {"enabled": False}},
            "workers": 1,
        }
    )
    schema = schemathesis.openapi.from_wsgi(f"{PREFIX}/openapi.json", _Restoring(fuzz_env), config=config)
    started = time.monotonic()
    failures: list[str] = []
    checked: set[str] = set()
    finished = None
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    checked.add(node.name)
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failures.append(
                            f"{event.recorder.label} [{node.name}] {node.failure_info.failure.title}: "
                            f"{node.failure_info.failure.message}\n{node.failure_info.code_sample}"
                        )
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {event!r}")
        elif isinstance(event, events.EngineFinished):
            finished = event
    elapsed = time.monotonic() - started
    print(f"schemathesis {schemathesis.__version__}: {fuzz_env.cases} requests in {elapsed:.1f} s")
    for (method, route, status), count in sorted(fuzz_env.answers.items()):
        print(f"  {method:6} {route:45} {status}: {count}")
    assert finished is not None
    assert not failures, "\n\n".join(dict.fromkeys(failures))
    assert checked == {check.__name__ for check in CHECKS}
    assert fuzz_env.cases >= 300, fuzz_env.cases
    assert started + 150 > time.monotonic(), "the run is meant to stay well under three minutes"
