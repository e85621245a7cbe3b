"""Domain values the storage layer speaks.

Every value is a frozen dataclass so a caller can never mutate shared state by
accident (Flask-Dance issue #430).  Fields ending in ``_enc`` hold Fernet ciphertext:
storage never sees a token or secret in clear, so every backend - the in-memory one
included - fails closed on a wrong key in the same way.  :class:`Connection` is the
decrypted view handed to host code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

GrantType = Literal["authorization_code", "client_credentials"]
AuthMethod = Literal["client_secret_basic", "client_secret_post"]
FlowStatus = Literal["pending", "redirected", "consumed"]


def utcnow() -> datetime:
    """The one clock the package reads (tests move it with ``time-machine``)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class OAuthClient:
    """An integration's registration at a third-party provider."""

    uuid: str
    integration: str
    name: str
    client_id: str
    client_secret_enc: str | None
    auth_url: str | None
    token_url: str
    default_scopes: str = ""
    grant_type: GrantType = "authorization_code"
    token_endpoint_auth_method: AuthMethod = "client_secret_basic"
    pkce: bool = True
    issuer: str | None = None
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    offline_access_params: Mapping[str, str] = field(default_factory=dict)
    revocation_url: str | None = None
    #: Send the provider a redirect URI of this client's own
    #: (``.../callback/<uuid>``), the "distinct redirect URIs" mix-up defence of
    #: RFC 9700 section 4.4.2; the provider must have that URI registered.
    per_client_callback: bool = False
    #: Who registered it (an API token id or an admin); set once, like ``created_at``.
    created_by: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    #: Increases on every update; an update may require the version it read (409 if stale).
    version: int = 1

    def replace(self, **changes: Any) -> OAuthClient:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ConnectionRecord:
    """A stored connection, token fields encrypted.

    ``version`` increases on every write; refreshes write with a compare-and-swap on it
    so a slow refresher can never overwrite a newer token.
    """

    uuid: str
    integration: str
    name: str
    oauth_client_uuid: str
    access_token_enc: str
    token_type: str = "bearer"
    refresh_token_enc: str | None = None
    token_response_enc: str | None = None
    token_expiry: datetime | None = None
    permission_scope: str | None = None
    oauth_url_subdomain: str | None = None
    created_by: str | None = None
    grant_type: GrantType = "authorization_code"
    needs_reauth: bool = False
    version: int = 1
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    def replace(self, **changes: Any) -> ConnectionRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Connection:
    """A connection with its tokens decrypted: what host code and the API see."""

    uuid: str
    integration: str
    name: str
    oauth_client_uuid: str
    access_token: str
    token_type: str
    refresh_token: str | None
    oauth_access_token_response_body: str | None
    token_expiry: datetime | None
    permission_scope: str | None
    oauth_url_subdomain: str | None
    created_by: str | None
    grant_type: GrantType
    needs_reauth: bool
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class PendingFlow:
    """Server-side state of an authorization-code flow between start and callback.

    The flow token and the OAuth ``state`` only carry ``id`` (signed); everything else,
    the PKCE verifier above all, stays here.  ``browser_binding_hash`` is set when the
    browser follows ``start_redirect`` and must match at the callback.
    """

    id: str
    integration: str
    oauth_client_uuid: str
    connection_name: str
    origin_oauth_redirect_url: str
    scopes: str
    redirect_uri: str
    oauth_url_subdomain: str | None = None
    allow_offline_access: bool = False
    code_verifier_enc: str | None = None
    created_by: str | None = None
    #: Set when an admin's browser session started the flow: only a browser the host's
    #: admin loader admits as that same admin may open it (``start_redirect``).
    admin_id: str | None = None
    status: FlowStatus = "pending"
    browser_binding_hash: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class VerificationCode:
    """A single-use code the integration exchanges for its new connection."""

    code_hash: str
    integration: str
    connection_uuid: str
    origin_oauth_redirect_url: str
    raw_callback_params_enc: str | None
    expires_at: datetime
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class ApiToken:
    """A bearer token for the HTTP API, bound to one integration; only its hash is kept."""

    id: str
    token_hash: str
    integration: str
    created_at: datetime = field(default_factory=utcnow)
    revoked: bool = False


@dataclass(frozen=True)
class Lease:
    """A held refresh lease: a write conditioned on it lands only while it is held."""

    key: str
    owner: str


@dataclass(frozen=True)
class RefreshBackoff:
    """Consecutive failed refreshes of one connection, kept apart from its row.

    ``retry_at`` is when the next provider call is allowed; until then callers fail
    fast (or get the still-valid token) instead of calling a failing provider again.
    """

    connection_uuid: str
    failures: int
    reason: str
    failed_at: datetime
    retry_at: datetime


@dataclass(frozen=True)
class Page:
    """One page of a cursor-paginated listing."""

    items: list[ConnectionRecord]
    next_cursor: str | None
