"""A refresh storm: many concurrent requests for one expired OAuth connection.

Real gunicorn (gthread workers; full run: 4 workers x 50 threads) serves the extension's
HTTP API from ``bench/storm_app.py``; a real token endpoint on a loopback socket answers
every refresh after a fixed delay (0.5 s; quick: 0.2 s).  The benchmark makes the
connection (tables, OAuth client, imported tokens, an API token), expires it, boots
gunicorn, and fires every client at once (one HTTP connection each, all driven by one
thread through a selector, as wrk drives its connections) at
``GET {prefix}/connections/acme?name=main`` - "show", which refreshes when due.  It measures:

* each request's latency, client side, from connecting to the last byte; p50/p99
  against the provider's delay, the floor no refresh can beat (plus a CDF plot);
* calls that reached the token endpoint (must be exactly 1 per storm);
* on PostgreSQL: transactions (``pg_stat_database`` ``xact_commit + xact_rollback``)
  and new sessions (``sessions``) between the moment before the burst and the moment
  every gunicorn backend has exited (a backend publishes its counters when it goes
  idle, at most once a second, or when it exits - so gunicorn is stopped before the
  second reading, and the app touches no database at start-up), per request; and the
  ``ERROR`` lines the server logged meanwhile (``ctx.postgres_log``).

Baseline in the same run: the same burst on a connection that is *not* due (no
refresh), which is what the server alone costs under that load.  The code the workers
run can be another checkout's (``--code DIR`` goes first on their ``PYTHONPATH``), to
compare before and after a change.

    python -m bench.bench_storm                 # SQLite, and PostgreSQL if ZIS_TEST_POSTGRES_URL
    python -m bench.bench_storm --quick         # smoke: 2 workers x 8 threads, 16 clients
    python -m bench.bench_storm --code /other/checkout --pg-log /tmp/zis-services/pg.log
    python -m bench.bench_storm --trace         # and where each storm's time went (bench/storm_trace.py)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the repository root holds the package.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from flask import Flask  # noqa: E402

from bench.report import Context, Goal, Section, table  # noqa: E402
from bench.steal import cpu_ticks, stolen_share  # noqa: E402
from flask_zis_connections import ZISConnections  # noqa: E402
from flask_zis_connections.domain import utcnow  # noqa: E402
from flask_zis_connections.importing import import_jsonl  # noqa: E402
from flask_zis_connections.storage import Storage  # noqa: E402

PREFIX = "/api/services/zis"
INTEGRATION, NAME = "acme", "main"
SHOW_PATH = f"{PREFIX}/connections/{INTEGRATION}?name={NAME}"
#: SQLAlchemy's default pool per engine (``pool_size`` 5 + ``max_overflow`` 10), which the
#: storm app keeps: the most connections a worker's requests can hold at once.
POOL = 5 + 10
#: Connections a worker may hold besides its pool: ``get_token``'s and the show
#: endpoint's narrow reads keep up to ``pool_size`` connections of their own
#: (``flask_zis_connections/storage/sqlalchemy/hot.py``) ...
NARROW = 5
#: ... and the token cache's and the refresh lease's ``LISTEN`` connections.
LISTENERS = 2
BOOT_TIMEOUT = 60.0
#: An idle PostgreSQL backend publishes its pending counters within 10 seconds.
STATS_IDLE_FLUSH = 11.0
#: Seconds after gunicorn booted at which a warm storm's token expires by the clock: the
#: warm-up bursts and the floor must be over by then (less the storm app's leeway).
CLOCK_EXPIRY = 8.0
#: The storm app's ``ZIS_REFRESH_LEEWAY``: a token is due this long before it expires.
LEEWAY = 1.0


@dataclass(frozen=True)
class Shape:
    workers: int
    threads: int
    clients: int
    delay: float
    #: Warm-pool rounds (each with its baseline), then cold-pool ones.
    warm_rounds: int
    cold_rounds: int


#: Five warm rounds: on this 2-core machine the time the first request of a burst needs
#: to reach the provider varies from 30 to 280 ms between rounds of one run, and the
#: median of three moved by as much between runs of the same code.
FULL = Shape(workers=4, threads=50, clients=200, delay=0.5, warm_rounds=5, cold_rounds=1)
QUICK = Shape(workers=2, threads=8, clients=16, delay=0.2, warm_rounds=0, cold_rounds=1)


# -- the provider -------------------------------------------------------------------------
class TokenEndpoint:
    """A token endpoint on ``127.0.0.1:<free port>`` that answers ``delay`` seconds after
    it accepted the call's connection, with new tokens (it checks nothing: the
    benchmark counts calls, not grants).

    The delay runs from the accept, not from the handler: this process shares the
    machine's two cores with the burst, and under it starting the handler's thread and
    parsing the request took 2-10 ms after the accept (storm traces), a wait a
    provider on its own machine does not add to its latency.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[float] = []  # time.monotonic() of each call's accept
        self._lock = threading.Lock()
        accepted: dict[socket.socket, float] = {}
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with endpoint._lock:
                    # One request per connection (HTTP/1.0), so each finds its accept;
                    # a second on a kept-alive one would count from its own arrival.
                    arrived = accepted.pop(self.request, None) or time.monotonic()
                    endpoint.calls.append(arrived)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(max(0.0, arrived + endpoint.delay - time.monotonic()))
                body = json.dumps(
                    {
                        "access_token": uuid.uuid4().hex,
                        "refresh_token": uuid.uuid4().hex,
                        "token_type": "Bearer",
                        "expires_in": 3600,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                # On the accepting thread, before the handler's thread is started.
                with endpoint._lock:
                    accepted[request] = time.monotonic()
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the database and the connection ---------------------------------------------------------
class Setup:
    """An in-process app on the benchmark's database: it makes the connection and
    expires it between rounds, then lets go of every database connection."""

    def __init__(self, url: str, provider_url: str) -> None:
        self.url = url
        self.key = Fernet.generate_key().decode()
        if url.startswith("postgresql"):
            from flask_zis_connections.storage.sqlalchemy.schema import metadata

            engine = sa.create_engine(url)
            metadata.drop_all(engine)
            engine.dispose()
        self.app = Flask("storm_setup")
        self.app.config.update(
            SECRET_KEY="storm-secret-key",
            ZIS_DATABASE_URI=url,
            ZIS_ENCRYPTION_KEYS=[self.key],
            ZIS_ALLOW_INSECURE_HTTP=True,
            ZIS_RATELIMIT=None,
        )
        zis = ZISConnections(self.app)
        with self.app.app_context():
            zis.create_oauth_client(
                INTEGRATION,
                name="acme",
                client_id="storm",
                client_secret="storm-secret",
                auth_url=f"{provider_url}/authorize",
                token_url=f"{provider_url}/token",
            )
            line = {
                "integration": INTEGRATION,
                "name": NAME,
                "oauth_client_name": "acme",
                "access_token": uuid.uuid4().hex,
                "refresh_token": uuid.uuid4().hex,
                "expires_at": int(time.time()) + 3600,
            }
            report = import_jsonl([json.dumps(line)])
            assert report.ok, report.results
            self.bearer = zis.issue_access_token(INTEGRATION)
        self.storage: Storage = self.app.extensions["zis_connections"].storage
        self.storage.close()

    def set_expiry(self, expired: bool, at: datetime | None = None) -> None:
        """Expire the token now (``expired``), in an hour, or ``at`` that moment."""
        rec = self.storage.get_connection(INTEGRATION, name=NAME)
        assert rec is not None
        expiry = at or utcnow() + (timedelta(hours=-1) if expired else timedelta(hours=1))
        stored = self.storage.update_connection(
            rec.replace(token_expiry=expiry, updated_at=utcnow() - timedelta(hours=1)),
            expected_version=rec.version,
        )
        assert stored is not None
        self.storage.close()  # no backend of ours stays open into the measured window

    def version(self) -> int:
        rec = self.storage.get_connection(INTEGRATION, name=NAME)
        assert rec is not None
        self.storage.close()
        return rec.version


# -- gunicorn ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """gunicorn running ``bench/storm_app.py`` in its own process group, always stopped."""

    def __init__(self, workdir: Path, shape: Shape, env: dict[str, str], code: Path | None) -> None:
        self.workdir = workdir
        self.shape = shape
        self.port = _free_port()
        self.ready = workdir / "ready"
        self.ready.mkdir(parents=True)
        app_dir = workdir / "app"
        app_dir.mkdir()
        shutil.copy(ROOT / "bench" / "storm_app.py", app_dir / "zis_storm_app.py")
        shutil.copy(ROOT / "bench" / "storm_trace.py", app_dir / "storm_trace.py")
        self.env = {
            **os.environ,
            **env,
            "STORM_READY_DIR": str(self.ready),
            "STORM_CODE": str(code or ""),
            "PYTHONPATH": str(app_dir),
        }
        self.app_dir = app_dir
        self.log = workdir / "gunicorn.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gunicorn:
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(self.shape.workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(self.shape.threads),
            # No worker accepts more requests than it has threads: none queues behind a
            # busy worker while another idles.
            "--worker-connections",
            str(self.shape.threads),
            "--keep-alive",
            "0",
            "--backlog",
            "1024",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--timeout",
            "60",
            "--graceful-timeout",
            "10",
            "--chdir",
            str(self.app_dir),
            "zis_storm_app:create_app()",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Every worker built the app and the socket accepts - no request is sent, so
        nothing touches the database before the burst."""
        assert self.proc is not None
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log.read_text(errors='replace')[-2000:]}")
            if len(list(self.ready.iterdir())) >= self.shape.workers:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not boot: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
                return
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def error_lines(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or "ERROR" in line]


# -- the burst ---------------------------------------------------------------------------------
@dataclass
class Answer:
    seconds: float = 0.0
    status: int = 0
    token: str = ""
    pid: int = 0
    package: str = ""  # the checkout the worker imported the package from
    error: str = ""
    raw: bytes = b""  # the answer as it came off the socket


@dataclass
class _Exchange:
    """One client's socket in :func:`fire`: what it sent and what came back so far."""

    answer: Answer
    started: float
    request: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    length: int | None = None  # the whole answer's bytes, once its headers arrived


def fire_watched(
    port: int, bearer: str, clients: int, path: str = SHOW_PATH
) -> tuple[list[Answer], float, float | None]:
    """:func:`fire`, and the share of the machine's CPU time its host took meanwhile."""
    ticks = cpu_ticks()
    answers, released = fire(port, bearer, clients, path)
    return answers, released, stolen_share(ticks, cpu_ticks())


def fire(port: int, bearer: str, clients: int, path: str = SHOW_PATH) -> tuple[list[Answer], float]:
    """``clients`` requests at once, one connection each, and the moment
    (``time.monotonic()``) they were released.

    One thread drives every socket through a selector, as wrk does: a client thread per
    request would measure its own wait for the GIL too (with 200 of them, the fresh
    burst's p50 came out 10-25 ms higher on the same server), and a storm's answers all
    arrive within a few tens of milliseconds, exactly when 200 threads would queue.
    Each latency runs from that socket's ``connect`` to the last byte of its answer.
    The client's own garbage collector is off meanwhile (after a collection): a full
    collection of this process took 57-64 ms in the middle of some bursts, a stall
    wrk does not have, which every answer of that burst then carried.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: identity\r\n"
        f"Authorization: Bearer {bearer}\r\n\r\n"
    ).encode()
    answers = [Answer() for _ in range(clients)]
    selector = selectors.DefaultSelector()
    gc.collect()
    gc.disable()
    try:
        released = time.monotonic()
        for answer in answers:
            sock = socket.socket()
            sock.setblocking(False)
            exchange = _Exchange(answer, time.perf_counter(), request)
            sock.connect_ex(("127.0.0.1", port))
            selector.register(sock, selectors.EVENT_WRITE, exchange)
        deadline = time.monotonic() + 60
        while selector.get_map():
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for key, _events in ready:
                _step(selector, key.fileobj, key.data)  # type: ignore[arg-type]
    finally:
        gc.enable()
        for key in list(selector.get_map().values()):
            _finish(selector, key.fileobj, key.data, error="timed out")  # type: ignore[arg-type]
        selector.close()
    for answer in answers:
        _parse(answer)
    return answers, released


def _step(selector: selectors.BaseSelector, sock: socket.socket, exchange: _Exchange) -> None:
    """Send what is left of the request, or read what arrived of the answer."""
    try:
        if exchange.sent < len(exchange.request):
            failed = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if failed:
                raise OSError(failed, os.strerror(failed))
            exchange.sent += sock.send(exchange.request[exchange.sent :])
            if exchange.sent == len(exchange.request):
                selector.modify(sock, selectors.EVENT_READ, exchange)
            return
        chunk = sock.recv(65536)
    except OSError as exc:
        _finish(selector, sock, exchange, error=repr(exc))
        return
    received = exchange.received
    received += chunk
    if exchange.length is None:
        head_end = received.find(b"\r\n\r\n")
        if head_end >= 0:
            exchange.length = head_end + 4 + _content_length(bytes(received[:head_end]))
    if not chunk or (exchange.length is not None and len(received) >= exchange.length):
        _finish(selector, sock, exchange)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30  # none: the answer ends when the server closes


def _finish(
    selector: selectors.BaseSelector, sock: socket.socket, exchange: _Exchange, error: str = ""
) -> None:
    exchange.answer.seconds = time.perf_counter() - exchange.started
    exchange.answer.error = error
    exchange.answer.raw = bytes(exchange.received)
    selector.unregister(sock)
    sock.close()


def _parse(answer: Answer) -> None:
    """Status, worker headers and token of an answer read by :func:`fire`."""
    head, sep, body = answer.raw.partition(b"\r\n\r\n")
    if not sep:
        answer.error = answer.error or f"no answer: {answer.raw[:200]!r}"
        return
    lines = head.decode("latin-1").split("\r\n")
    answer.status = int(lines[0].split(" ")[1])
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
    }
    answer.pid = int(headers.get("x-worker-pid") or 0)
    answer.package = headers.get("x-package", "")
    if answer.status == 200:
        answer.token = json.loads(body)["access_token"]
    else:
        answer.error = answer.error or body[:200].decode(errors="replace")


# -- PostgreSQL's counters ------------------------------------------------------------------------
def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pg_counters(url: str, *, quiet: bool = True) -> tuple[int, int]:
    """(transactions, sessions) of the database; ``quiet``: once no other backend is
    connected to it (so every one has published its counters)."""
    import psycopg

    deadline = time.monotonic() + 30
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()), xact_commit + xact_rollback, sessions"
                " FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            assert row is not None
            if not quiet or row[0] == 0 or time.monotonic() > deadline:
                return int(row[1]), int(row[2])
            time.sleep(0.05)


@contextlib.contextmanager
def log_growth(path: Path | None) -> Iterator[list[str]]:
    """The lines ``path`` gains while the block runs."""
    lines: list[str] = []
    start = path.stat().st_size if path is not None and path.exists() else 0
    yield lines
    if path is not None and path.exists():
        with open(path, "rb") as log:
            log.seek(start)
            lines.extend(log.read().decode(errors="replace").splitlines())


# -- one round ---------------------------------------------------------------------------------------
@dataclass
class Round:
    backend: str
    pools: str  # "cold": gunicorn just booted; "warm": after bursts that filled the pools
    #: "baseline" (a fresh connection), "floor" (``/floor``: no extension work) or "storm"
    kind: str
    answers: list[Answer]
    provider_calls: int
    #: Seconds from the burst's start to the first provider call (None: no call).
    provider_at: float | None
    versions: int  # how far the row's version moved
    transactions: int | None = None
    sessions: int | None = None
    pg_errors: list[str] = field(default_factory=list)
    app_errors: list[str] = field(default_factory=list)
    #: ``time.monotonic()`` when the burst was released (storms only).
    released: float | None = None
    #: The share of the machine's CPU time its host took during the burst (None: unknown).
    stolen: float | None = None

    @property
    def seconds(self) -> list[float]:
        return sorted(a.seconds for a in self.answers)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.answers if a.error or a.status != 200)

    def pct(self, q: float) -> float:
        return percentile(self.seconds, q)


KIND_LABELS = {"baseline": "baseline (fresh)", "floor": "floor (no extension)", "storm": "storm (expired)"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_round(
    ctx: Context,
    shape: Shape,
    setup: Setup,
    provider: TokenEndpoint,
    *,
    warm: bool,
    code: Path | None,
    overhead: tuple[int, int],
    trace: Path | None = None,
) -> list[Round]:
    """Boot gunicorn and meet a storm on an expired connection: at once (cold pools,
    as after a deploy), or (``warm``) after two bursts on the fresh connection - the
    first fills the workers' pools, the second is the baseline - and a pause that lets
    PostgreSQL publish what those cost, so the storm's counters are its own.

    A cold storm's token was expired by a write before gunicorn booted.  A warm storm's
    expires by the clock, as tokens do in production: the row is not written between
    the warm-up bursts and the storm, so every worker still holds the answer it made
    from it (a write would also have told every cache of its own that the row changed).
    """
    backend = "postgresql" if setup.url.startswith("postgresql") else "sqlite"
    pg = backend == "postgresql"
    pools = "warm" if warm else "cold"
    env = {
        "ZIS_DATABASE_URI": setup.url,
        "ZIS_ENCRYPTION_KEYS": setup.key,
        "STORM_FLOOR_DELAY": str(shape.delay),
        "STORM_REFRESH_LEEWAY": str(LEEWAY),
    }
    if trace is not None:
        env["STORM_TRACE_DIR"] = str(trace)
    workdir = Path(tempfile.mkdtemp(prefix="storm-", dir=ctx.tmp))
    rounds: list[Round] = []
    setup.set_expiry(expired=not warm)
    with Gunicorn(workdir, shape, env, code) as server:
        if warm:
            expiry = utcnow() + timedelta(seconds=CLOCK_EXPIRY)
            setup.set_expiry(expired=False, at=expiry)
            fire(server.port, setup.bearer, shape.clients)
            answers, _, stolen = fire_watched(server.port, setup.bearer, shape.clients)
            rounds.append(Round(backend, pools, "baseline", answers, 0, None, 0, stolen=stolen))
            calls = len(provider.calls)
            floor = f"/floor?burst={uuid.uuid4().hex}"
            answers, _, stolen = fire_watched(server.port, setup.bearer, shape.clients, floor)
            assert len(provider.calls) == calls  # the floor calls nobody
            rounds.append(Round(backend, pools, "floor", answers, 0, None, 0, stolen=stolen))
            if (expiry - utcnow()).total_seconds() <= LEEWAY:
                raise RuntimeError(f"the warm-up bursts took longer than {CLOCK_EXPIRY - LEEWAY:g} s")
            if pg:
                time.sleep(STATS_IDLE_FLUSH)
            time.sleep(max(0.0, (expiry - utcnow()).total_seconds() + 0.05))  # expired by the clock
        before_version = setup.version()
        with log_growth(ctx.postgres_log if pg else None) as pg_lines:
            counted = pg_counters(setup.url, quiet=not warm) if pg else (0, 0)
            calls = len(provider.calls)
            answers, released, stolen = fire_watched(server.port, setup.bearer, shape.clients)
            made = provider.calls[calls:]
            server.stop()
            after = pg_counters(setup.url) if pg else (0, 0)
    storm = Round(
        backend,
        pools,
        "storm",
        answers,
        len(made),
        min(made) - released if made else None,
        setup.version() - before_version,
        pg_errors=[line for line in pg_lines if "ERROR:" in line],
        app_errors=server.error_lines(),
        released=released,
        stolen=stolen,
    )
    if pg:
        storm.transactions = after[0] - counted[0] - overhead[0]
        storm.sessions = after[1] - counted[1] - overhead[1]
    return [*rounds, storm]


def calibrate(url: str) -> tuple[int, int]:
    """What two readings of the counters cost by themselves (their own connections)."""
    first = pg_counters(url)
    second = pg_counters(url)
    return second[0] - first[0], second[1] - first[1]


# -- the report ---------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _check_code(rounds: list[Round], code: Path | None) -> None:
    """Every answer came from the package asked for (an editable install could answer
    first and silently measure the wrong code)."""
    expected = str(code or ROOT)
    ran = {a.package for r in rounds for a in r.answers if a.package}
    if ran != {expected}:
        raise RuntimeError(f"the workers ran the package from {sorted(ran)}, not {expected}")


def run(ctx: Context, *, code: Path | None = None, trace: Path | None = None) -> Section:
    shape = QUICK if ctx.quick else FULL
    urls = [f"sqlite:///{ctx.tmp / 'storm.sqlite3'}"]
    if ctx.postgres_url:
        urls.insert(0, ctx.postgres_url)
    rounds: list[Round] = []
    with TokenEndpoint(shape.delay) as provider:
        for url in urls:
            setup = Setup(url, provider.url)
            overhead = calibrate(url) if url.startswith("postgresql") else (0, 0)
            for warm in [True] * shape.warm_rounds + [False] * shape.cold_rounds:
                rounds += run_round(
                    ctx, shape, setup, provider, warm=warm, code=code, overhead=overhead, trace=trace
                )
            setup.storage.close()
    _check_code(rounds, code)
    section = report(ctx, shape, rounds, code)
    if trace is not None:
        section.markdown += "\n\n" + traced(trace, rounds)
    return section


def traced(directory: Path, rounds: list[Round]) -> str:
    """The table of where each storm's time went, from the workers' marks
    (:mod:`bench.storm_trace`)."""
    from bench import storm_trace

    marks = storm_trace.read_marks(directory)
    traces = []
    for r in rounds:
        if r.released is None:
            continue
        pids = {a.pid for a in r.answers if a.pid}
        found = storm_trace.storm_trace(marks, r.released, r.released + 60, pids)
        if found is not None:
            traces.append((f"{r.backend}, {r.pools} pools", found))
    header, rows = storm_trace.storm_rows(traces)
    return (
        "Traced (marks in every worker, `--trace`; the marks themselves slow the burst): "
        "ms from the burst's release to each step of the request that held the lease, "
        "each worker's median answer, and the garbage collector's pauses over 2 ms.\n\n" + table(header, rows)
    )


def report(ctx: Context, shape: Shape, rounds: list[Round], code: Path | None) -> Section:
    delay = shape.delay
    rows: list[list[str]] = []
    goals: list[Goal] = []
    groups: dict[tuple[str, str, str], list[Round]] = {}
    for r in rounds:
        groups.setdefault((r.backend, r.pools, r.kind), []).append(r)
    for (backend, pools, kind), group in groups.items():
        storm = kind == "storm"
        p50 = statistics.median(r.pct(50) for r in group)
        p99 = statistics.median(r.pct(99) for r in group)
        requests = sum(len(r.answers) for r in group)
        failed = sum(r.failed for r in group)
        calls = [r.provider_calls for r in group]
        reached = [r.provider_at for r in group if r.provider_at is not None]
        tokens = [len({a.token for a in r.answers if a.token}) for r in group]
        xacts = [r.transactions / len(r.answers) for r in group if r.transactions is not None]
        sessions = [r.sessions for r in group if r.sessions is not None]
        pg_errors = sum(len(r.pg_errors) for r in group)
        app_errors = sum(len(r.app_errors) for r in group)
        workers = min(len({a.pid for a in r.answers if a.pid}) for r in group)
        stolen = [r.stolen for r in group if r.stolen is not None]
        rows.append(
            [
                f"{backend}, {pools} pools, {KIND_LABELS[kind]}",
                str(len(group)),
                f"{requests} ({failed} failed)",
                str(workers),
                "/".join(map(str, calls)) if storm else "-",
                "/".join(_ms(x) for x in reached) if reached else "-",
                "/".join(map(str, tokens)),
                _ms(p50),
                _ms(p99),
                f"{p50 / delay:.2f}x" if kind != "baseline" else "-",
                "/".join(f"{x:.2f}" for x in xacts) if xacts else "-",
                "/".join(map(str, sessions)) if sessions else "-",
                str(pg_errors) if storm and backend == "postgresql" else "-",
                str(app_errors) if storm else "-",
                "/".join(f"{x:.0%}" for x in stolen) if stolen else "-",
            ]
        )
        if not storm:
            continue
        label = f"{'PostgreSQL' if backend == 'postgresql' else 'SQLite'} ({pools} pools)"
        goals += [
            Goal(f"{label} provider calls per storm", max(calls), 1, unit=""),
            Goal(f"{label} failed requests", failed, 0, unit=""),
        ]
        if pools == "warm" or not shape.warm_rounds:
            goals += [
                Goal(f"{label} storm p50", p50, delay + 0.1, unit=" s"),
                Goal(f"{label} storm p99", p99, delay + 0.3, unit=" s"),
            ]
        if backend == "postgresql":
            bound = shape.workers * (POOL + NARROW + LISTENERS)
            goals += [
                Goal(f"{label} transactions per request", max(xacts), 3, unit=""),
                Goal(f"{label} ERROR lines", pg_errors, 0, unit=""),
                Goal(
                    f"{label} new sessions (pools, narrow reads and listeners: {bound})",
                    max(sessions),
                    bound,
                    unit="",
                ),
            ]
    over_floor: list[str] = []
    for backend in dict.fromkeys(r.backend for r in rounds):
        floors = groups.get((backend, "warm", "floor"), [])
        storms = groups.get((backend, "warm", "storm"), [])
        if floors and len(floors) == len(storms):
            diffs = [s.pct(50) - f.pct(50) for f, s in zip(floors, storms, strict=True)]
            name = "PostgreSQL" if backend == "postgresql" else "SQLite"
            over_floor.append(f"{name} {_ms(statistics.median(diffs))} ({'/'.join(_ms(d) for d in diffs)})")
    gaps = "; ".join(over_floor)
    plots = [plot(ctx, rounds, delay)]
    header = [
        "run",
        "rounds",
        "requests",
        "workers",
        "provider calls",
        "provider reached after",
        "tokens",
        "p50",
        "p99",
        "p50 / provider",
        "xacts / request",
        "new sessions",
        "PG ERROR lines",
        "app errors",
        "host's steal",
    ]
    code_note = f"the package from `{code}`" if code is not None else "this checkout's package"
    markdown = "\n\n".join(
        [
            f"{shape.clients} concurrent `GET {PREFIX}/connections/{INTEGRATION}?name={NAME}` on "
            f"gunicorn ({shape.workers} gthread workers x {shape.threads} threads, {code_note}); "
            f"the token endpoint answers {_ms(delay)} after it accepted the call's connection, "
            "the floor for every request of a storm.  *Warm pools*: gunicorn served two bursts "
            "on the fresh connection first (the second is the baseline row: what the server "
            "alone costs under that load), as in steady production, and the token then expired "
            f"by the clock (the storm app's refresh leeway is {LEEWAY:g} s) with no write to its "
            "row, so every worker still held its last answer of it, as when a token expires in "
            "production; *cold pools*: the storm is the first thing gunicorn serves, as right "
            "after a deploy, so every pooled connection is opened during it (its token was "
            "expired by a write before gunicorn booted).  p50/p99: "
            "median over rounds; other per-round figures joined by `/`; transactions and "
            "sessions are PostgreSQL's own counters over the storm (`pg_stat_database`).  "
            "*Provider reached after*: from the burst's start to the token endpoint's accept "
            "of the one refresh call - the time the first request needs to get there through "
            "the burst.  *Floor*: in each "
            "warm round, between the baseline and the storm, the same burst at the storm app's "
            "`/floor` - the first request in each worker sleeps the provider's delay in the "
            "extension's single flight and the others wait their turn, as a storm's do, with "
            "no authentication, database, lease, provider call or encryption: the lowest a "
            "refresh storm can reach on this server, machine and load.  *Host's steal*: the "
            "share of the machine's CPU time its virtual machine host took during each burst "
            "(`/proc/stat`, in ticks of 10 ms per core: about 1% each over a 0.6 s burst).",
            table(header, rows),
            *(
                [f"Storm p50 over the floor's, warm rounds (median, then each round): {gaps}."]
                if gaps
                else []
            ),
            "Targets (latency judged with warm pools): p50 <= provider + 100 ms, p99 <= provider "
            "+ 300 ms; exactly one provider call and one new token per storm, <= 3 PostgreSQL "
            "transactions per request, no ERROR line in the server log, new sessions within the "
            f"workers' connections ({shape.workers} x ({POOL} pooled + {NARROW} for narrow reads + "
            f"{LISTENERS} listeners)).",
        ]
    )
    return Section("Refresh storm", markdown, plots, goals)


def plot(ctx: Context, rounds: list[Round], delay: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    series: dict[str, list[float]] = {}
    for r in rounds:
        label = f"{r.backend}, {r.pools} pools, {KIND_LABELS[r.kind]}"
        series.setdefault(label, []).extend(r.seconds)
    for label, values in series.items():
        ordered = sorted(values)
        ax.step(
            [v * 1000 for v in ordered],
            [(i + 1) / len(ordered) for i in range(len(ordered))],
            where="post",
            label=label,
        )
    ax.axvline(delay * 1000, color="grey", linestyle="--", label="provider delay")
    ax.axvline((delay + 0.1) * 1000, color="grey", linestyle=":", label="p50 target")
    ax.set_xlabel("request latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Refresh storm: latency CDF")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.out_dir / "storm_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, short run (the test suite's)")
    parser.add_argument("--code", type=Path, help="run the workers on the package in this checkout")
    parser.add_argument("--pg-url", default=os.environ.get("ZIS_TEST_POSTGRES_URL"))
    parser.add_argument("--pg-log", type=Path, help="that server's log, to count its ERROR lines")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--trace", action="store_true", help="mark the refresh's steps in the workers: where time went"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zis-storm-") as tmp:
        ctx = Context(args.quick, args.out, Path(tmp), postgres_url=args.pg_url, postgres_log=args.pg_log)
        trace = Path(tmp, "trace") if args.trace else None
        if trace is not None:
            trace.mkdir()
        section = run(ctx, code=args.code.resolve() if args.code else None, trace=trace)
    print(f"## {section.title}\n\n{section.markdown}\n")
    for path in section.plots:
        print(f"plot: {path}")
    for goal in section.goals:
        print(goal.line())
    missed = Counter(goal.met for goal in section.goals)[False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
