"""The extension object.

Modelled on Flask-SQLAlchemy: ``ZISConnections(app=None, *, storage=None)``, an
``init_app`` that refuses to run twice on one app, config defaults through
``setdefault``, and all per-app state in ``app.extensions["zis_connections"]`` (never
``self.app``), so app factories and several apps in one process work.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app

from . import config as cfg
from .auth import AdminSessionLoader
from .clients import build_client, require_client, upsert_from_config
from .crypto import Encryptor, hash_secret
from .errors import ConfigurationError, ConnectionNotFound, InvalidRequest
from .flow import FlowService
from .lifecycle import Lifecycle
from .models import ApiToken, Connection, OAuthClient
from .outbound import OutboundPolicy
from .ratelimit import RateLimits
from .storage import MemoryStorage, SQLAlchemyStorage, Storage
from .validation import integration_name

EXTENSION_KEY = "zis_connections"
log = logging.getLogger("flask_zis_connections")


@dataclass
class AppState:
    """Everything the extension keeps for one Flask app."""

    ext: ZISConnections
    storage: Storage
    encryptor: Encryptor
    lifecycle: Lifecycle
    flows: FlowService
    #: The blueprint's rate limits; None when ``ZIS_RATELIMIT`` turns them off.
    limits: RateLimits | None = None


def state(app: Flask | None = None) -> AppState:
    """The extension state of ``app`` (default: ``current_app``)."""
    extensions = app.extensions if app is not None else current_app.extensions
    try:
        found: AppState = extensions[EXTENSION_KEY]
        return found
    except KeyError:
        raise ConfigurationError(
            "flask_zis_connections is not initialised on this app. "
            "Did you call zis.init_app(app)?"
        ) from None


class ZISConnections:
    """OAuth connections for a Flask host application.

    :param app: initialise on this app at once (or call :meth:`init_app` later).
    :param storage: a :class:`~flask_zis_connections.storage.Storage` instance that
        overrides ``ZIS_STORAGE`` for every app this extension is initialised on.
    """

    def __init__(self, app: Flask | None = None, *, storage: Storage | None = None) -> None:
        self._storage_override = storage
        self._admin_loader: AdminSessionLoader | None = None
        from .views import make_blueprint  # views import this module

        self.blueprint: Blueprint = make_blueprint(self)
        if app is not None:
            self.init_app(app)

    # -- set-up -------------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
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
        if conf[cfg.CREATE_TABLES]:
            storage.create_tables()
        encryptor = Encryptor.from_config(
            conf[cfg.ENCRYPTION_KEYS], conf.get("SECRET_KEY"), conf.get("SECRET_KEY_FALLBACKS")
        )
        outbound = outbound_policy(conf)
        lifecycle = Lifecycle(
            app=app, storage=storage, encryptor=encryptor,
            leeway=float(conf[cfg.REFRESH_LEEWAY]), lease_ttl=float(conf[cfg.REFRESH_LEASE_TTL]),
            http_timeout=outbound.timeout, outbound=outbound,
            backoff_max=float(conf[cfg.REFRESH_BACKOFF_MAX]),
        )
        flows = FlowService(
            app=app, storage=storage, encryptor=encryptor,
            flow_max_age=int(conf[cfg.FLOW_TOKEN_MAX_AGE]),
            code_max_age=int(conf[cfg.VERIFICATION_CODE_MAX_AGE]),
            allowed_origins=list(conf[cfg.ALLOWED_REDIRECT_ORIGINS]),
            allow_insecure=bool(conf[cfg.ALLOW_INSECURE_HTTP]),
            outbound=outbound,
            cookie_prefix=str(conf[cfg.FLOW_COOKIE_NAME]),
        )
        app.extensions[EXTENSION_KEY] = AppState(
            ext=self, storage=storage, encryptor=encryptor, lifecycle=lifecycle, flows=flows,
            limits=RateLimits.from_config(conf),
        )
        if conf[cfg.OAUTH_CLIENTS]:
            upsert_from_config(
                storage, encryptor, conf[cfg.OAUTH_CLIENTS],
                allow_insecure=bool(conf[cfg.ALLOW_INSECURE_HTTP]),
            )

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

    def admin_session_loader(self, func: AdminSessionLoader) -> AdminSessionLoader:
        """Register ``func(integration) -> user id | None`` to admit logged-in admins."""
        self._admin_loader = func
        return func

    @property
    def admin_loader(self) -> AdminSessionLoader | None:
        return self._admin_loader

    # -- OAuth clients --------------------------------------------------------------
    def create_oauth_client(
        self, integration: str, *, created_by: str | None = None, **options: Any
    ) -> OAuthClient:
        """Register an OAuth client (see SPEC options); ``Conflict`` on a duplicate name."""
        st = state()
        client = build_client(
            integration, options, encryptor=st.encryptor,
            allow_insecure=bool(current_app.config[cfg.ALLOW_INSECURE_HTTP]),
            created_by=created_by,
        )
        return st.storage.add_client(client)

    def update_oauth_client(self, integration: str, uuid: str, **changes: Any) -> OAuthClient:
        st = state()
        existing = require_client(st.storage, integration, uuid=uuid)
        client = build_client(
            integration, changes, encryptor=st.encryptor, existing=existing,
            allow_insecure=bool(current_app.config[cfg.ALLOW_INSECURE_HTTP]),
        )
        return st.storage.update_client(client)

    def get_oauth_client(
        self, integration: str, *, name: str | None = None, uuid: str | None = None
    ) -> OAuthClient:
        return require_client(state().storage, integration, uuid=uuid, name=name)

    def list_oauth_clients(self, integration: str) -> list[OAuthClient]:
        return state().storage.list_clients(integration_name(integration))

    def delete_oauth_client(self, integration: str, uuid: str) -> None:
        """Delete the client and every connection made with it."""
        st = state()
        if not st.storage.delete_client(integration, uuid):
            require_client(st.storage, integration, uuid=uuid)  # raises the helpful 404

    # -- API tokens -----------------------------------------------------------------
    def issue_access_token(self, integration: str) -> str:
        """A new random bearer token for ``integration``; only its hash is stored."""
        integration_name(integration)
        token = "zis_" + secrets.token_urlsafe(32)
        state().storage.add_api_token(ApiToken(
            id=str(uuidlib.uuid4()), token_hash=hash_secret(token), integration=integration
        ))
        return token

    def revoke_access_token(self, token_or_id: str) -> bool:
        storage = state().storage
        return storage.revoke_api_token(token_or_id) or storage.revoke_api_token(
            hash_secret(token_or_id)
        )

    # -- connections ------------------------------------------------------------------
    def get_token(self, integration: str, name: str) -> str:
        """The access token of a connection, refreshed first when it is due."""
        return state().lifecycle.get_token(integration, name)

    def get_connection(
        self, integration: str, name: str | None = None, *, uuid: str | None = None,
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
        """Delete; revokes at the provider when the client has a ``revocation_url``.

        Returns whether revocation succeeded (None when not attempted)."""
        life = state().lifecycle
        return life.delete(life.find(integration, **_one_of(name, uuid)))

    def list_connections(
        self, integration: str, *, limit: int = 100, cursor: str | None = None
    ) -> Mapping[str, Any]:
        page = state().storage.list_connections(integration, limit=limit, cursor=cursor)
        return {"connections": page.items, "next_cursor": page.next_cursor}


def outbound_policy(conf: Mapping[str, Any]) -> OutboundPolicy:
    """The rules every outbound call follows, from ``ZIS_HTTP_TIMEOUT``,
    ``ZIS_MAX_PROVIDER_RESPONSE_BYTES``, ``ZIS_ALLOW_INSECURE_HTTP`` and
    ``ZIS_ALLOWED_PRIVATE_HOSTS``; a malformed value fails at start-up."""
    timeout = float(conf[cfg.HTTP_TIMEOUT])
    max_bytes = int(conf[cfg.MAX_PROVIDER_RESPONSE_BYTES])
    hosts = conf[cfg.ALLOWED_PRIVATE_HOSTS]
    if isinstance(hosts, str):
        hosts = [h for h in hosts.split(",") if h.strip()]
    if not isinstance(hosts, list | tuple | set | frozenset) or not all(isinstance(h, str) for h in hosts):
        raise ConfigurationError("ZIS_ALLOWED_PRIVATE_HOSTS must be a list of host names or IP addresses.")
    if timeout <= 0 or max_bytes <= 0:
        raise ConfigurationError("ZIS_HTTP_TIMEOUT and ZIS_MAX_PROVIDER_RESPONSE_BYTES must be positive.")
    return OutboundPolicy(
        timeout=timeout, max_response_bytes=max_bytes,
        allow_private=bool(conf[cfg.ALLOW_INSECURE_HTTP]),
        allowed_private_hosts=frozenset(h.strip().lower() for h in hosts),
    )


def _one_of(name: str | None, uuid: str | None) -> dict[str, str]:
    if (name is None) == (uuid is None):
        raise InvalidRequest("Give exactly one of name or uuid.")
    return {"name": name} if name is not None else {"uuid": str(uuid)}


def get_token(integration: str, name: str) -> str:
    """Module-level shortcut for ``current_app``'s extension: the host's hot path."""
    try:
        st: AppState = current_app.extensions[EXTENSION_KEY]
    except KeyError:
        raise ConfigurationError(
            "flask_zis_connections is not initialised on this app. Did you call zis.init_app(app)?"
        ) from None
    return st.lifecycle.get_token(integration, name)


__all__ = ["AppState", "ConnectionNotFound", "ZISConnections", "get_token", "state"]
