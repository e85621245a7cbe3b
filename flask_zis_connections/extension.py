"""The extension object.

Modelled on Flask-SQLAlchemy: ``ZISConnections(app=None, *, storage=None)``, an
``init_app`` that refuses to run twice on one app, config defaults through
``setdefault``, the configuration read once into a frozen
:class:`~flask_zis_connections.config.Settings`, and all per-app state under one key of
``app.extensions`` (never ``self.app``), so app factories and several apps in one
process work.  The methods here are the Python API; the HTTP API calls the same
services.

A little over 400 lines on purpose: it is the Python API, one short method per operation.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import threading
import uuid as uuidlib
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app

from . import clients, credentials, events, signals
from . import config as cfg
from ._state import EXTENSION_KEY, AppState, _cv_app, state
from .admin import bp as admin_blueprint
from .api import bp as api_blueprint
from .api.auth import AdminSessionLoader, ApiTokenCache
from .api.serializers import AnswerCache
from .clients import require_client, upsert_from_config
from .crypto import Encryptor, hash_secret
from .domain import ApiToken, Connection, OAuthClient
from .errors import ConfigurationError, InvalidRequest
from .flow import FlowService
from .lifecycle import Lifecycle
from .metrics import Metrics
from .outbound import OutboundPolicy
from .providers import ProviderPreset, catalog
from .ratelimit import RateLimits
from .session import DEFAULT_MAX_RETRY_AFTER, ConnectionSession
from .storage import MemoryStorage, SQLAlchemyStorage, Storage
from .token_cache import TokenCache
from .validation import integration_name

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from prometheus_client import CollectorRegistry

log = logging.getLogger("flask_zis_connections")


class ZISConnections:
    """OAuth connections for a Flask host application.

    :param app: initialise on this app at once (or call :meth:`init_app` later).
    :param storage: a :class:`~flask_zis_connections.storage.Storage` instance that
        overrides ``ZIS_STORAGE`` for every app this extension is initialised on.
    """

    def __init__(self, app: Flask | None = None, *, storage: Storage | None = None) -> None:
        self._storage_override = storage
        self._admin_loader: AdminSessionLoader | None = None
        #: The HTTP API to register on the host: ``app.register_blueprint(zis.blueprint)``.
        #: One blueprint object shared by every app; views find their app's state.
        self.blueprint: Blueprint = api_blueprint
        #: The admin console, optional: ``app.register_blueprint(zis.admin_blueprint,
        #: url_prefix="/admin/connections")``, next to :attr:`blueprint` (its flows use
        #: the API's callback).  Admits whom ``@admin_session_loader`` admits.
        self.admin_blueprint: Blueprint = admin_blueprint
        #: The apps this extension is initialised on, held weakly: metrics, once on, cover
        #: them all (their state stays in each app's ``app.extensions``).
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._metrics: Metrics | None = None
        self._metrics_lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    # -- set-up -------------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        """Set up storage, keys and services for ``app``.

        Reads every ``ZIS_*`` key once, here (see :class:`~.config.Settings`); later
        changes to ``app.config`` are not seen.  Creates missing tables unless
        ``ZIS_CREATE_TABLES`` is off, and creates or updates ``ZIS_OAUTH_CLIENTS``.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'ZISConnections' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        for key, default in cfg.DEFAULTS.items():
            app.config.setdefault(key, copy.deepcopy(default))
        conf = app.config
        storage = self._make_storage(app)
        try:
            self._set_up(app, storage)
        except BaseException:
            if storage is not self._storage_override and not isinstance(conf[cfg.STORAGE], Storage):
                storage.close()  # ours: do not leak a connection pool on a failed start
            app.extensions.pop(EXTENSION_KEY, None)
            raise
        from .cli import zis_cli

        if "zis" not in app.cli.commands:
            app.cli.add_command(zis_cli)

    def _set_up(self, app: Flask, storage: Storage) -> None:
        conf = app.config
        settings = cfg.Settings.from_config(conf)
        if conf[cfg.CREATE_TABLES]:
            storage.create_tables()
        encryptor = Encryptor.from_config(
            conf[cfg.ENCRYPTION_KEYS], conf.get("SECRET_KEY"), conf.get("SECRET_KEY_FALLBACKS")
        )
        outbound = OutboundPolicy(
            timeout=settings.http_timeout,
            max_response_bytes=settings.max_provider_response_bytes,
            allow_private=settings.allow_insecure_http,
            allowed_private_hosts=frozenset(settings.allowed_private_hosts),
        )
        lifecycle = Lifecycle(
            app=app,
            storage=storage,
            encryptor=encryptor,
            leeway=settings.refresh_leeway,
            lease_ttl=settings.refresh_lease_ttl,
            http_timeout=settings.http_timeout,
            outbound=outbound,
            backoff_max=settings.refresh_backoff_max,
            token_cache=TokenCache.for_settings(settings, storage),
        )
        flows = FlowService(
            app=app,
            storage=storage,
            encryptor=encryptor,
            flow_max_age=settings.flow_token_max_age,
            code_max_age=settings.verification_code_max_age,
            allowed_origins=list(settings.allowed_redirect_origins),
            allow_insecure=settings.allow_insecure_http,
            outbound=outbound,
            cookie_prefix=settings.flow_cookie_name,
            on_changed=lifecycle.changed,
        )
        app.extensions[EXTENSION_KEY] = AppState(
            ext=self,
            settings=settings,
            storage=storage,
            encryptor=encryptor,
            lifecycle=lifecycle,
            flows=flows,
            limits=RateLimits.from_config(conf),
            api_tokens=ApiTokenCache.for_ttl(settings.api_token_cache_ttl),
            answers=AnswerCache.for_bytes(settings.api_response_cache_bytes),
        )
        answers = app.extensions[EXTENSION_KEY].answers
        if answers is not None:  # weakly held: it lives as long as the app's state
            signals.connection_deleted.connect(answers.connection_deleted, sender=app)
        if conf[cfg.OAUTH_CLIENTS]:
            upsert_from_config(
                storage, encryptor, conf[cfg.OAUTH_CLIENTS], allow_insecure=settings.allow_insecure_http
            )
        self._apps.add(app)
        if settings.metrics or self._metrics is not None:
            self._collecting()

    def _make_storage(self, app: Flask) -> Storage:
        if self._storage_override is not None:
            return self._storage_override
        choice = app.config[cfg.STORAGE]
        if isinstance(choice, Storage):
            return choice
        if choice == "memory":
            return MemoryStorage()
        if choice == "sqlalchemy":
            uri = app.config[cfg.DATABASE_URI]
            if not uri:
                os.makedirs(app.instance_path, exist_ok=True)
                uri = "sqlite:///" + os.path.join(app.instance_path, "zis_connections.sqlite3")
            return SQLAlchemyStorage(uri, engine_options=app.config[cfg.ENGINE_OPTIONS])
        raise ConfigurationError(
            f"ZIS_STORAGE must be 'sqlalchemy', 'memory' or a Storage instance, not {choice!r}."
        )

    def close(self, app: Flask | None = None) -> None:
        """Stop what the extension runs in the background for ``app`` (default:
        ``current_app``) and release its connections: the token cache's listener
        threads (joined) and Redis clients, and the storage's pool when the extension
        created the storage (one passed in belongs to the caller).

        For app factories and tests that build and discard apps; a process that exits
        needs none of it (the listeners are daemon threads).  ``get_token`` keeps
        working in-process afterwards, but no longer hears other processes' writes.
        """
        st = state(app)
        config = app.config if app is not None else current_app.config
        if st.lifecycle.token_cache is not None:
            st.lifecycle.token_cache.close()
        if st.storage is not self._storage_override and not isinstance(config[cfg.STORAGE], Storage):
            st.storage.close()

    # -- metrics ------------------------------------------------------------------------
    def metrics_wsgi_app(self) -> WSGIApplication:
        """A WSGI app answering this extension's metrics in the Prometheus text format.

        Mount it where the host likes, e.g. ``app.wsgi_app = DispatcherMiddleware(
        app.wsgi_app, {"/metrics": zis.metrics_wsgi_app()})``.  Calling it turns metrics
        on for every app this extension is initialised on, now or later (``ZIS_METRICS``
        turns them on at ``init_app``).  The numbers are this extension's alone, in a
        registry of its own (:mod:`~flask_zis_connections.metrics`).  The app has no
        authentication: mount it where only the scraper reaches it.

        :raises ConfigurationError: when prometheus-client (the ``metrics`` extra) is missing.
        """
        return self._collecting().wsgi_app()

    def metrics_registry(self) -> CollectorRegistry:
        """The ``prometheus_client.CollectorRegistry`` of this extension's metrics, for a
        host with a Prometheus set-up of its own (``generate_latest(zis.metrics_registry())``);
        turns metrics on as :meth:`metrics_wsgi_app` does."""
        return self._collecting().registry

    def _collecting(self) -> Metrics:
        """This extension's metrics, made on first use and collecting for all its apps."""
        with self._metrics_lock:
            if self._metrics is None:
                self._metrics = Metrics()
            metrics = self._metrics
        for app in list(self._apps):
            st = app.extensions.get(EXTENSION_KEY)
            if isinstance(st, AppState) and st.ext is self:
                metrics.attach(app, st)
        return metrics

    def admin_session_loader(self, func: AdminSessionLoader) -> AdminSessionLoader:
        """Register ``func(integration) -> user id | None`` to admit logged-in admins."""
        self._admin_loader = func
        return func

    @property
    def admin_loader(self) -> AdminSessionLoader | None:
        return self._admin_loader

    # -- OAuth clients --------------------------------------------------------------
    @staticmethod
    def providers() -> Mapping[str, ProviderPreset]:
        """The preset catalog: ``{name: ProviderPreset}``, each built from the provider's
        published documentation (its pages are in ``preset.docs``).  Pass a name as
        ``create_oauth_client(..., provider=name)``; explicit options override it."""
        return catalog()

    def create_oauth_client(
        self, integration: str, *, created_by: str | None = None, **options: Any
    ) -> OAuthClient:
        """Register an OAuth client; ``Conflict`` on a duplicate name.

        ``options`` are the client fields (``name``, ``client_id``, ``client_secret``,
        ``auth_url``, ``token_url``, ``default_scopes``, ``grant_type``,
        ``token_endpoint_auth_method``, ``pkce``, ``issuer``, ``authorize_params``,
        ``offline_access_params``, ``revocation_url``, ``per_client_callback``).
        """
        return clients.create_client(state(), integration, options, created_by=created_by)

    def update_oauth_client(
        self, integration: str, uuid: str, *, expected_version: int | None = None, **changes: Any
    ) -> OAuthClient:
        """Change some fields of a client; ``Conflict`` when ``expected_version`` is
        given and someone changed it since.  The host's own code may move its URLs and
        keep the stored secret (the HTTP API may not)."""
        return clients.update_client(state(), integration, uuid, changes, expected_version=expected_version)

    def get_oauth_client(
        self, integration: str, *, name: str | None = None, uuid: str | None = None
    ) -> OAuthClient:
        return require_client(state().storage, integration, uuid=uuid, name=name)

    def list_oauth_clients(self, integration: str) -> list[OAuthClient]:
        return state().storage.list_clients(integration_name(integration))

    def delete_oauth_client(self, integration: str, uuid: str) -> None:
        """Delete the client and every connection made with it."""
        clients.delete_client(state(), integration, uuid)

    # -- API tokens -----------------------------------------------------------------
    def issue_access_token(self, integration: str) -> str:
        """A new random bearer token for ``integration``; only its hash is stored."""
        integration_name(integration)
        token = "zis_" + secrets.token_urlsafe(32)
        token_id = str(uuidlib.uuid4())
        state().storage.add_api_token(
            ApiToken(id=token_id, token_hash=hash_secret(token), integration=integration)
        )
        events.record("api_token.issued", integration, token_id=token_id)
        return token

    def revoke_access_token(self, token_or_id: str) -> bool:
        """Revoke by the token itself or its id (or its hash); False when none matched."""
        storage = state().storage
        # Found first, so the event can name its integration and id (never the token).
        found = storage.get_api_token(hash_secret(token_or_id)) or next(
            (t for t in storage.list_api_tokens() if token_or_id in (t.id, t.token_hash)), None
        )
        revoked = storage.revoke_api_token(token_or_id) or storage.revoke_api_token(hash_secret(token_or_id))
        tokens = state().api_tokens
        if revoked and tokens is not None:
            tokens.clear()  # at once in this process; others see it within their TTL
        if revoked and found is not None:
            events.record("api_token.revoked", found.integration, token_id=found.id)
        return revoked

    # -- connections ------------------------------------------------------------------
    def get_token(self, integration: str, name: str) -> str:
        """The access token of a connection, refreshed first when it is due; the token
        of a ``bearer_token`` connection, the key of an ``api_key`` one.  A ``basic_auth``
        connection has no single token (``WrongConnectionType``): use :meth:`session`."""
        return state().lifecycle.get_token(integration, name)

    def create_connection(
        self,
        integration: str,
        name: str,
        *,
        type: str,
        allowed_domain: str,
        created_by: str | None = None,
        **fields: Any,
    ) -> Connection:
        """Store a credential connection the host already holds the secret of.

        ``type`` is ``"bearer_token"`` (with ``token=``), ``"basic_auth"``
        (``username=``, ``password=``) or ``"api_key"`` (``api_key=``,
        ``header_name=``); ``allowed_domain`` is the one host (name or IP address, no
        port) :meth:`session` sends it to.  Held to the HTTP API's rules: ``Conflict``
        when the integration has a connection of that name, of any type.
        """
        body = {**fields, "name": name, "allowed_domain": allowed_domain}
        rec = credentials.create(state(), integration, type, body, created_by=created_by)
        return state().lifecycle.decrypt(rec)

    def update_connection(self, integration: str, name: str, *, type: str, **changes: Any) -> Connection:
        """Change ``allowed_domain`` or the fields of a credential connection of ``type``."""
        rec = credentials.update(state(), integration, type, name, changes)
        return state().lifecycle.decrypt(rec)

    def get_connection(
        self,
        integration: str,
        name: str | None = None,
        *,
        uuid: str | None = None,
        refresh_if_due: bool = True,
    ) -> Connection:
        life = state().lifecycle
        rec = life.find(integration, **_one_of(name, uuid))
        if refresh_if_due:
            rec = life.ensure_fresh(rec, force=False)
        return life.decrypt(rec)

    def refresh(self, integration: str, name: str | None = None, *, uuid: str | None = None) -> Connection:
        """Refresh now (one provider call even when many callers ask at once)."""
        life = state().lifecycle
        rec = life.find(integration, **_one_of(name, uuid))
        return life.decrypt(life.ensure_fresh(rec, force=True))

    def delete_connection(
        self, integration: str, name: str | None = None, *, uuid: str | None = None
    ) -> bool | None:
        """Delete a connection of any type; an OAuth one is revoked at the provider when
        its client has a ``revocation_url``.

        Returns whether revocation succeeded (None when not attempted)."""
        life = state().lifecycle
        return life.delete(life.find(integration, **_one_of(name, uuid)))

    def update_connection_metadata(
        self,
        integration: str,
        name: str | None = None,
        changes: Mapping[str, Any] | None = None,
        *,
        uuid: str | None = None,
    ) -> Connection:
        """Merge ``changes`` into the connection's ``metadata``; a ``None`` value deletes
        that key.  Values must be JSON; the whole stays under 16 KiB."""
        life = state().lifecycle
        rec = life.find(integration, **_one_of(name, uuid))
        return life.decrypt(life.update_metadata(rec, changes or {}))

    def session(
        self, integration: str, name: str, *, max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    ) -> ConnectionSession:
        """A :class:`requests.Session` that calls the provider's API as connection ``name``.

        ``with zis.session("crm", "main") as s: s.get("/crm/v3/objects/contacts")``: relative
        URLs join the OAuth client's ``api_base_url``; the credentials go only to that host
        and ``allowed_domains`` (a credential connection's: only to its ``allowed_domain``,
        with no refresh on a 401; anything else raises
        :class:`~flask_zis_connections.session.ForbiddenDestination`, sending nothing) and
        never along a redirect (a 3xx raises ``RedirectRefused``).  A 401 refreshes once
        and retries once; a 429 whose ``Retry-After`` is at most ``max_retry_after``
        seconds is waited out and retried once.  Open it inside an app context; its
        requests need none.
        """
        return ConnectionSession.open(integration, name, max_retry_after=max_retry_after)

    def list_connections(
        self, integration: str, *, limit: int = 100, cursor: str | None = None
    ) -> Mapping[str, Any]:
        page = state().storage.list_connections(integration, limit=limit, cursor=cursor)
        return {"connections": page.items, "next_cursor": page.next_cursor}


def _one_of(name: str | None, uuid: str | None) -> dict[str, str]:
    if (name is None) == (uuid is None):
        raise InvalidRequest("Give exactly one of name or uuid.")
    return {"name": name} if name is not None else {"uuid": str(uuid)}


def get_token(integration: str, name: str) -> str:
    """Module-level shortcut for ``current_app``'s extension: the host's hot path.

    The app's state is looked up here rather than through :func:`~._state.state`: on
    a cached token that one call more was about a twentieth of the whole (0.07-0.09
    of 1.6-1.9 us, in-process).
    Whatever the lookup misses - no app context, an app without the extension - goes
    to :func:`~._state.state`, which raises Flask's error or says to call ``init_app``.
    """
    ctx = _cv_app.get(None)
    try:
        lifecycle: Lifecycle = ctx.app.extensions[EXTENSION_KEY].lifecycle  # type: ignore[union-attr]
    except (AttributeError, KeyError):
        lifecycle = state().lifecycle
    return lifecycle.get_token(integration, name)


__all__ = ["ZISConnections", "get_token"]
