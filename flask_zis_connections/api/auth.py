"""Who is calling the HTTP API.

Two ways in: a bearer token from :meth:`ZISConnections.issue_access_token`, bound to
one integration and stored only as a hash; or the host's own admin session through
``@zis.admin_session_loader``.  Browser sessions ride on cookies, so state-changing
requests admitted that way must come from the host itself or ``ZIS_TRUSTED_ORIGINS``
(Fetch Metadata, else ``Origin``/``Referer``): a cross-site form cannot start flows,
refresh or delete connections on an admin's behalf.

A token found valid is trusted for ``ZIS_API_TOKEN_CACHE_TTL`` seconds without reading
the database again (:class:`ApiTokenCache`): a revocation in this process drops every
entry at once, one in another process is seen within that many seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Request

from ..crypto import hash_secret
from ..domain import ApiToken
from ..errors import Forbidden, Unauthorized
from ..forks import fresh_lock_in_child
from ..singleflight import FlightTimeout, SingleFlight
from ..storage import Storage
from ..validation import integration_name, origin_of

AdminSessionLoader = Callable[[str], str | None]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The longest a request waits for another's lookup of the same token before it
#: looks the token up itself.
_LOOKUP_WAIT = 30.0


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``identity`` becomes a connection's ``created_by``."""

    identity: str
    via_session: bool


class ApiTokenCache:
    """Bearer tokens found valid lately: ``token hash -> (ApiToken, until)``, per process.

    Only a token the storage returned is kept - an unknown or revoked one never is, so
    every guess still costs a lookup and is charged to the client address as before.
    An entry is trusted until ``ttl`` seconds (monotonic clock) after the moment its
    lookup *started*: a revocation committed in another process after that lookup is
    therefore honoured here at most ``ttl`` seconds after it was committed.
    :meth:`clear` (any revocation in this process) drops everything at once and moves
    :attr:`generation`, so a lookup that was in flight meanwhile is not kept.  At most
    ``size`` entries: tokens are few, and a full map drops its oldest entry.

    The requests of a burst that arrive after an entry lapsed (any pause longer than
    ``ttl``) find it missing together: one of them per process reads the token and
    the others wait for that read (:class:`~flask_zis_connections.singleflight.SingleFlight`)
    instead of each taking a pooled connection for the same row.  A revocation here
    moves the generation, and with it the flight later callers join.
    """

    def __init__(self, ttl: float, size: int = 1024, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = float(ttl)
        self.size = size
        self.clock = clock
        self.generation = 0
        self._entries: dict[str, tuple[ApiToken, float]] = {}
        self._lock = threading.Lock()
        self._lookups: SingleFlight[ApiToken | None] = SingleFlight()
        fresh_lock_in_child(self)

    @classmethod
    def for_ttl(cls, ttl: float) -> ApiTokenCache | None:
        """The cache for ``ZIS_API_TOKEN_CACHE_TTL``, or None when it is 0."""
        return cls(ttl) if ttl > 0 else None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_hash: str) -> ApiToken | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if self.clock() >= entry[1]:
            with self._lock:
                if self._entries.get(token_hash) is entry:
                    del self._entries[token_hash]
            return None
        return entry[0]

    def lookup(self, storage: Storage, token_hash: str) -> ApiToken | None:
        """The valid token with this hash: from the cache, else from ``storage`` (and
        then kept, when it was found and nothing was revoked during the lookup)."""
        found = self.get(token_hash)
        if found is not None:
            return found
        generation = self.generation
        try:
            found, _ = self._lookups.run(
                f"{generation}:{token_hash}",
                lambda: self._read(storage, token_hash, generation),
                _LOOKUP_WAIT,
            )
        except FlightTimeout:
            found = storage.get_api_token(token_hash)
        return found

    def _read(self, storage: Storage, token_hash: str, generation: int) -> ApiToken | None:
        """Read the token (one caller per hash and generation at a time) and keep it
        when it is valid and nothing was revoked here meanwhile."""
        started = self.clock()
        found = storage.get_api_token(token_hash)
        if found is not None and not found.revoked:
            with self._lock:
                if generation == self.generation:
                    if len(self._entries) >= self.size and token_hash not in self._entries:
                        del self._entries[next(iter(self._entries))]
                    self._entries[token_hash] = (found, started + self.ttl)
        return found

    def clear(self) -> None:
        """Forget every token (a token was revoked in this process)."""
        with self._lock:
            self.generation += 1
            self._entries.clear()


def bearer_token(request: Request) -> str | None:
    """The request's bearer token, None without an ``Authorization`` header.  Read
    from the WSGI environ (where ``request.headers`` looks it up too), without
    building the header view."""
    header: str | None = request.environ.get("HTTP_AUTHORIZATION")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Unauthorized: use 'Authorization: Bearer <token>'.")
    return token.strip()


def authenticate(
    request: Request,
    token: str | None,
    integration: str,
    storage: Storage,
    loader: AdminSessionLoader | None,
    trusted_origins: Callable[[], list[str]],
    *,
    state_changing: bool | None = None,
    tokens: ApiTokenCache | None = None,
) -> Caller:
    """The caller, or ``Unauthorized``/``Forbidden``.

    ``state_changing`` defaults to "the method is not GET/HEAD/OPTIONS"; a GET that
    changes state passes ``True`` so session callers face the same CSRF check.
    ``trusted_origins`` is only called for a session caller that changes state (a
    bearer token needs no origin).  ``token``: the request's bearer token
    (:func:`bearer_token`); ``tokens``: the app's cache of valid tokens.
    """
    if token is not None:
        # Looked up by its hash: the database compares digests, never the token itself.
        token_hash = hash_secret(token)
        found = storage.get_api_token(token_hash) if tokens is None else tokens.lookup(storage, token_hash)
        if found is None:
            raise Unauthorized(
                "Unauthorized: the bearer token is unknown or revoked. Issue one with "
                "`flask zis tokens issue INTEGRATION`."
            )
        if found.integration != integration:
            raise Forbidden("Forbidden: this token belongs to another integration.")
        return Caller(identity=f"api-token:{found.id}", via_session=False)
    if loader is not None:
        # The host's callback gets a name that passed validation, never raw path text.
        integration_name(integration)
        user = loader(integration)
        if user:
            if state_changing is None:
                state_changing = request.method not in SAFE_METHODS
            if state_changing:
                check_same_origin(request, trusted_origins())
            return Caller(identity=str(user), via_session=True)
    raise Unauthorized("Unauthorized: send 'Authorization: Bearer <token>'.")


def check_same_origin(request: Request, trusted_origins: list[str]) -> None:
    """CSRF defence for cookie-authenticated requests that change state.

    Following OWASP's CSRF cheat sheet: a browser that sends Fetch Metadata and says
    ``Sec-Fetch-Site: same-origin`` is believed (a page cannot forge that header);
    otherwise the ``Origin`` (or, lacking it, the ``Referer``) must be one of the
    trusted origins - the host's own and ``ZIS_TRUSTED_ORIGINS``.  The origins
    allowed as OAuth redirect targets are deliberately *not* trusted here: being a
    place the browser may be sent back to says nothing about who may act as an admin.
    """
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return
    sent = request.headers.get("Origin") or request.headers.get("Referer")
    origin = origin_of(sent) if sent else None
    trusted = {o for o in (origin_of(t) for t in trusted_origins) if o}
    if origin is None or origin not in trusted:
        raise Forbidden(
            "Forbidden: a browser-session request that changes state must come from the "
            "host's own origin or ZIS_TRUSTED_ORIGINS."
        )
