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
from typing import Any, Literal, NamedTuple

GrantType = Literal["authorization_code", "client_credentials"]
AuthMethod = Literal["client_secret_basic", "client_secret_post"]
FlowStatus = Literal["pending", "redirected", "consumed"]
#: ``oauth`` connections come from an OAuth flow; the others hold a credential an admin
#: entered (the service's Connections API): a bearer token, a user name and password, or
#: an API key sent in a header of the admin's choice.
ConnectionType = Literal["oauth", "bearer_token", "basic_auth", "api_key"]
CONNECTION_TYPES: tuple[ConnectionType, ...] = ("oauth", "bearer_token", "basic_auth", "api_key")
#: The types created from a stored credential rather than an OAuth flow.
CREDENTIAL_TYPES: tuple[ConnectionType, ...] = ("bearer_token", "basic_auth", "api_key")


def utcnow() -> datetime:
    """The one clock the package reads (tests move it with ``time-machine``)."""
    return datetime.now(UTC)


#: The fields of a token answer that :class:`ProviderQuirks.token_response_fields` may move.
TOKEN_ANSWER_FIELDS = (
    "access_token",
    "token_type",
    "refresh_token",
    "expires_in",
    "refresh_token_expires_in",
    "scope",
)


@dataclass(frozen=True)
class ProviderQuirks:
    """How one provider departs from plain RFC 6749, as a preset or the host declares it.

    Real providers differ in small ways that each break a naive client: scopes joined by
    commas, extra form fields on the code exchange or the refresh, no ``expires_in``,
    the token nested in the answer, errors answered as HTTP 200, values a later API call
    needs (an instance URL, a tenant id) in the token answer or on the callback.  Each is
    an option here, so one generic client handles them all.
    """

    #: The preset these options came from (``provider=`` at creation), if any.
    provider: str | None = None
    scope_separator: str = " "
    #: Scopes added when a flow asks for offline access (e.g. ``offline_access``).
    offline_scopes: str = ""
    #: Extra form fields on the code exchange, and on refresh.
    token_params: Mapping[str, str] = field(default_factory=dict)
    refresh_params: Mapping[str, str] = field(default_factory=dict)
    #: Seconds to assume when an answer has a refresh token but no ``expires_in``.
    default_token_lifetime: int | None = None
    #: Where the connection's credentials may be sent by ``zis.session``.
    api_base_url: str | None = None
    allowed_domains: tuple[str, ...] = ()
    #: Where a value sits in the token answer when not at the top level under its
    #: RFC 6749 name: ``{"access_token": "authed_user.access_token"}``.
    token_response_fields: Mapping[str, str] = field(default_factory=dict)
    #: An answer whose field of this name is ``false`` is an error (``{"ok": false}``).
    ok_field: str | None = None
    #: Dotted paths in the token answer, and callback query parameters, kept as metadata.
    metadata_from_token: tuple[str, ...] = ()
    metadata_from_callback: tuple[str, ...] = ()
    #: The provider's own error codes for "this refresh token or grant is dead" (Slack's
    #: ``invalid_refresh_token``, GitHub's ``bad_refresh_token``), on top of RFC 6749's
    #: ``invalid_grant``: they mark the connection as needing re-authorization.
    reauth_errors: tuple[str, ...] = ()
    #: The header ``zis.session`` sends the access token in, when the API does not take
    #: ``Authorization: Bearer`` (Shopify: ``X-Shopify-Access-Token``).
    api_token_header: str | None = None
    #: Seconds to assume a new refresh token lives when the answer does not say (Xero's
    #: expire after 60 days unused), so ``refresh-due`` can keep it alive.
    default_refresh_token_lifetime: int | None = None

    def replace(self, **changes: Any) -> ProviderQuirks:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Only what differs from the defaults, as plain JSON values (stable on disk)."""
        defaults = ProviderQuirks()
        out: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value == getattr(defaults, spec.name):
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[spec.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProviderQuirks:
        known = {spec.name for spec in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known
        }
        return cls(**values)


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
    quirks: ProviderQuirks = field(default_factory=ProviderQuirks)

    def replace(self, **changes: Any) -> OAuthClient:
        return dataclasses.replace(self, **changes)


class TokenRead(NamedTuple):
    """The columns ``get_token`` (and the HTTP API's show) need while a token is fresh,
    as the database holds them.

    Times stay epoch milliseconds (no datetime is built on the hot path); anything
    beyond a fresh OAuth token - a due one, a credential type - reads the whole
    :class:`ConnectionRecord`.
    """

    type: str
    access_token_enc: str
    token_expiry_ms: int | None
    updated_at_ms: int
    needs_reauth: bool
    #: With ``version``, and the ciphertext above, names the row's state: every write
    #: moves the version, and a uuid used again comes with new ciphertexts.
    uuid: str
    version: int


@dataclass(frozen=True)
class ConnectionRecord:
    """A stored connection, token fields encrypted.

    ``version`` increases on every write; refreshes write with a compare-and-swap on it
    so a slow refresher can never overwrite a newer token.

    Every type lives in the same table, so one unique (integration, name) holds across
    types and one keyset lists them together.  An ``oauth`` connection has an
    ``oauth_client_uuid`` and none of ``allowed_domain``, ``username``, ``header_name``;
    the other types have no client, their secret (the bearer token, the password, the
    API key) in ``access_token_enc`` and the host it may be sent to in ``allowed_domain``.
    """

    uuid: str
    integration: str
    name: str
    oauth_client_uuid: str | None
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
    #: Values a host needs later (an instance URL, a realm id): JSON-able, not secret.
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: When the refresh token itself expires (``refresh_token_expires_in``), if told.
    refresh_token_expiry: datetime | None = None
    type: ConnectionType = "oauth"
    #: The one host (name or IP address, no port) a credential connection is sent to.
    allowed_domain: str | None = None
    #: ``basic_auth``: the user name (not secret); ``api_key``: the header carrying the key.
    username: str | None = None
    header_name: str | None = None

    def replace(self, **changes: Any) -> ConnectionRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Connection:
    """A connection with its tokens decrypted: what host code and the API see.

    ``access_token`` is the secret of every type: the OAuth access token, the bearer
    token, the API key, or the ``basic_auth`` password (also readable as
    :attr:`password`, which is None for the other types).
    """

    uuid: str
    integration: str
    name: str
    oauth_client_uuid: str | None
    #: Secrets stay out of ``repr()``: a host logging a connection must not log them.
    access_token: str = field(repr=False)
    token_type: str
    refresh_token: str | None = field(repr=False)
    oauth_access_token_response_body: str | None = field(repr=False)
    token_expiry: datetime | None
    permission_scope: str | None
    oauth_url_subdomain: str | None
    created_by: str | None
    grant_type: GrantType
    needs_reauth: bool
    version: int
    created_at: datetime
    updated_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    refresh_token_expiry: datetime | None = None
    type: ConnectionType = "oauth"
    allowed_domain: str | None = None
    username: str | None = None
    header_name: str | None = None

    @property
    def password(self) -> str | None:
        """The ``basic_auth`` password; None for the other types."""
        return self.access_token if self.type == "basic_auth" else None


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


class RefreshState(NamedTuple):
    """What a refresher reads once it holds the lease: the row, its back-off and its
    OAuth client (None when there is none, or when it is gone)."""

    record: ConnectionRecord
    backoff: RefreshBackoff | None
    client: OAuthClient | None


ConnectionStatus = Literal["active", "expiring_soon", "refresh_failing", "needs_reauth", "no_expiry"]
#: Every status :func:`connection_status` gives, in the order dashboards list them.
CONNECTION_STATUSES: tuple[ConnectionStatus, ...] = (
    "active",
    "expiring_soon",
    "refresh_failing",
    "needs_reauth",
    "no_expiry",
)


def connection_status(
    record: ConnectionRecord, backoff: RefreshBackoff | None, expiring_before: datetime
) -> ConnectionStatus:
    """What an operator needs to know about a connection, first match wins:
    ``needs_reauth`` (a person must connect again), ``refresh_failing`` (its last
    refreshes failed and it is backing off, ``backoff`` is set), ``no_expiry`` (nothing
    expires: a token without ``expires_in``, or a credential connection),
    ``expiring_soon`` (expires before ``expiring_before``, or has expired), ``active``.

    Storage backends count connections by the same rules
    (:meth:`~flask_zis_connections.storage.Storage.connection_status_counts`).
    """
    if record.needs_reauth:
        return "needs_reauth"
    if backoff is not None:
        return "refresh_failing"
    if record.token_expiry is None:
        return "no_expiry"
    if record.token_expiry < expiring_before:
        return "expiring_soon"
    return "active"


@dataclass(frozen=True)
class Page:
    """One page of a cursor-paginated listing, in insertion order.

    ``next_cursor`` reads the page after this one and ``prev_cursor`` the page before
    it (``before=``); each is None when nothing is stored there, so a caller paging
    either way stops at None.  ``has_more``: more rows lie in the direction paged.
    """

    items: list[ConnectionRecord]
    next_cursor: str | None
    prev_cursor: str | None = None
    has_more: bool = False


@dataclass(frozen=True)
class Event:
    """One entry of an integration's event log: what happened, to what, by whom, when.

    Written after the fact (never inside the operation it records) and never holding a
    secret: ``detail`` is a short JSON object of plain values - a failure's reason,
    whether a revocation worked, the names (not the values) of the fields that changed.
    ``actor`` is who caused it: ``api-token:<id>``, an admin id, ``cli``, or ``system``
    for what the extension did on its own (a refresh on ``get_token``).
    """

    integration: str
    kind: str
    actor: str
    connection_name: str | None = None
    connection_uuid: str | None = None
    oauth_client_uuid: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    #: Given by storage when the event is added: increasing, never reused (the cursor).
    id: int | None = None

    def replace(self, **changes: Any) -> Event:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EventPage:
    """One page of an integration's events, newest first.

    ``next_cursor`` reads the older events after the last one here (None: no more).
    """

    items: list[Event]
    next_cursor: str | None
    has_more: bool = False
