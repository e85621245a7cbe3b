"""Prometheus metrics: what ``zis.metrics_wsgi_app()`` answers.

One :class:`Metrics` per :class:`~flask_zis_connections.ZISConnections` instance, in a
``CollectorRegistry`` of its own - never prometheus_client's global one - so several
extensions (and the host's own metrics) in one process never clash, and a test's app
never sees another's numbers.  An extension initialised on several apps reports their
sum; give each app its own ``ZISConnections`` to tell them apart.

The numbers come from :mod:`~flask_zis_connections.signals` (flows, refreshes, provider
calls, session retries): receivers connected for the apps that collect, so the code
that does the work knows nothing of Prometheus.  ``get_token`` is the host's hot path
and sends no signal: while metrics are on, the lifecycle times it with
:func:`time.perf_counter` and hands the seconds to :attr:`Metrics.get_token_seconds`;
while they are off it measures nothing.  ``zis_connections`` (connections by status) is
read from storage on each scrape, one aggregate query per database
(:meth:`~flask_zis_connections.storage.Storage.connection_status_counts`).

prometheus-client is an optional dependency (the ``metrics`` extra), imported only
when metrics are turned on; without it the package works as before and turning metrics
on raises :class:`~flask_zis_connections.errors.ConfigurationError` saying what to
install.  No label value comes from a request or a provider: every label is one of the
fixed words listed here, so no token, code or secret can reach the exposition.
"""

from __future__ import annotations

import importlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from flask import Flask

from . import signals
from ._state import EXTENSION_KEY, AppState
from .domain import CONNECTION_STATUSES, utcnow
from .errors import ConfigurationError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

__all__ = ["EXPIRING_SOON", "INSTALL_HINT", "Metrics", "load_prometheus"]

log = logging.getLogger("flask_zis_connections")

INSTALL_HINT: Final = "pip install 'flask-zis-connections[metrics]'"
#: A connection whose token expires within this long (or within ``ZIS_REFRESH_LEEWAY``,
#: when longer) counts as ``expiring_soon``.
EXPIRING_SOON: Final = timedelta(minutes=5)

FLOW_OUTCOMES: Final = ("started", "completed", "failed")
REFRESH_OUTCOMES: Final = ("refreshed", "failed", "needs_reauth", "backed_off")
RETRY_REASONS: Final = ("401", "429")

#: Seconds: a provider call is tens of milliseconds to ``ZIS_HTTP_TIMEOUT`` (10 s default).
PROVIDER_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds: ``get_token`` is a read and a decrypt (well under a millisecond to a few), or a
#: refresh (a provider call) when the token is due.
GET_TOKEN_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def load_prometheus() -> None:
    """Import prometheus_client, or say which extra brings it."""
    try:
        importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ConfigurationError(
            "Metrics need prometheus-client, which the 'metrics' extra installs: "
            f"{INSTALL_HINT}. Without it, leave ZIS_METRICS off and do not call "
            "zis.metrics_wsgi_app()."
        ) from exc


class Metrics:
    """The instruments of one extension, in their own registry.

    :raises ConfigurationError: when prometheus-client is not installed.
    """

    def __init__(self) -> None:
        load_prometheus()
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.flows = Counter(
            "zis_flows", "OAuth flows by outcome (started, completed, failed).", ["outcome"], registry=reg
        )
        self.refreshes = Counter(
            "zis_refreshes",
            "Token refreshes by outcome: refreshed, failed (the provider failed; the connection "
            "backs off), needs_reauth (refused: a person must connect again), backed_off (due "
            "but not attempted during a back-off).",
            ["outcome"],
            registry=reg,
        )
        self.provider_calls = Counter(
            "zis_provider_calls",
            "HTTP calls to providers by endpoint (token, revocation, proxy, api) and status "
            "class (2xx-5xx, or error when no answer came).",
            ["endpoint", "status_class"],
            registry=reg,
        )
        self.refresh_backoffs = Counter(
            "zis_refresh_backoffs",
            "Back-offs started: a connection's refresh failed at the provider after a success "
            "(or for the first time), and it stopped calling the provider for a while.",
            registry=reg,
        )
        self.session_retries = Counter(
            "zis_session_retries",
            "Requests zis.session sent again: after a 401 (and a refresh) or a 429.",
            ["reason"],
            registry=reg,
        )
        self.provider_seconds = Histogram(
            "zis_provider_call_seconds",
            "Duration of HTTP calls to providers by endpoint, failed ones included.",
            ["endpoint"],
            buckets=PROVIDER_BUCKETS,
            registry=reg,
        )
        self.get_token_seconds = Histogram(
            "zis_get_token_seconds",
            "Duration of get_token(), a refresh included when one was due.",
            buckets=GET_TOKEN_BUCKETS,
            registry=reg,
        )
        # Every series exists from the first scrape, at 0: rate() needs a start.
        for outcome in FLOW_OUTCOMES:
            self.flows.labels(outcome=outcome)
        for outcome in REFRESH_OUTCOMES:
            self.refreshes.labels(outcome=outcome)
        for endpoint in signals.PROVIDER_ENDPOINTS:
            self.provider_seconds.labels(endpoint=endpoint)
            for status_class in signals.STATUS_CLASSES:
                self.provider_calls.labels(endpoint=endpoint, status_class=status_class)
        for reason in RETRY_REASONS:
            self.session_retries.labels(reason=reason)

        self._lock = threading.Lock()
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        reg.register(_status_collector(self.connection_counts))

    # -- which apps ------------------------------------------------------------------
    def attach(self, app: Flask, state: AppState) -> None:
        """Count ``app``'s signals and time its ``get_token`` from now on (idempotent)."""
        with self._lock:
            if app in self._apps:
                return
            self._apps.add(app)
        for signal, receiver in self._receivers():
            # Bound methods are held weakly by blinker: they live as long as this object,
            # which lives as long as its extension.
            signal.connect(receiver, sender=app)
        state.lifecycle.time_get_token(self.get_token_seconds.observe)

    def _receivers(self) -> Iterable[tuple[Any, Callable[..., None]]]:
        return (
            (signals.flow_started, self._flow_started),
            (signals.flow_completed, self._flow_completed),
            (signals.flow_failed, self._flow_failed),
            (signals.connection_refreshed, self._refreshed),
            (signals.connection_refresh_failed, self._refresh_failed),
            (signals.refresh_backed_off, self._backed_off),
            (signals.provider_called, self._provider_called),
            (signals.session_retried, self._session_retried),
        )

    def wsgi_app(self) -> WSGIApplication:
        """A WSGI app answering this registry in the Prometheus text format."""
        from prometheus_client import make_wsgi_app

        app: WSGIApplication = make_wsgi_app(registry=self.registry)
        return app

    # -- receivers: fixed label values only ----------------------------------------------
    def _flow_started(self, sender: object, **kw: Any) -> None:
        self.flows.labels(outcome="started").inc()

    def _flow_completed(self, sender: object, **kw: Any) -> None:
        self.flows.labels(outcome="completed").inc()

    def _flow_failed(self, sender: object, **kw: Any) -> None:
        self.flows.labels(outcome="failed").inc()

    def _refreshed(self, sender: object, **kw: Any) -> None:
        self.refreshes.labels(outcome="refreshed").inc()

    def _refresh_failed(self, sender: object, **kw: Any) -> None:
        if kw.get("needs_reauth"):
            self.refreshes.labels(outcome="needs_reauth").inc()
            return
        self.refreshes.labels(outcome="failed").inc()
        if kw.get("backoff_started"):
            self.refresh_backoffs.inc()

    def _backed_off(self, sender: object, **kw: Any) -> None:
        self.refreshes.labels(outcome="backed_off").inc()

    def _provider_called(self, sender: object, **kw: Any) -> None:
        endpoint, status_class = kw.get("endpoint"), kw.get("status_class")
        if endpoint not in signals.PROVIDER_ENDPOINTS or status_class not in signals.STATUS_CLASSES:
            return  # a label value of nobody knows where: never a new series
        self.provider_calls.labels(endpoint=endpoint, status_class=status_class).inc()
        seconds = kw.get("seconds")
        if isinstance(seconds, int | float) and seconds >= 0:
            self.provider_seconds.labels(endpoint=endpoint).observe(seconds)

    def _session_retried(self, sender: object, **kw: Any) -> None:
        reason = kw.get("reason")
        if reason in RETRY_REASONS:
            self.session_retries.labels(reason=reason).inc()

    # -- connections by status, read on scrape -------------------------------------------
    def connection_counts(self) -> Mapping[str, int] | None:
        """Connections by status over the apps that collect, each database read once;
        None when one could not be read (the gauge is then left out of the scrape, rather
        than reporting a part as the whole)."""
        with self._lock:
            apps = list(self._apps)
        totals: dict[str, int] = dict.fromkeys(CONNECTION_STATUSES, 0)
        seen: set[int] = set()
        for app in apps:
            state: AppState | None = app.extensions.get(EXTENSION_KEY)
            if state is None or id(state.storage) in seen:
                continue
            seen.add(id(state.storage))
            window = max(EXPIRING_SOON, timedelta(seconds=state.settings.refresh_leeway))
            try:
                counts = state.storage.connection_status_counts(utcnow() + window)
            except Exception as exc:  # a scrape reports, it does not fail the exporter
                log.warning(
                    "Metrics: counting the connections of app %s failed (%s); zis_connections "
                    "is left out of this scrape.",
                    app.name,
                    type(exc).__name__,
                )
                return None
            for status, count in counts.items():
                totals[status] += count
        return totals


def _status_collector(read: Callable[[], Mapping[str, int] | None]) -> Collector:
    """The ``zis_connections`` gauge, computed by ``read`` on each scrape."""
    from prometheus_client.metrics_core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    name = "zis_connections"
    doc = (
        "Connections by status: active, expiring_soon, refresh_failing (backing off), "
        "needs_reauth, no_expiry. Read from the database: every process reports the same."
    )

    class ConnectionsByStatus(Collector):
        def describe(self) -> Iterable[GaugeMetricFamily]:
            # Named without a read, so registering never touches storage.
            return [GaugeMetricFamily(name, doc, labels=["status"])]

        def collect(self) -> Iterable[GaugeMetricFamily]:
            counts = read()
            if counts is None:
                return []
            family = GaugeMetricFamily(name, doc, labels=["status"])
            for status in CONNECTION_STATUSES:
                family.add_metric([status], counts.get(status, 0))
            return [family]

    return ConnectionsByStatus()
