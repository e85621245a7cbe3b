"""``zis.metrics_wsgi_app()``: Prometheus metrics, scraped over real HTTP.

The host app is served on a loopback port with the metrics app mounted beside it by
werkzeug's ``DispatcherMiddleware``; a scripted run against the live Authlib provider
(flows, a refresh, a failed refresh and its back-off, a refused refresh, a ``zis.session``
401 retry, the token proxy, a revocation) must show up in the scrape as exact counts,
and the gauges must match what storage holds.  The scrape never carries a secret.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server

from flask_zis_connections import ZISConnections, signals
from flask_zis_connections.domain import CONNECTION_STATUSES, connection_status, utcnow
from flask_zis_connections.errors import (
    ConfigurationError,
    ConnectionNotFound,
    ProviderError,
    ReauthorizationRequired,
)
from flask_zis_connections.metrics import EXPIRING_SOON
from flask_zis_connections.storage import MemoryStorage, Storage
from flask_zis_connections.storage.contract.status import StatusContract

from .conftest import free_port
from .flow_driver import auth_header, callback, connect, query, redirect_to_provider, register, start, zis_of
from .helpers import PREFIX
from .live_provider import LiveProvider

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
ALL_BACKENDS = pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"], indirect=True)
ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# -- serving the host app with its metrics ----------------------------------------------------------
@dataclass
class Served:
    app: Flask
    base: str

    @property
    def zis(self) -> ZISConnections:
        return zis_of(self.app)

    @property
    def storage(self) -> Storage:
        return self.app.extensions["zis_connections"].storage  # type: ignore[no-any-return]

    def scrape_text(self) -> str:
        resp = requests.get(f"{self.base}/metrics", timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.text

    def scrape(self) -> Samples:
        return parse(self.scrape_text())

    def api(self, path: str, headers: dict[str, str], **query: str) -> requests.Response:
        """The host's own API, over the same server as the metrics."""
        return requests.get(f"{self.base}{PREFIX}{path}", params=query, headers=headers, timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[Flask], Served]]:
    """``serve(app)``: mount ``/metrics`` on ``app`` and serve both on a free loopback port."""
    running: list[tuple[Any, threading.Thread]] = []

    def start_serving(app: Flask) -> Served:
        app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, {"/metrics": zis_of(app).metrics_wsgi_app()}
        )
        port = free_port()
        server = make_server("127.0.0.1", port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return Served(app, f"http://127.0.0.1:{port}")

    yield start_serving
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Secrets:
    """Every secret value a test handled; none may appear in a scrape."""

    values: set[str] = field(default_factory=set)

    def add(self, *found: Any) -> None:
        self.values.update(str(v) for v in found if v)

    def add_connection(self, conn: dict[str, Any]) -> None:
        self.add(conn.get("access_token"), conn.get("refresh_token"))

    def assert_absent_from(self, text: str) -> None:
        assert self.values
        leaked = [s for s in self.values if s in text]
        assert not leaked, f"{len(leaked)} secret(s) in the scrape"


def gauges_from_storage(storage: Storage) -> dict[str, int]:
    """The status of every stored connection, counted one by one (the slow way)."""
    soon = utcnow() + EXPIRING_SOON
    counts = dict.fromkeys(CONNECTION_STATUSES, 0)
    integrations = {c.integration for c in storage.list_clients()} | {"acme", "billing"}
    for integration in integrations:
        for record in storage.list_connections(integration, limit=500).items:
            counts[connection_status(record, storage.get_refresh_backoff(record.uuid), soon)] += 1
    return counts


# -- the scripted run ---------------------------------------------------------------------------------
@SQLITE
def test_a_scripted_run_shows_exact_counts_and_gauges_that_match_storage(
    make_app: Callable[..., Flask], provider: LiveProvider, serve: Callable[[Flask], Served]
) -> None:
    secrets = Secrets()
    app = make_app(ZIS_HOST_TOKEN_URL=provider.token_url, ZIS_REFRESH_BACKOFF_MAX=60)
    served = serve(app)
    zis = served.zis

    before = served.scrape()  # every series is there from the start, at 0
    for outcome in ("started", "completed", "failed"):
        assert value(before, "zis_flows_total", outcome=outcome) == 0
    assert value(before, "zis_provider_calls_total", endpoint="api", status_class="error") == 0
    assert value(before, "zis_session_retries_total", reason="429") == 0
    assert value(before, "zis_get_token_seconds_count") == 0
    assert {value(before, "zis_connections", status=s) for s in CONNECTION_STATUSES} == {0}

    register(app, provider, revocation_url=provider.revocation_url, api_base_url=provider.url)
    secrets.add("demo-secret")
    headers = auth_header(app)
    secrets.add(headers["Authorization"].removeprefix("Bearer "))

    # Three flows complete (token endpoint 2xx x3) ...
    for name in ("main", "other", "third"):
        conn = connect(app, provider, headers, name=name, allow_offline_access=True)
        secrets.add_connection(conn)
    # ... and one is refused by the person at the provider's consent page.
    browser = app.test_client()
    started = start(browser, headers, name="denied")
    back = callback(
        browser,
        provider.approve(redirect_to_provider(browser, started.get_json()["redirect_url"]), confirm=False),
    )
    assert query(back.headers["Location"])["error"] == ["access_denied"]

    # A refresh (2xx), then the provider fails one (5xx): back-off; the next asks fail fast.
    refreshed = served.api("/connections/refresh/acme", headers, name="main")
    assert refreshed.status_code == 200, refreshed.text
    secrets.add_connection(refreshed.json())
    provider.state.inject_token_fault("http500")
    assert served.api("/connections/refresh/acme", headers, name="main").status_code == 502
    failed_fast = served.api("/connections/refresh/acme", headers, name="main")
    assert failed_fast.status_code == 502 and "Retry-After" in failed_fast.headers

    # A refused refresh token (4xx): "third" needs re-authorization.
    provider.state.revoke_refresh_token(secrets_of(served, "third")["refresh_token"])
    with app.app_context(), pytest.raises(ReauthorizationRequired):
        zis.refresh("acme", name="third")

    # zis.session: the API answers 401 for a revoked token; one refresh, one retry.
    old = secrets_of(served, "other")["access_token"]
    answer = requests.post(
        provider.revocation_url,
        data={"token": old, "token_type_hint": "access_token"},
        auth=("demo-client", "demo-secret"),
        timeout=10,
    )
    assert answer.status_code == 200
    with app.app_context(), zis.session("acme", "other") as s:
        assert s.get("/api/me").status_code == 200
    secrets.add_connection(secrets_of(served, "other"))

    # The token proxy (a client of the host's own, posting its secret) and get_token, three times.
    provider.register_client("host-client", "host-secret", token_endpoint_auth_method="client_secret_post")
    secrets.add("host-secret")
    proxied = requests.post(
        f"{served.base}{PREFIX}/connections/oauth/tokens/acme",
        json={"grant_type": "client_credentials", "client_id": "host-client", "client_secret": "host-secret"},
        timeout=10,
    )
    assert proxied.status_code == 200, proxied.text
    secrets.add(proxied.json()["access_token"])
    with app.app_context():
        for _ in range(3):
            secrets.add(zis.get_token("acme", "other"))

    # A credential connection (no expiry), one expiring soon, one deleted with revocation.
    with app.app_context():
        zis.create_connection(
            "acme",
            "key",
            type="api_key",
            allowed_domain="api.example.com",
            api_key="sk-metrics-1",
            header_name="X-Key",
        )
        secrets.add("sk-metrics-1")
        fourth = connect(app, provider, headers, name="fourth", allow_offline_access=True)
        secrets.add_connection(fourth)
        rec = served.storage.get_connection("acme", name="fourth")
        assert rec is not None
        assert served.storage.update_connection(
            rec.replace(token_expiry=utcnow() + timedelta(minutes=2)), expected_version=rec.version
        )
        fifth = connect(app, provider, headers, name="fifth", allow_offline_access=True)
        secrets.add_connection(fifth)
        assert zis.delete_connection("acme", name="fifth") is True  # two revocations, 2xx

    text = served.scrape_text()
    got = parse(text)
    flows = {o: value(got, "zis_flows_total", outcome=o) for o in ("started", "completed", "failed")}
    assert flows == {"started": 6, "completed": 5, "failed": 1}
    refreshes = {
        o: value(got, "zis_refreshes_total", outcome=o)
        for o in ("refreshed", "failed", "needs_reauth", "backed_off")
    }
    assert refreshes == {"refreshed": 2, "failed": 1, "needs_reauth": 1, "backed_off": 1}
    assert value(got, "zis_refresh_backoffs_total") == 1
    calls = {
        (endpoint, cls): value(got, "zis_provider_calls_total", endpoint=endpoint, status_class=cls)
        for endpoint in ("token", "revocation", "proxy", "api")
        for cls in ("2xx", "3xx", "4xx", "5xx", "error")
    }
    expected_calls = dict.fromkeys(calls, 0.0)
    expected_calls.update(
        {
            # 5 code exchanges, the refresh, the session's refresh
            ("token", "2xx"): 7,
            ("token", "5xx"): 1,  # the failed refresh
            ("token", "4xx"): 1,  # the refused refresh token
            ("revocation", "2xx"): 2,  # refresh token and access token of "fifth"
            ("proxy", "2xx"): 1,
            ("api", "4xx"): 1,  # the revoked token's 401 ...
            ("api", "2xx"): 1,  # ... and the retry
        }
    )
    assert calls == expected_calls
    for endpoint, count in (("token", 9), ("revocation", 2), ("proxy", 1), ("api", 2)):
        assert value(got, "zis_provider_call_seconds_count", endpoint=endpoint) == count
        assert value(got, "zis_provider_call_seconds_sum", endpoint=endpoint) > 0
    assert value(got, "zis_session_retries_total", reason="401") == 1
    assert value(got, "zis_session_retries_total", reason="429") == 0
    assert value(got, "zis_get_token_seconds_count") == 3
    assert value(got, "zis_get_token_seconds_bucket", le="+Inf") == 3

    # Gauges: what storage holds, read on the scrape.
    gauges = {s: int(value(got, "zis_connections", status=s)) for s in CONNECTION_STATUSES}
    assert gauges == {
        "active": 1,
        "expiring_soon": 1,
        "refresh_failing": 1,
        "needs_reauth": 1,
        "no_expiry": 1,
    }
    assert gauges == gauges_from_storage(served.storage)

    # Only zis_ metrics, and never a secret in a name, a label or a value.
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names and all(name.startswith("zis_") for name in names)
    secrets.assert_absent_from(text)


def secrets_of(served: Served, name: str) -> dict[str, Any]:
    with served.app.app_context():
        conn = served.zis.get_connection("acme", name, refresh_if_due=False)
    return {"access_token": conn.access_token, "refresh_token": conn.refresh_token}


# -- several apps ---------------------------------------------------------------------------------------
@SQLITE
def test_two_apps_in_one_process_keep_separate_numbers(
    make_app: Callable[..., Flask], provider: LiveProvider, serve: Callable[[Flask], Served]
) -> None:
    one = serve(make_app())
    two = serve(make_app(ZIS_STORAGE="memory"))
    assert zis_of(one.app) is not zis_of(two.app)
    register(one.app, provider)
    connect(one.app, provider, auth_header(one.app), name="main")
    with two.app.app_context():
        zis_of(two.app).create_connection(
            "acme", "a", type="bearer_token", allowed_domain="api.example.com", token="t-1"
        )
        zis_of(two.app).create_connection(
            "acme", "b", type="bearer_token", allowed_domain="api.example.com", token="t-2"
        )
        assert zis_of(two.app).get_token("acme", "a") == "t-1"

    first, second = one.scrape(), two.scrape()
    assert value(first, "zis_flows_total", outcome="completed") == 1
    assert value(second, "zis_flows_total", outcome="completed") == 0
    assert value(first, "zis_provider_calls_total", endpoint="token", status_class="2xx") == 1
    assert value(second, "zis_provider_calls_total", endpoint="token", status_class="2xx") == 0
    assert value(first, "zis_get_token_seconds_count") == 0
    assert value(second, "zis_get_token_seconds_count") == 1
    assert value(first, "zis_connections", status="active") == 1
    assert value(first, "zis_connections", status="no_expiry") == 0
    assert value(second, "zis_connections", status="active") == 0
    assert value(second, "zis_connections", status="no_expiry") == 2


def test_one_extension_on_two_apps_reports_their_sum(tmp_path: Path) -> None:
    zis = ZISConnections()
    apps = []
    for index in range(2):
        app = Flask(f"host_{index}", instance_path=str(tmp_path / f"i{index}"))
        app.config.update(SECRET_KEY="k", ZIS_STORAGE="memory")
        zis.init_app(app)
        apps.append(app)
    registry = zis.metrics_registry()  # turns metrics on for both apps
    for app in apps:
        with app.app_context():
            zis.create_connection(
                "acme", "k", type="api_key", allowed_domain="api.example.com", api_key="x", header_name="X"
            )
            zis.get_token("acme", "k")
    got = parse(generate_latest(registry).decode())
    assert value(got, "zis_connections", status="no_expiry") == 2
    assert value(got, "zis_get_token_seconds_count") == 2
    assert zis.metrics_wsgi_app() is not None and zis.metrics_registry() is registry


# -- turning metrics on ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_zis_metrics_collects_from_init_app_on(make_app: Callable[..., Flask], backend: str) -> None:
    app = make_app(ZIS_METRICS=True)
    zis = zis_of(app)
    assert app.extensions["zis_connections"].lifecycle.observe_get_token is not None
    with app.app_context():
        zis.create_connection(
            "acme", "k", type="api_key", allowed_domain="api.example.com", api_key="x", header_name="X"
        )
        zis.get_token("acme", "k")
    got = parse(generate_latest(zis.metrics_registry()).decode())
    assert value(got, "zis_get_token_seconds_count") == 1


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_get_token_timing_covers_hits_misses_and_failures_and_comes_off(
    make_app: Callable[..., Flask], backend: str
) -> None:
    """The timing wraps every call - a cache miss, a hit, a call that raises - and
    taking it off leaves the plain method, whose answers are the same."""
    app = make_app()
    zis = zis_of(app)
    life = app.extensions["zis_connections"].lifecycle
    seconds: list[float] = []
    with app.app_context():
        zis.create_connection(
            "acme", "k", type="api_key", allowed_domain="api.example.com", api_key="x", header_name="X"
        )
        life.time_get_token(seconds.append)
        assert life.observe_get_token is not None
        assert [zis.get_token("acme", "k") for _ in range(3)] == ["x", "x", "x"]
        with pytest.raises(ConnectionNotFound):
            zis.get_token("acme", "nobody")
        assert len(seconds) == 4 and all(s > 0 for s in seconds)
        life.time_get_token(None)
        assert life.observe_get_token is None
        assert zis.get_token("acme", "k") == "x"
    assert len(seconds) == 4


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_without_metrics_get_token_measures_and_sends_nothing(
    make_app: Callable[..., Flask], backend: str
) -> None:
    app = make_app()
    zis = zis_of(app)
    assert app.extensions["zis_connections"].lifecycle.observe_get_token is None
    sent: list[str] = []
    every = [
        getattr(signals, n)
        for n in dir(signals)
        if isinstance(getattr(signals, n), type(signals.flow_started))
    ]

    def receive(sender: object, **kw: Any) -> None:
        sent.append(str(kw))

    for signal in every:
        signal.connect(receive)
    try:
        with app.app_context():
            zis.create_connection(
                "acme", "k", type="api_key", allowed_domain="api.example.com", api_key="x", header_name="X"
            )
            sent.clear()
            for _ in range(5):
                assert zis.get_token("acme", "k") == "x"
    finally:
        for signal in every:
            signal.disconnect(receive)
    assert sent == []


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_without_the_extra_the_package_works_and_metrics_say_what_to_install(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # "not installed"
    app = make_app()
    zis = zis_of(app)
    with app.app_context():
        zis.create_connection(
            "acme", "k", type="api_key", allowed_domain="api.example.com", api_key="x", header_name="X"
        )
        assert zis.get_token("acme", "k") == "x"
    with pytest.raises(ConfigurationError, match=r"'metrics' extra.*flask-zis-connections\[metrics\]"):
        zis.metrics_wsgi_app()
    with pytest.raises(ConfigurationError, match="metrics"):
        zis.metrics_registry()
    assert app.extensions["zis_connections"].lifecycle.observe_get_token is None
    with pytest.raises(ConfigurationError, match=r"'metrics' extra"):
        make_app(ZIS_METRICS=True)


def test_the_package_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import flask_zis_connections, flask_zis_connections.metrics, flask_zis_connections.extension\n"
        "from flask import Flask\n"
        "app = Flask('x'); app.config.update(SECRET_KEY='k', ZIS_STORAGE='memory')\n"
        "zis = flask_zis_connections.ZISConnections(app)\n"
        "try:\n"
        "    zis.metrics_wsgi_app()\n"
        "except flask_zis_connections.errors.ConfigurationError as exc:\n"
        "    print('refused:', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "pip install 'flask-zis-connections[metrics]'" in proc.stdout


# -- gauges ---------------------------------------------------------------------------------------------
@ALL_BACKENDS
def test_gauges_count_each_status_in_one_read(
    make_app: Callable[..., Flask], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    zis = zis_of(app)
    registry = zis.metrics_registry()
    storage: Storage = app.extensions["zis_connections"].storage
    with app.app_context():
        for index in range(3):
            zis.create_connection(
                "billing",
                f"k{index}",
                type="bearer_token",
                allowed_domain="api.example.com",
                token=f"t{index}",
            )
    reads: list[str] = []
    for name in ("list_connections", "get_refresh_backoff", "get_connection"):
        original = getattr(storage, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            reads.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(storage, name, counted)
    statements: list[str] = []
    if backend != "memory":
        import sqlalchemy as sa

        def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        sa.event.listen(storage.engine, "before_cursor_execute", on_execute)  # type: ignore[attr-defined]
    got = parse(generate_latest(registry).decode())
    assert value(got, "zis_connections", status="no_expiry") == 3
    assert reads == []  # one aggregate, not a read per connection
    if backend != "memory":
        assert len([s for s in statements if "zis_connections" in s]) == 1, statements


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_storage_that_fails_leaves_the_gauge_out_not_the_scrape(
    make_app: Callable[..., Flask],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    zis = zis_of(app)
    registry = zis.metrics_registry()
    storage: Storage = app.extensions["zis_connections"].storage

    def broken(expiring_before: Any) -> dict[str, int]:
        raise ProviderError("the database is down")

    monkeypatch.setattr(storage, "connection_status_counts", broken)
    got = parse(generate_latest(registry).decode())
    assert not any(name == "zis_connections" for name, _ in got)
    assert ("zis_flows_total", frozenset({("outcome", "started")})) in got
    assert "zis_connections is left out" in caplog.text


def test_the_status_of_a_connection_decides_in_order() -> None:
    from flask_zis_connections.domain import RefreshBackoff
    from flask_zis_connections.storage.contract.builders import T0, make_client, make_record

    record = make_record(make_client(), token_expiry=T0 + timedelta(hours=1))
    backoff = RefreshBackoff(record.uuid, 1, "provider_error", T0, T0)
    soon = T0 + EXPIRING_SOON
    assert connection_status(record, None, soon) == "active"
    assert connection_status(record, None, T0 + timedelta(hours=2)) == "expiring_soon"
    assert connection_status(record.replace(token_expiry=None), None, soon) == "no_expiry"
    assert connection_status(record, backoff, soon) == "refresh_failing"
    assert connection_status(record.replace(needs_reauth=True), backoff, soon) == "needs_reauth"


class _ReadingMemoryStorage(MemoryStorage):
    """A backend without an aggregate of its own: the default reads connection by connection."""

    _connection_status_counts = Storage._connection_status_counts


class TestTheDefaultCountOfABackendWithoutItsOwn(StatusContract):
    @pytest.fixture
    def storage(self) -> Storage:
        return _ReadingMemoryStorage()


# -- a refresh that is backed off is counted as such, the token still handed out ------------------------
@SQLITE
def test_a_due_token_during_a_back_off_counts_backed_off(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    import time_machine

    app = make_app(ZIS_REFRESH_LEEWAY=600)
    registry = zis_of(app).metrics_registry()
    register(app, provider)
    conn = connect(app, provider, auth_header(app), name="main", allow_offline_access=True)
    provider.state.inject_token_fault("http500", times=3)
    with time_machine.travel(utcnow() + timedelta(minutes=55), tick=True), app.app_context():
        for _ in range(3):
            assert zis_of(app).get_token("acme", "main") == conn["access_token"]
    got = parse(generate_latest(registry).decode())
    assert value(got, "zis_refreshes_total", outcome="failed") == 1
    assert value(got, "zis_refreshes_total", outcome="backed_off") == 2
    assert value(got, "zis_refresh_backoffs_total") == 1
    assert value(got, "zis_get_token_seconds_count") == 3


@SQLITE
def test_client_credentials_flows_count_started_completed_and_failed(
    make_app: Callable[..., Flask], provider: LiveProvider
) -> None:
    app = make_app()
    registry = zis_of(app).metrics_registry()
    register(app, provider, grant_type="client_credentials")
    headers = auth_header(app)
    browser = app.test_client()
    assert start(browser, headers, name="svc").status_code == 200
    provider.state.inject_token_fault("http500")
    assert start(browser, headers, name="svc2").status_code == 502
    provider.state.inject_token_fault("invalid_client")
    assert start(browser, headers, name="svc3").status_code == 422
    got = parse(generate_latest(registry).decode())
    flows = {o: value(got, "zis_flows_total", outcome=o) for o in ("started", "completed", "failed")}
    assert flows == {"started": 3, "completed": 1, "failed": 2}
    assert value(got, "zis_provider_calls_total", endpoint="token", status_class="2xx") == 1
    assert value(got, "zis_provider_calls_total", endpoint="token", status_class="5xx") == 1
    assert value(got, "zis_provider_calls_total", endpoint="token", status_class="4xx") == 1
    assert value(got, "zis_connections", status="active") == 1
