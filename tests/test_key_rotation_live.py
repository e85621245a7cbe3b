"""``flask zis rotate-keys`` on PostgreSQL while the app keeps working.

The operator's sequence: every process already runs with ``ZIS_ENCRYPTION_KEYS=[new, old]``,
``flask zis rotate-keys`` re-encrypts the database, then ``old`` is removed.  The rotation
must lose nothing that concurrent traffic writes meanwhile: afterwards an app with *only*
the new key decrypts every stored secret, and every connection holds the last token the
(real, refresh-token-rotating) provider issued for it.

Every connection gets its own OAuth client at the provider (client id ``cid-<name>``), so
the provider's own record of what it issued per client is the oracle.  Connections are
owned by one kind of traffic each: the ``r*`` ones are refreshed and read (``get_token``,
refreshing when due) by several threads at once, serialized by the refresh lease; the
``u*`` ones are re-authorized (a real OAuth flow, an upsert) by one thread each, which
also creates new clients and connections as it goes.  A refresh racing a
re-authorization of the same connection may legitimately have its provider answer
discarded, which would make "the last token issued" the wrong oracle.

The second half pins down writes that carry a ciphertext read *before* the rotation
forward into a row written *after* it, each with a deterministic interleaving: the
provider holds the refresh request (a gate in the provider app) while the rotation runs.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask, request

from flask_zis_connections import ReauthorizationRequired, ZISConnections, get_token
from flask_zis_connections.storage import SQLAlchemyStorage
from flask_zis_connections.storage.sqlalchemy.schema import metadata

from .conftest import ORIGIN, reset_postgres
from .flow_driver import auth_header, connect, register, zis_of
from .live_provider import LiveProvider

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REFRESHED = 6  # r0..r5: refreshed and read concurrently
UPSERTERS = 2  # u0, u1: re-authorized over and over, each by its own thread
WARMUP = 0.8  # seconds of traffic before the rotation starts
AFTER = 0.4  # seconds of traffic after it finished
THREAD_JOIN = 15.0


# -- hosts and helpers ---------------------------------------------------------------------
@pytest.fixture
def hosts(postgres_url: str) -> Iterator[Callable[..., Flask]]:
    """``hosts(keys, **config)``: a host app (its own engine, like another process)."""
    reset_postgres(postgres_url)
    apps: list[Flask] = []

    def make(keys: list[str], **config: Any) -> Flask:
        app = Flask("rotation_host")
        app.config.update(
            TESTING=True,
            SECRET_KEY="rotation-secret-key",
            ZIS_DATABASE_URI=postgres_url,
            ZIS_ENCRYPTION_KEYS=keys,
            ZIS_ALLOW_INSECURE_HTTP=True,
            ZIS_ALLOWED_REDIRECT_ORIGINS=[ORIGIN],
            ZIS_RATELIMIT=None,
            ZIS_HTTP_TIMEOUT=5,
        )
        app.config.update(config)
        zis = ZISConnections(app)
        app.register_blueprint(zis.blueprint)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["zis_connections"].storage.close()


def _keys() -> tuple[str, str]:
    return Fernet.generate_key().decode(), Fernet.generate_key().decode()


def _rotate(operator: Flask) -> str:
    """``flask zis rotate-keys`` as the operator runs it (its own app and engine)."""
    result = operator.test_cli_runner().invoke(args=["zis", "rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "Re-encrypted" in result.output, result.output
    return str(result.output)


def _last_issued(provider: LiveProvider) -> dict[str, Any]:
    """The provider's last issued token per client id (issue order = insertion order)."""
    last: dict[str, Any] = {}
    with provider.state.lock:
        for issued in provider.state._by_access.values():
            last[issued.client_id] = issued
    return last


def _undecryptable_ciphertexts(storage: SQLAlchemyStorage, key: str) -> list[str]:
    """Every ``*_enc`` value in every table that ``key`` alone cannot decrypt."""
    fernet = Fernet(key)
    bad: list[str] = []
    with storage.engine.connect() as conn:
        for table in metadata.sorted_tables:
            enc_columns = [c for c in table.columns if c.name.endswith("_enc")]
            if not enc_columns:
                continue
            for row in conn.execute(sa.select(*enc_columns)):
                for column, value in zip(enc_columns, row, strict=True):
                    if value is None:
                        continue
                    try:
                        fernet.decrypt(value.encode())
                    except Exception:
                        bad.append(f"{table.name}.{column.name}")
    return bad


def _storage(app: Flask) -> SQLAlchemyStorage:
    storage = app.extensions["zis_connections"].storage
    assert isinstance(storage, SQLAlchemyStorage)
    return storage


# -- the live test -------------------------------------------------------------------------
def test_rotate_keys_under_concurrent_traffic_loses_nothing(
    hosts: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> None:
    old, new = _keys()
    # Short-lived tokens: get_token finds them due and refreshes on its own, too.
    provider = provider_factory(ACCESS_TOKEN_EXPIRES_IN=2)
    secrets_by_client: dict[str, str] = {}
    lock = threading.Lock()

    def add(app: Flask, name: str) -> None:
        """A new OAuth client (``cid-<name>``) and a connection ``name`` made with it."""
        secret = f"secret-{name}-{random.random()}"
        register(app, provider, name=name, client_id=f"cid-{name}", client_secret=secret)
        with lock:
            secrets_by_client[name] = secret
        connect(app, provider, headers, name=name, oauth_client_name=name)

    before = hosts([old])  # the data written before the new key was deployed
    headers = auth_header(before)
    refreshed = [f"r{i}" for i in range(REFRESHED)]
    for name in refreshed + [f"u{k}" for k in range(UPSERTERS)]:
        add(before, name)

    during = hosts([new, old], ZIS_REFRESH_LEEWAY=1)  # the app, after deploying the new key
    operator = hosts([new, old])  # the `flask zis rotate-keys` process
    zis = zis_of(during)
    stop = threading.Event()
    errors: list[str] = []
    ops: list[tuple[str, float, float]] = []  # (kind, started, finished), monotonic

    def run(kind: str, seed: int, step: Callable[[random.Random, int], None]) -> None:
        rnd = random.Random(seed)
        i = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                with during.app_context():
                    step(rnd, i)
                with lock:
                    ops.append((kind, started, time.monotonic()))
                i += 1
        except Exception:
            with lock:
                errors.append(f"{kind}: {traceback.format_exc()}")

    def do_refresh(rnd: random.Random, i: int) -> None:
        zis.refresh("acme", name=rnd.choice(refreshed))

    def do_get_token(rnd: random.Random, i: int) -> None:
        assert get_token("acme", rnd.choice(refreshed))

    def do_upsert(k: int) -> Callable[[random.Random, int], None]:
        def step(rnd: random.Random, i: int) -> None:
            if i % 3 == 2:
                add(during, f"u{k}-{i}")  # a new client and connection
            else:  # re-authorize: same name, same uuid, new tokens
                connect(during, provider, headers, name=f"u{k}", oauth_client_name=f"u{k}")

        return step

    threads = [
        threading.Thread(target=run, args=("refresh", 1, do_refresh)),
        threading.Thread(target=run, args=("refresh", 2, do_refresh)),
        threading.Thread(target=run, args=("get_token", 3, do_get_token)),
        threading.Thread(target=run, args=("get_token", 4, do_get_token)),
    ] + [threading.Thread(target=run, args=("upsert", 10 + k, do_upsert(k))) for k in range(UPSERTERS)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(WARMUP)
        rotate_started = time.monotonic()
        output = _rotate(operator)
        rotate_finished = time.monotonic()
        time.sleep(AFTER)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=THREAD_JOIN)
    assert not any(t.is_alive() for t in threads), "a traffic thread hung"
    assert not errors, "\n".join(errors)

    overlapping = Counter(k for k, s, f in ops if s < rotate_finished and f > rotate_started)
    summary = (
        f"{Counter(k for k, _, _ in ops)} operations; rotation took "
        f"{rotate_finished - rotate_started:.3f}s ({output.strip()}), overlapping it: "
        f"{dict(overlapping)}; provider token calls: {provider.state.token_call_count}"
    )
    print(summary)
    assert overlapping, "no traffic overlapped the rotation: " + summary
    assert {"refresh", "get_token", "upsert"} <= set(Counter(k for k, _, _ in ops)), summary

    # Old key removed: everything still decrypts, and nothing was lost.
    after = hosts([new])
    st = after.extensions["zis_connections"]
    assert _undecryptable_ciphertexts(_storage(after), new) == [], summary
    clients = st.storage.list_clients("acme")
    assert {c.name: st.encryptor.decrypt_optional(c.client_secret_enc) for c in clients} == (
        secrets_by_client
    )
    client_ids = {c.uuid: c.client_id for c in clients}
    with after.app_context():
        page = zis_of(after).list_connections("acme", limit=1000)
    records = page["connections"]
    assert page["next_cursor"] is None
    assert {r.name for r in records} == set(secrets_by_client), summary
    last = _last_issued(provider)
    for rec in records:
        conn = st.lifecycle.decrypt(rec)
        issued = last[client_ids[rec.oauth_client_uuid]]
        assert client_ids[rec.oauth_client_uuid] == f"cid-{rec.name}"
        assert (conn.access_token, conn.refresh_token) == (issued.access_token, issued.refresh_token), (
            f"{rec.name} does not hold the last token issued for it; " + summary
        )
        assert provider.state.is_refresh_token_active(conn.refresh_token)

    # And the new-key-only app can use them: a refresh decrypts the client secret and the
    # refresh token and talks to the provider.
    with after.app_context():
        for name in refreshed:
            assert zis_of(after).refresh("acme", name=name).access_token


# -- writes that carry a pre-rotation ciphertext forward ----------------------------------
class ProviderGate:
    """Holds the provider's next refresh request until ``release`` (set up before use)."""

    def __init__(self, provider: LiveProvider) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        provider.app.before_request(self._hold)

    def _hold(self) -> None:
        if (
            self.armed
            and request.path == "/oauth/token"
            and (request.form.get("grant_type") == "refresh_token")
        ):
            self.armed = False
            self.entered.set()
            self.release.wait(timeout=10)


def _refresh_while_rotating(
    hosts: Callable[..., Flask], provider_factory: Callable[..., LiveProvider], fault: str
) -> tuple[Flask, list[BaseException]]:
    """Connect under ``old``; then refresh with [new, old] while rotate-keys runs.

    The refresher read the row (old-key ciphertexts) before the provider call; the gate
    keeps it at the provider until the rotation is done, so its write lands after it.
    """
    old, new = _keys()
    provider = provider_factory()
    gate = ProviderGate(provider)
    before = hosts([old])
    register(before, provider)
    connect(before, provider, auth_header(before))
    during, operator = hosts([new, old]), hosts([new, old])

    raised: list[BaseException] = []

    def refresh() -> None:
        with during.app_context():
            try:
                zis_of(during).refresh("acme", name="main")
            except BaseException as exc:
                raised.append(exc)

    provider.state.inject_token_fault(fault)
    gate.armed = True
    thread = threading.Thread(target=refresh)
    thread.start()
    try:
        assert gate.entered.wait(timeout=10), "the refresh never reached the provider"
        _rotate(operator)
    finally:
        gate.release.set()
        thread.join(timeout=THREAD_JOIN)
    assert not thread.is_alive()
    return hosts([new]), raised


def test_refresh_without_new_refresh_token_across_rotation_stays_decryptable(
    hosts: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> None:
    after, raised = _refresh_while_rotating(hosts, provider_factory, "omit_refresh_token")
    assert raised == []
    bad = _undecryptable_ciphertexts(_storage(after), after.config["ZIS_ENCRYPTION_KEYS"][0])
    assert bad == [], f"old-key ciphertext after rotate-keys reported success: {bad}"


def test_refused_refresh_across_rotation_stays_decryptable(
    hosts: Callable[..., Flask], provider_factory: Callable[..., LiveProvider]
) -> None:
    after, raised = _refresh_while_rotating(hosts, provider_factory, "invalid_grant")
    assert len(raised) == 1 and isinstance(raised[0], ReauthorizationRequired), raised
    bad = _undecryptable_ciphertexts(_storage(after), after.config["ZIS_ENCRYPTION_KEYS"][0])
    assert bad == [], f"old-key ciphertext after rotate-keys reported success: {bad}"


def test_client_update_across_rotation_stays_decryptable(
    hosts: Callable[..., Flask],
    provider_factory: Callable[..., LiveProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = _keys()
    provider = provider_factory()
    before = hosts([old])
    client = register(before, provider)
    during, operator = hosts([new, old]), hosts([new, old])

    # The rotation runs between the update's read of the client and its write (the
    # interleaving a PATCH racing rotate-keys gets); no I/O in between to hold it open,
    # so the write is intercepted instead.
    storage = _storage(during)
    real_update = storage.update_client

    def rotate_then_update(updated: Any, **kw: Any) -> Any:
        _rotate(operator)
        return real_update(updated, **kw)

    monkeypatch.setattr(storage, "update_client", rotate_then_update)
    with during.app_context():
        zis_of(during).update_oauth_client("acme", client.uuid, default_scopes="read")
    after = hosts([new])
    assert _undecryptable_ciphertexts(_storage(after), new) == []
