"""Who is calling the HTTP API.

Two ways in: a bearer token from :meth:`ZISConnections.issue_access_token`, bound to
one integration and stored only as a hash; or the host's own admin session through
``@zis.admin_session_loader``.  Browser sessions ride on cookies, so state-changing
requests admitted that way must come from the host itself or ``ZIS_TRUSTED_ORIGINS``
(Fetch Metadata, else ``Origin``/``Referer``): a cross-site form cannot start flows,
refresh or delete connections on an admin's behalf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Request

from ..crypto import hash_secret
from ..errors import Forbidden, Unauthorized
from ..storage import Storage
from ..validation import integration_name, origin_of

AdminSessionLoader = Callable[[str], str | None]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``identity`` becomes a connection's ``created_by``."""

    identity: str
    via_session: bool


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Unauthorized: use 'Authorization: Bearer <token>'.")
    return token.strip()


def authenticate(
    request: Request,
    integration: str,
    storage: Storage,
    loader: AdminSessionLoader | None,
    trusted_origins: list[str],
    *,
    state_changing: bool | None = None,
) -> Caller:
    """The caller, or ``Unauthorized``/``Forbidden``.

    ``state_changing`` defaults to "the method is not GET/HEAD/OPTIONS"; a GET that
    changes state passes ``True`` so session callers face the same CSRF check.
    """
    token = bearer_token(request)
    if token is not None:
        # Looked up by its hash: the database compares digests, never the token itself.
        found = storage.get_api_token(hash_secret(token))
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
                check_same_origin(request, trusted_origins)
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
