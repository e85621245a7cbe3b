"""OAuth client registration: one validator for the Python API, REST, config and CLI.

Every entry point funnels through :func:`build_client`, so a client created from
``ZIS_OAUTH_CLIENTS`` is held to the same rules as one POSTed to the API.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import events
from . import validation as v
from .crypto import Encryptor
from .domain import OAuthClient, utcnow
from .errors import InvalidValue, OAuthClientNotFound
from .providers import get_preset
from .quirks import QUIRK_FIELDS, build_quirks
from .storage import Storage
from .storage.base import stale_client

if TYPE_CHECKING:
    from ._state import AppState

#: Fields a client create/update accepts (REST bodies, config dicts, keyword options).
CLIENT_FIELDS = frozenset(
    {
        "name",
        "client_id",
        "client_secret",
        "auth_url",
        "token_url",
        "default_scopes",
        "grant_type",
        "token_endpoint_auth_method",
        "pkce",
        "issuer",
        "authorize_params",
        "offline_access_params",
        "revocation_url",
        "per_client_callback",
        "provider",
        *QUIRK_FIELDS,
    }
)
_OPTIONAL_URLS = ("issuer", "revocation_url")
#: Fields that decide where, or how, the client secret is sent.
SECRET_ROUTING_FIELDS = ("token_url", "revocation_url", "token_endpoint_auth_method")


def build_client(
    integration: str,
    data: Mapping[str, Any],
    *,
    encryptor: Encryptor,
    allow_insecure: bool,
    existing: OAuthClient | None = None,
    created_by: str | None = None,
    secret_follows_routing: bool = True,
) -> OAuthClient:
    """Validate ``data`` (a full create, or a partial update of ``existing``).

    ``secret_follows_routing=False`` (the HTTP API) refuses an update that changes
    where or how the stored secret is sent - ``token_url``, ``revocation_url``,
    ``token_endpoint_auth_method`` - unless the same request brings the secret: a
    holder of an integration's API token must not be able to redirect a secret the
    host registered to a server of their choosing and read it there.  The Python API
    and ``ZIS_OAUTH_CLIENTS`` are the host's own code and keep the secret.
    """
    v.integration_name(integration)
    v.reject_unknown(data, set(CLIENT_FIELDS))
    if data.get("provider") is not None:
        # A preset fills in what the provider's documentation says; anything given
        # explicitly wins (so a test can point a preset at a local server).
        preset = get_preset(v.string(data["provider"], "provider", max_len=64))
        data = {**preset.client_options(), **data, "provider": preset.name}
    base: dict[str, Any] = {}
    if existing is None:
        for required in ("name", "client_id", "token_url"):
            if data.get(required) is None:
                raise InvalidValue(required, "is required")
    else:
        base = {
            "name": existing.name,
            "client_id": existing.client_id,
            "auth_url": existing.auth_url,
            "token_url": existing.token_url,
            "default_scopes": existing.default_scopes,
            "grant_type": existing.grant_type,
            "token_endpoint_auth_method": existing.token_endpoint_auth_method,
            "pkce": existing.pkce,
            "issuer": existing.issuer,
            "authorize_params": existing.authorize_params,
            "offline_access_params": existing.offline_access_params,
            "revocation_url": existing.revocation_url,
            "per_client_callback": existing.per_client_callback,
            **existing.quirks.to_json(),
        }
    merged = {**base, **{k: val for k, val in data.items() if k != "client_secret"}}

    name = v.client_name(merged["name"])
    client_id = v.string(merged["client_id"], "client_id", max_len=512)
    grant_type = v.choice(merged.get("grant_type", "authorization_code"), "grant_type", v.GRANT_TYPES)
    auth_method = v.choice(
        merged.get("token_endpoint_auth_method", "client_secret_basic"),
        "token_endpoint_auth_method",
        v.AUTH_METHODS,
    )
    token_url = v.provider_url(merged["token_url"], "token_url", allow_insecure=allow_insecure)
    auth_url = merged.get("auth_url")
    if auth_url is not None:
        auth_url = v.provider_url(auth_url, "auth_url", allow_insecure=allow_insecure)
    elif grant_type == "authorization_code":
        raise InvalidValue("auth_url", "is required for the authorization_code grant")
    urls: dict[str, str | None] = {}
    for field in _OPTIONAL_URLS:
        value = merged.get(field)
        urls[field] = None if value is None else v.provider_url(value, field, allow_insecure=allow_insecure)
    default_scopes = v.scopes(merged.get("default_scopes", ""), "default_scopes")
    pkce = v.boolean(merged.get("pkce", True), "pkce")
    authorize_params = v.str_mapping(merged.get("authorize_params", {}), "authorize_params")
    offline_params = v.str_mapping(merged.get("offline_access_params", {}), "offline_access_params")
    reserved = {
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "code_challenge",
        "code_challenge_method",
        "scope",
    }
    for field, params in (("authorize_params", authorize_params), ("offline_access_params", offline_params)):
        clash = sorted(reserved & set(params))
        if clash:
            raise InvalidValue(field, f"must not set {clash[0]!r}: the flow sets it itself")

    per_client_callback = v.boolean(merged.get("per_client_callback", False), "per_client_callback")
    quirks = build_quirks(merged, allow_insecure=allow_insecure)
    if existing is not None and not secret_follows_routing and data.get("client_secret") is None:
        new_routing = (token_url, urls["revocation_url"], auth_method)
        old_routing = (existing.token_url, existing.revocation_url, existing.token_endpoint_auth_method)
        moved = [f for f, a, b in zip(SECRET_ROUTING_FIELDS, new_routing, old_routing, strict=True) if a != b]
        if moved and existing.client_secret_enc is not None:
            raise InvalidValue(
                "client_secret",
                f"is required when {', '.join(moved)} changes: the stored secret is never "
                "sent to a new place or in a new way without being given again",
            )

    if "client_secret" in data and data["client_secret"] is not None:
        secret_enc: str | None = encryptor.encrypt(
            v.string(data["client_secret"], "client_secret", max_len=4096)
        )
    elif existing is not None:
        # Re-encrypt what is carried forward: this write may land after a concurrent
        # ``rotate-keys``, which must not find old-key ciphertext put back behind it.
        secret_enc = encryptor.rotate(existing.client_secret_enc) if existing.client_secret_enc else None
    else:
        secret_enc = None  # public client (PKCE) or secret set later

    now = utcnow()
    return OAuthClient(
        uuid=existing.uuid if existing else str(uuidlib.uuid4()),
        integration=integration,
        name=name,
        client_id=client_id,
        client_secret_enc=secret_enc,
        auth_url=auth_url,
        token_url=token_url,
        default_scopes=default_scopes,
        grant_type=grant_type,  # type: ignore[arg-type]
        token_endpoint_auth_method=auth_method,  # type: ignore[arg-type]
        pkce=pkce,
        issuer=urls["issuer"],
        authorize_params=authorize_params,
        offline_access_params=offline_params,
        revocation_url=urls["revocation_url"],
        per_client_callback=per_client_callback,
        quirks=quirks,
        created_by=existing.created_by if existing else created_by,
        created_at=existing.created_at if existing else now,
        updated_at=now,
    )


def create_client(
    st: AppState, integration: str, data: Mapping[str, Any], *, created_by: str | None
) -> OAuthClient:
    """Validate and store a new client (the Python API and the HTTP API both come here)."""
    client = build_client(
        integration,
        data,
        encryptor=st.encryptor,
        allow_insecure=st.settings.allow_insecure_http,
        created_by=created_by,
    )
    stored = st.storage.add_client(client)
    events.record(
        "client.created",
        integration,
        oauth_client_uuid=stored.uuid,
        actor=events.current_actor(created_by),
        name=stored.name,
    )
    return stored


def update_client(
    st: AppState,
    integration: str,
    uuid: str,
    changes: Mapping[str, Any],
    *,
    expected_version: int | None = None,
    secret_follows_routing: bool = True,
) -> OAuthClient:
    """Apply ``changes`` to a stored client with a compare-and-swap on its version.

    ``expected_version`` is the version the caller read (HTTP ``If-Match``); without
    it, the version read here.  Either way, of two concurrent edits the second gets a
    ``Conflict`` instead of silently undoing the first.  See :func:`build_client` for
    ``secret_follows_routing``.
    """
    existing = require_client(st.storage, integration, uuid=v.uuid_value(uuid))
    if expected_version is not None and expected_version != existing.version:
        raise stale_client(existing)
    client = build_client(
        integration,
        changes,
        encryptor=st.encryptor,
        existing=existing,
        allow_insecure=st.settings.allow_insecure_http,
        secret_follows_routing=secret_follows_routing,
    )
    stored = st.storage.update_client(client, expected_version=existing.version)
    secret = "client_secret" if changes.get("client_secret") is not None else None
    fields = events.changed_fields(existing, stored, secret=secret)
    events.record(
        "client.changed", integration, oauth_client_uuid=stored.uuid, name=stored.name, fields=fields
    )
    return stored


def delete_client(st: AppState, integration: str, uuid: str) -> OAuthClient:
    """Delete the client and every connection made with it; returns what was deleted."""
    client = require_client(st.storage, integration, uuid=v.uuid_value(uuid))
    if not st.storage.delete_client(integration, client.uuid):
        raise OAuthClientNotFound(integration, uuid)
    st.lifecycle.changed(integration, None)  # its connections are gone with it
    if st.answers is not None:
        st.answers.drop_client(integration, client.uuid)
    events.record("client.deleted", integration, oauth_client_uuid=client.uuid, name=client.name)
    return client


def upsert_from_config(
    storage: Storage, encryptor: Encryptor, config: Mapping[str, Any], *, allow_insecure: bool
) -> int:
    """Create or update the clients in ``ZIS_OAUTH_CLIENTS``; returns how many changed."""
    if not isinstance(config, Mapping):
        raise InvalidValue("ZIS_OAUTH_CLIENTS", "must map integration names to lists of clients")
    count = 0
    for integration, entries in config.items():
        if not isinstance(entries, list | tuple):
            raise InvalidValue(f"ZIS_OAUTH_CLIENTS[{integration!r}]", "must be a list of dicts")
        for entry in entries:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise InvalidValue(
                    f"ZIS_OAUTH_CLIENTS[{integration!r}]", "each client needs at least a 'name'"
                )
            existing = storage.get_client(integration, name=str(entry["name"]))
            client = build_client(
                integration,
                entry,
                encryptor=encryptor,
                allow_insecure=allow_insecure,
                existing=existing,
            )
            if existing is None:
                storage.add_client(client)
            else:
                storage.update_client(client)
            count += 1
    return count


def require_client(
    storage: Storage, integration: str, *, uuid: str | None = None, name: str | None = None
) -> OAuthClient:
    client = storage.get_client(integration, uuid=uuid, name=name)
    if client is None:
        raise OAuthClientNotFound(integration, uuid or name or "")
    return client
