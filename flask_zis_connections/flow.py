"""The authorization-code flow: start, start_redirect, callback, verification code.

Trust model.  The API caller (an integration's bearer token or an admin session) starts
a flow and gets a ``start_redirect`` URL to open in the admin's browser.  Everything
about the flow is stored server-side; the flow token and the OAuth ``state`` only carry
the flow id, signed with different salts and expiring.  ``start_redirect`` can be
used once and binds the flow to the browser that used it (a random cookie whose hash is
stored), so a state leaked from one browser is useless in another.  The callback
consumes the flow atomically, so two concurrent callbacks make one code exchange.

Over 400 lines on purpose: the three steps share the trust model above and
are checked against each other; the URL and mix-up checks live in ``flow_checks.py``.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask

from . import events, signals
from . import validation as v
from .clients import require_client
from .crypto import Encryptor, hash_secret
from .domain import ConnectionRecord, OAuthClient, PendingFlow, VerificationCode, utcnow
from .errors import Conflict, Forbidden, InvalidRequest, InvalidValue, NotFound, ProviderError, ZISError
from .flow_checks import add_query, check_mix_up, check_redirect_origin, per_client_callback_url
from .outbound import OutboundPolicy
from .provider_client import ProviderClient, create_s256_code_challenge, interpolate
from .signing import FLOW_TOKEN_SALT, STATE_SALT, sign, unsign
from .storage import Storage
from .storage.conflicts import connection_name_conflict
from .token_answer import TokenRequestRejected, TokenResponse

log = logging.getLogger("flask_zis_connections")

START_FIELDS = frozenset(
    {
        "name",
        "oauth_client_name",
        "oauth_client_uuid",
        "origin_oauth_redirect_url",
        "permission_scopes",
        "allow_offline_access",
        "oauth_url_subdomain",
        "grant_type",
    }
)
_OAUTH_ERROR_RE = re.compile(r"[A-Za-z0-9_.-]+")
_AC, _CC = "authorization_code", "client_credentials"


def _failure_reason(exc: ZISError) -> str:
    """What ``signals.flow_failed`` says about a failed client-credentials start."""
    refusal = exc if isinstance(exc, TokenRequestRejected) else exc.__cause__
    if isinstance(refusal, TokenRequestRejected):
        return refusal.error
    if isinstance(exc, Conflict):
        return "connection_name_taken"
    return "provider_error" if isinstance(exc, ProviderError) else "error"


@dataclass(frozen=True)
class Redirect:
    """A redirect the view should answer with (plus the binding cookie, when set)."""

    location: str
    status: int
    cookie: tuple[str, str, int] | None = None
    clear_cookie: str | None = None


def cookie_name(prefix: str, flow_id: str) -> str:
    """One cookie per flow so one browser can run two flows side by side."""
    return f"{prefix}_{hash_secret(flow_id)[:16]}"


@dataclass
class FlowService:
    """Per-app flow operations; views pass in request facts, never the request."""

    app: Flask
    storage: Storage
    encryptor: Encryptor
    flow_max_age: int
    code_max_age: int
    allowed_origins: list[str]
    allow_insecure: bool
    outbound: OutboundPolicy
    cookie_prefix: str
    #: Called with (integration, name) after a connection's tokens were written.
    on_changed: Callable[[str, str], None] | None = None

    # -- origin checks -----------------------------------------------------------
    def check_origin(self, url: object, own_origins: list[str]) -> str:
        """``origin_oauth_redirect_url`` must be absolute, clean and on an allowed origin."""
        return check_redirect_origin(url, [*own_origins, *self.allowed_origins], self.allow_insecure)

    # -- start -------------------------------------------------------------------
    def start(
        self,
        integration: str,
        body: Mapping[str, Any],
        *,
        created_by: str | None,
        own_origins: list[str],
        callback_url: str,
        access_codes_url: str,
        start_redirect_url: str,
        admin_id: str | None = None,
    ) -> dict[str, str]:
        """Record a pending flow; ``admin_id`` binds it to the admin whose browser
        session started it (see :meth:`start_redirect`)."""
        v.integration_name(integration)
        v.reject_unknown(body, set(START_FIELDS))
        # JSON null means "not given" for every field, not just some of them.
        body = {key: val for key, val in body.items() if val is not None}
        if body.get("name") is None:
            raise InvalidValue("name", "is required")
        name = v.connection_name(body["name"])
        held = self.storage.get_connection(integration, name=name)
        if held is not None and held.type != "oauth":  # re-authorizing is for OAuth ones only
            raise connection_name_conflict(held, held.type)
        client_uuid = body.get("oauth_client_uuid")
        client_name = body.get("oauth_client_name")
        if client_uuid is None and client_name is None:
            raise InvalidValue("oauth_client_name", "or oauth_client_uuid is required")
        if client_uuid is not None:
            client = require_client(
                self.storage, integration, uuid=v.uuid_value(client_uuid, "oauth_client_uuid")
            )
            if client_name is not None and v.client_name(client_name, "oauth_client_name") != client.name:
                raise InvalidValue("oauth_client_name", "names a different client than oauth_client_uuid")
        else:
            client = require_client(
                self.storage, integration, name=v.client_name(client_name, "oauth_client_name")
            )
        grant_type = v.choice(body.get("grant_type", client.grant_type), "grant_type", v.GRANT_TYPES)
        scopes = (
            v.scopes(body["permission_scopes"], "permission_scopes")
            if body.get("permission_scopes") is not None
            else client.default_scopes
        )
        offline = v.boolean(body.get("allow_offline_access", False), "allow_offline_access")
        if offline and client.quirks.offline_scopes:
            # Providers that grant a refresh token for a scope (offline_access) rather
            # than a parameter: ask for it along with the rest.
            wanted = scopes.split()
            scopes = " ".join(wanted + [s for s in client.quirks.offline_scopes.split() if s not in wanted])
        subdomain = body.get("oauth_url_subdomain")
        if subdomain is not None:
            subdomain = v.string(subdomain, "oauth_url_subdomain", max_len=63)
            if not v.DNS_LABEL_RE.fullmatch(subdomain):
                raise InvalidValue("oauth_url_subdomain", "must be a single DNS label like 'acme'")
        origin = body.get("origin_oauth_redirect_url")

        if grant_type == "client_credentials":
            origin_url = self.check_origin(origin, own_origins) if origin is not None else ""
            return self._start_client_credentials(
                client, name, scopes, subdomain, origin_url, created_by, access_codes_url
            )

        if client.auth_url is None:
            raise InvalidValue("grant_type", "the OAuth client has no auth_url for authorization_code")
        if origin is None:
            raise InvalidValue("origin_oauth_redirect_url", "is required")
        origin_url = self.check_origin(origin, own_origins)
        # Fail now, not in the browser, when the subdomain is missing or malformed.
        interpolate(client.auth_url, subdomain)
        interpolate(client.token_url, subdomain)
        verifier = secrets.token_urlsafe(48) if client.pkce else None
        if client.per_client_callback:
            callback_url = per_client_callback_url(callback_url, client.uuid)
        now = utcnow()
        flow = PendingFlow(
            id=secrets.token_urlsafe(24),
            integration=integration,
            oauth_client_uuid=client.uuid,
            connection_name=name,
            origin_oauth_redirect_url=origin_url,
            scopes=scopes,
            redirect_uri=callback_url,
            oauth_url_subdomain=subdomain,
            allow_offline_access=offline,
            code_verifier_enc=self.encryptor.encrypt_optional(verifier),
            created_by=created_by,
            admin_id=admin_id,
            created_at=now,
            expires_at=now + timedelta(seconds=self.flow_max_age),
        )
        self.storage.add_flow(flow)
        signals.flow_started.send(self.app, integration=integration, name=name, grant_type=grant_type)
        token = sign(self.app, FLOW_TOKEN_SALT, flow.id)
        return {"redirect_url": add_query(start_redirect_url, {"flow_token": token})}

    def _start_client_credentials(
        self,
        client: OAuthClient,
        name: str,
        scopes: str,
        subdomain: str | None,
        origin_url: str,
        created_by: str | None,
        access_codes_url: str,
    ) -> dict[str, str]:
        provider = self._provider(client, subdomain)
        signals.flow_started.send(self.app, integration=client.integration, name=name, grant_type=_CC)
        try:
            try:
                resp = provider.client_credentials(scopes or None)
            except TokenRequestRejected as exc:
                # The provider refused what the caller asked for (its scope, or the client
                # itself): the caller's error to fix, not a provider failure.
                field = "permission_scopes" if exc.error == "invalid_scope" else "oauth_client_name"
                raise InvalidValue(field, f"the provider refused the token request ({exc.error})") from exc
            rec = self._store(client, name, subdomain, created_by, resp, "client_credentials", scopes)
        except ZISError as exc:
            self._flow_failed(client.integration, name, _CC, _failure_reason(exc))
            raise
        self._flow_completed(rec, _CC)
        code = self._issue_code(rec, origin_url, raw_params="")
        return {"redirect_url": add_query(access_codes_url, {"verification_code": code})}

    # -- start_redirect ------------------------------------------------------------
    def start_redirect(
        self, flow_token: str | None, current_admin: Callable[[str], str | None] | None = None
    ) -> Redirect:
        """Bind the flow to this browser and send it to the provider.

        A flow an admin started through their browser session may only be opened by a
        browser the host's admin loader (``current_admin(integration)``) admits as that
        same admin: a start_redirect URL lured out of an admin, or made by a forged
        request, cannot be opened in anyone else's browser (which would connect the
        other person's account under the admin's name).
        """
        if not flow_token:
            raise InvalidRequest("flow_token is required.")
        flow_id = unsign(self.app, FLOW_TOKEN_SALT, flow_token, self.flow_max_age, "flow token")
        pending = self.storage.get_flow(flow_id)
        if pending is not None and pending.admin_id is not None:
            admitted = current_admin(pending.integration) if current_admin is not None else None
            if admitted is None or not hmac.compare_digest(str(admitted), pending.admin_id):
                raise Forbidden(
                    "Forbidden: this flow was started by an admin session; open it in that "
                    "admin's logged-in browser."
                )
        binding = secrets.token_urlsafe(32)
        flow = self.storage.bind_flow(flow_id, hash_secret(binding), utcnow())
        if flow is None:
            raise InvalidRequest("The flow token was already used or has expired. Start again.")
        client = require_client(self.storage, flow.integration, uuid=flow.oauth_client_uuid)
        assert client.auth_url is not None  # checked at start
        params: dict[str, str] = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": flow.redirect_uri,
        }
        if flow.scopes:
            params["scope"] = client.quirks.scope_separator.join(flow.scopes.split())
        params["state"] = sign(self.app, STATE_SALT, flow.id)
        if flow.code_verifier_enc is not None:
            verifier = self.encryptor.decrypt(flow.code_verifier_enc)
            params["code_challenge"] = create_s256_code_challenge(verifier)
            params["code_challenge_method"] = "S256"
        params.update(client.authorize_params)
        if flow.allow_offline_access:
            params.update(client.offline_access_params)
        location = add_query(interpolate(client.auth_url, flow.oauth_url_subdomain), params)
        return Redirect(
            location, 307, cookie=(cookie_name(self.cookie_prefix, flow.id), binding, self.flow_max_age)
        )

    # -- callback ----------------------------------------------------------------------
    def callback(
        self,
        args: Mapping[str, str],
        cookies: Mapping[str, str],
        raw_query: str,
        path_client_uuid: str | None = None,
    ) -> Redirect:
        state = args.get("state")
        if not state:
            raise InvalidRequest("The callback has no state. Start the OAuth flow again.")
        flow_id = unsign(self.app, STATE_SALT, state, self.flow_max_age, "OAuth state")
        flow = self.storage.get_flow(flow_id)
        if flow is None:
            raise InvalidRequest("The OAuth state is unknown. Start the OAuth flow again.")
        name = cookie_name(self.cookie_prefix, flow.id)
        binding = cookies.get(name)
        if (
            not binding
            or flow.browser_binding_hash is None
            or not hmac.compare_digest(hash_secret(binding), flow.browser_binding_hash)
        ):
            raise InvalidRequest(
                "This callback did not come from the browser that started the flow. "
                "Start the OAuth flow again in this browser."
            )
        client = require_client(self.storage, flow.integration, uuid=flow.oauth_client_uuid)
        check_mix_up(client, flow, args.get("iss"), path_client_uuid)
        consumed = self.storage.consume_flow(flow.id, flow.browser_binding_hash, utcnow())
        if consumed is None:
            raise InvalidRequest("The OAuth state was already used or has expired. Start again.")
        origin = consumed.origin_oauth_redirect_url
        error = args.get("error")
        if error is not None:
            out = {"error": error[:64] if _OAUTH_ERROR_RE.fullmatch(error[:64]) else "invalid_request"}
            if args.get("error_description"):
                out["error_description"] = args["error_description"][:256]
            self._flow_failed(flow.integration, flow.connection_name, _AC, out["error"])
            return Redirect(add_query(origin, out), 302, clear_cookie=name)
        code = args.get("code")
        if not code:
            self._flow_failed(flow.integration, flow.connection_name, _AC, "invalid_callback")
            raise InvalidRequest("The callback has neither code nor error.")
        verifier = self.encryptor.decrypt_optional(consumed.code_verifier_enc)
        try:
            resp = self._provider(client, consumed.oauth_url_subdomain).exchange_code(
                code, redirect_uri=consumed.redirect_uri, code_verifier=verifier
            )
        except TokenRequestRejected as exc:
            self._flow_failed(flow.integration, flow.connection_name, _AC, exc.error)
            return Redirect(
                add_query(origin, {"error": exc.error, "error_description": exc.message}),
                302,
                clear_cookie=name,
            )
        except ProviderError as exc:
            self._flow_failed(flow.integration, flow.connection_name, _AC, "provider_error")
            log.warning("Code exchange for integration %s failed: %s", flow.integration, exc.message)
            return Redirect(
                add_query(origin, {"error": "provider_error", "error_description": exc.message}),
                302,
                clear_cookie=name,
            )
        try:
            rec = self._store(
                client,
                consumed.connection_name,
                consumed.oauth_url_subdomain,
                consumed.created_by,
                resp,
                "authorization_code",
                consumed.scopes,
                callback_args=args,
            )
        except Conflict as exc:  # another type took the name since the start
            self._flow_failed(flow.integration, flow.connection_name, _AC, "connection_name_taken")
            out = {"error": "connection_name_taken", "error_description": exc.message}
            return Redirect(add_query(origin, out), 302, clear_cookie=name)
        self._flow_completed(rec, _AC)
        vcode = self._issue_code(rec, origin, raw_params=raw_query)
        return Redirect(
            add_query(origin, {"verification_code": vcode, "verification_token": vcode}),
            302,
            clear_cookie=name,
        )

    # -- verification code ------------------------------------------------------------
    def exchange_code(self, integration: str, code: str | None) -> tuple[ConnectionRecord, VerificationCode]:
        if not code:
            raise InvalidRequest("verification_code is required.")
        found = self.storage.consume_verification_code(hash_secret(code), integration, utcnow())
        if found is None:
            # The service's API reference answers 400 here, not 404.
            raise InvalidRequest(
                "The verification code is unknown, used or expired. Start the OAuth flow again."
            )
        rec = self.storage.get_connection(integration, uuid=found.connection_uuid)
        if rec is None:
            raise NotFound("The connection for this verification code was deleted.")
        return rec, found

    # -- helpers ------------------------------------------------------------------
    def _flow_failed(self, integration: str, name: str, grant_type: str, reason: str) -> None:
        """A started flow ended without a connection (``reason``: an OAuth error code)."""
        signals.flow_failed.send(
            self.app, integration=integration, name=name, grant_type=grant_type, reason=reason
        )

    def _flow_completed(self, rec: ConnectionRecord, grant_type: str) -> None:
        signals.flow_completed.send(
            self.app, integration=rec.integration, name=rec.name, uuid=rec.uuid, grant_type=grant_type
        )

    def _provider(self, client: OAuthClient, subdomain: str | None) -> ProviderClient:
        return ProviderClient.for_client(client, self.encryptor, self.outbound, subdomain, app=self.app)

    def _store(
        self,
        client: OAuthClient,
        name: str,
        subdomain: str | None,
        created_by: str | None,
        resp: TokenResponse,
        grant_type: str,
        requested_scope: str,
        callback_args: Mapping[str, str] | None = None,
    ) -> ConnectionRecord:
        """Store (or re-authorize) the connection; the granted scope is the response's
        ``scope``, or the requested one when the provider omits it (RFC 6749 §5.1).

        Metadata: what the client's quirks declare, from the token answer and the
        callback's query (QuickBooks' ``realmId``, Shopify's ``shop``), on top of what a
        re-authorized connection already had (values the host set stay).
        """
        now = utcnow()
        new_uuid = str(uuidlib.uuid4())
        previous = self.storage.get_connection(client.integration, name=name)
        metadata = dict(previous.metadata) if previous is not None else {}
        metadata.update(resp.metadata(client.quirks.metadata_from_token))
        for param in client.quirks.metadata_from_callback:
            value = (callback_args or {}).get(param)
            if value is not None and 0 < len(value) <= 256 and value.isprintable():
                metadata[param] = value
        rec = self.storage.upsert_connection(
            ConnectionRecord(
                uuid=new_uuid,
                integration=client.integration,
                name=name,
                oauth_client_uuid=client.uuid,
                **resp.stored_fields(
                    self.encryptor,
                    now,
                    kept_refresh_token=None,
                    kept_scope=requested_scope,
                    default_refresh_lifetime=client.quirks.default_refresh_token_lifetime,
                ),
                oauth_url_subdomain=subdomain,
                created_by=created_by,
                grant_type=grant_type,  # type: ignore[arg-type]
                created_at=now,
                updated_at=now,
                metadata=metadata,
            )
        )
        if self.on_changed is not None:
            self.on_changed(rec.integration, rec.name)
        # The upsert keeps an existing connection's uuid, so a fresh uuid means "created".
        # (Asking first and writing after would race with a concurrent flow for the name.)
        if rec.uuid == new_uuid:
            signals.connection_created.send(
                self.app, integration=rec.integration, name=rec.name, uuid=rec.uuid
            )
        else:
            # Re-authorized: whatever made its refreshes fail is in the past.
            self.storage.clear_refresh_backoff(rec.uuid)
            events.record(
                "connection.reauthorized",
                rec.integration,
                connection=rec,
                actor=events.current_actor(created_by),  # the callback runs in nobody's session
                app=self.app,
            )
        return rec

    def _issue_code(self, rec: ConnectionRecord, origin: str, raw_params: str) -> str:
        code = secrets.token_urlsafe(32)
        now = utcnow()
        self.storage.add_verification_code(
            VerificationCode(
                code_hash=hash_secret(code),
                integration=rec.integration,
                connection_uuid=rec.uuid,
                origin_oauth_redirect_url=origin,
                raw_callback_params_enc=self.encryptor.encrypt(raw_params),
                expires_at=now + timedelta(seconds=self.code_max_age),
                created_at=now,
            )
        )
        return code


__all__ = ["FlowService", "Redirect"]
