"""The HTTP API blueprint (prefix ``/api/services/zis``).

Views are thin: parse and authenticate the request, call the flow/lifecycle services,
shape JSON.  Every error raised anywhere under the prefix - including unknown paths,
wrong methods, oversized or malformed bodies and unexpected exceptions - leaves as the
seed's envelope, without a stack trace; the host's own routes keep the host's error
handling.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

import requests
from flask import Blueprint, Response, current_app, jsonify, redirect, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import http_date
from werkzeug.wrappers import Response as WerkzeugResponse

from . import config as cfg
from . import errors as e
from . import validation as v
from .auth import Caller, authenticate, bearer_token
from .clients import build_client, require_client
from .extension import AppState, ZISConnections, state
from .models import ConnectionRecord
from .outbound import OutboundRefused, guarded_session
from .provider import refusal_message
from .serializers import client_json, connection_json, connection_summary_json

log = logging.getLogger("flask_zis_connections")

URL_PREFIX = "/api/services/zis"
#: Endpoints that take no credentials: limited per client address before they run.
_UNAUTHENTICATED_ENDPOINTS = frozenset(
    {"zis.start_redirect", "zis.callback", "zis.token_proxy", "zis.health"}
)
_PROXY_FIELDS = frozenset({"client_id", "client_secret", "code", "grant_type", "redirect_uri", "scope"})

_STATUS_CODES = {
    400: e.CODE_INVALID_REQUEST, 401: e.CODE_UNAUTHORIZED, 403: e.CODE_UNAUTHORIZED,
    404: e.CODE_NOT_FOUND, 405: e.CODE_INVALID_REQUEST, 409: e.CODE_CONFLICT,
    413: e.CODE_INVALID_REQUEST, 415: e.CODE_INVALID_REQUEST, 422: e.CODE_INVALID_VALUE,
    429: e.CODE_TOO_MANY_REQUESTS, 502: e.CODE_PROVIDER_ERROR, 503: e.CODE_STORAGE_UNAVAILABLE,
}
_DEFAULT_DETAIL = {
    400: "Invalid request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 413: "Request body too large", 415: "Unsupported media type",
    429: "Too many requests", 500: "Internal server error",
}


def envelope(status: int, detail: str, code: str | None = None) -> Response:
    resp = jsonify({"errors": [{
        "code": code or _STATUS_CODES.get(status, e.CODE_INTERNAL),
        "detail": detail,
        "status": str(status),
    }]})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def handle_error(exc: Exception) -> Response:
    if isinstance(exc, e.ZISError):
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        return _retry_after(envelope(exc.status, exc.message, exc.code), exc)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        detail = _DEFAULT_DETAIL.get(status, exc.name)
        resp = envelope(status, detail)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            resp.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return _retry_after(resp, exc)
    if type(exc).__module__.split(".")[0] in ("redis", "limits"):
        log.error("Rate-limit storage unavailable: %s", type(exc).__name__)
        return envelope(503, "The rate-limit storage is unavailable (ZIS_RATELIMIT_STORAGE_URI). "
                        "Try again later.", e.CODE_STORAGE_UNAVAILABLE)
    # Log the type and where, not str(exc): third-party messages may echo request data.
    log.error("Unhandled %s in %s %s", type(exc).__name__, request.method, request.path,
              exc_info=exc if current_app.debug else None)
    return envelope(500, "Internal server error. The error was logged; try again.")


def _retry_after(resp: Response, exc: Exception) -> Response:
    """Send ``Retry-After`` when the error knows how long to wait.

    Any error may carry ``retry_after`` (a spent rate limit, a provider that asked for a
    pause; werkzeug's 429 and 503 take one too): seconds, or a ``datetime`` as werkzeug
    allows.  Clients that honour it back off instead of retrying at once.
    """
    wait = getattr(exc, "retry_after", None)
    if isinstance(wait, datetime):
        resp.headers["Retry-After"] = http_date(wait)
    elif isinstance(wait, int | float) and not isinstance(wait, bool):
        resp.headers["Retry-After"] = str(max(0, math.ceil(wait)))
    return resp


def make_blueprint(ext: ZISConnections) -> Blueprint:
    bp = Blueprint("zis", __name__, url_prefix=URL_PREFIX)
    bp.register_error_handler(Exception, handle_error)

    @bp.record
    def _remember_prefix(setup: Any) -> None:
        prefixes = setup.app.extensions.setdefault("zis_connections_prefixes", set())
        prefixes.add((setup.url_prefix or "").rstrip("/"))

    @bp.before_app_request
    def _routing_errors_under_prefix() -> Response | None:
        """Unknown paths and wrong methods under our prefix never reach a blueprint
        handler (routing failed before the blueprint is known), so answer them here."""
        exc = request.routing_exception
        if exc is None or not isinstance(exc, HTTPException):
            return None
        prefixes = current_app.extensions.get("zis_connections_prefixes", ())
        if any(p and (request.path == p or request.path.startswith(p + "/")) for p in prefixes):
            return handle_error(exc)
        return None

    @bp.before_request
    def _limit_body() -> None:
        request.max_content_length = int(current_app.config[cfg.MAX_BODY_BYTES])

    @bp.before_request
    def _limit_unauthenticated() -> None:
        """The endpoints that take no credentials are limited per client address, and
        the token proxy - which cannot tell its callers apart - also globally."""
        if request.endpoint not in _UNAUTHENTICATED_ENDPOINTS:
            return
        limits = st().limits
        if limits is None:
            return
        limits.hit_address()
        if request.endpoint == "zis.token_proxy":
            limits.hit_token_proxy()

    @bp.after_request
    def _private(resp: WerkzeugResponse) -> WerkzeugResponse:
        """Every answer - error pages included - may carry a token, or sit at a URL that
        holds a code or state: never cache it, never leak the URL as a Referer."""
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Referrer-Policy"] = "no-referrer"
        # Nothing here is meant to be framed (RFC 6749 §10.13, RFC 9700 §4.16).
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        return resp

    def st() -> AppState:
        return state()

    def auth(integration: str, *, state_changing: bool | None = None) -> Caller:
        """Authenticate the caller for ``integration``.

        A bearer token is checked first (a stranger learns nothing about names); the
        host's admin loader only ever sees a validated integration name.
        ``state_changing`` marks a GET that changes state (the refresh endpoint) so a
        browser session must pass the same-origin check a write would.
        """
        trusted = own_origins() + list(current_app.config[cfg.TRUSTED_ORIGINS])
        # Failures are charged to the client address (never to a header or path the
        # caller picks), and a spent address is refused before the token lookup.
        limits = st().limits
        try:
            token = bearer_token(request)
            if limits is not None:
                limits.test_address(integration, token)
            caller = authenticate(
                request, integration, st().storage, ext.admin_loader, trusted,
                state_changing=state_changing,
            )
        except (e.Unauthorized, e.Forbidden):
            if limits is not None:
                limits.hit_address(refuse=False)
            raise
        if limits is not None:
            limits.hit_caller(integration, token=token, identity=caller.identity)
        return caller

    def own_origins() -> list[str]:
        """The host's own origin.  With ``ZIS_PUBLIC_URL`` set it is that URL's origin
        only: the ``Host`` header is the caller's to choose and must not widen what
        counts as "own" (redirect targets, CSRF-trusted origins)."""
        public = current_app.config[cfg.PUBLIC_URL]
        return [str(public)] if public else [request.host_url]

    def external(endpoint: str, **values: Any) -> str:
        public = current_app.config[cfg.PUBLIC_URL]
        if public:
            return str(public).rstrip("/") + url_for(endpoint, **values)
        return url_for(endpoint, _external=True, **values)

    def json_body() -> dict[str, Any]:
        if request.mimetype != "application/json":
            raise e.UnsupportedMediaType("Send the body as application/json.")
        body = request.get_json(silent=True)
        if body is None:
            raise e.InvalidRequest("The request body is not valid JSON.")
        return v.json_object(body)

    def lookup(integration: str) -> ConnectionRecord:
        """Exactly one of ?name= / ?uuid= (both allowed only if they agree)."""
        name = request.args.get("name")
        uid = request.args.get("uuid")
        if name is None and uid is None:
            raise e.InvalidRequest("Give the connection's name or uuid as a query parameter.")
        life = st().lifecycle
        if uid is not None:
            rec = life.find(integration, uuid=v.uuid_value(uid))
            if name is not None and rec.name != name:
                raise e.InvalidRequest("name and uuid name different connections; give one.")
            return rec
        return life.find(integration, name=v.connection_name(name))

    def conn_json(rec: ConnectionRecord) -> Response:
        return jsonify(connection_json(st().lifecycle.decrypt(rec), current_app.config[cfg.ACCOUNT_ID]))

    # -- OAuth flow ----------------------------------------------------------------------
    @bp.post("/connections/oauth/start/<integration>")
    def start(integration: str) -> Response:
        caller = auth(integration)
        body = json_body()
        result = st().flows.start(
            integration, body, created_by=caller.identity, own_origins=own_origins(),
            callback_url=external("zis.callback"),
            access_codes_url=external("zis.access_codes", integration=integration),
            start_redirect_url=external("zis.start_redirect"),
            admin_id=caller.identity if caller.via_session else None,
        )
        return jsonify(result)

    @bp.get("/connections/oauth/start_redirect")
    def start_redirect() -> WerkzeugResponse:
        out = st().flows.start_redirect(request.args.get("flow_token"), ext.admin_loader)
        resp = redirect(out.location, code=out.status)
        if out.cookie is not None:
            name, value, max_age = out.cookie
            public = current_app.config[cfg.PUBLIC_URL]
            resp.set_cookie(
                name, value, max_age=max_age, httponly=True, samesite="Lax",
                # Behind a TLS-terminating proxy the request itself looks like http;
                # a public https URL says the browser is on https all the same.
                secure=request.is_secure or str(public or "").startswith("https://"),
                path=url_for("zis.callback"),
            )
        return resp

    @bp.get("/connections/oauth/callback")
    @bp.get("/connections/oauth/callback/<client_uuid>")
    def callback(client_uuid: str | None = None) -> WerkzeugResponse:
        raw_query = request.query_string.decode("utf-8", "replace")
        out = st().flows.callback(request.args, request.cookies, raw_query, path_client_uuid=client_uuid)
        resp = redirect(out.location, code=out.status)
        if out.clear_cookie:
            resp.delete_cookie(out.clear_cookie, path=url_for("zis.callback"))
        return resp

    @bp.get("/connections/oauth/access_codes/<integration>")
    def access_codes(integration: str) -> WerkzeugResponse:
        auth(integration)
        rec, code = st().flows.exchange_code(integration, request.args.get("verification_code"))
        data = connection_json(st().lifecycle.decrypt(rec), current_app.config[cfg.ACCOUNT_ID])
        data["origin_oauth_redirect_url"] = code.origin_oauth_redirect_url
        data["raw_callback_params"] = st().encryptor.decrypt_optional(code.raw_callback_params_enc)
        return jsonify(data)

    @bp.post("/connections/oauth/tokens/<integration>")
    def token_proxy(integration: str) -> Response:
        v.integration_name(integration)
        return _proxy_token(json_body())

    # -- connections -----------------------------------------------------------------------
    @bp.get("/connections/refresh/<integration>")
    def refresh(integration: str) -> Response:
        auth(integration, state_changing=True)
        rec = lookup(integration)
        return conn_json(st().lifecycle.ensure_fresh(rec, force=True))

    @bp.get("/connections/<integration>")
    def show(integration: str) -> Response:
        auth(integration)
        rec = lookup(integration)
        return conn_json(st().lifecycle.ensure_fresh(rec, force=False))

    @bp.delete("/connections/<integration>")
    def delete(integration: str) -> Response:
        auth(integration)
        rec = lookup(integration)
        revoked = st().lifecycle.delete(rec)
        return jsonify({"deleted": True, "uuid": rec.uuid, "revoked": revoked})

    @bp.get("/integrations/<integration>/connections/all")
    def list_connections(integration: str) -> Response:
        auth(integration)
        try:
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise e.InvalidValue("limit", "must be an integer") from None
        if not 1 <= limit <= 500:
            raise e.InvalidValue("limit", "must be between 1 and 500")
        page = st().storage.list_connections(
            integration, limit=limit, cursor=request.args.get("cursor") or None
        )
        links = {"next": external("zis.list_connections", integration=integration,
                                  limit=limit, cursor=page.next_cursor)
                 if page.next_cursor else None}
        return jsonify({
            "connections": [connection_summary_json(r) for r in page.items],
            "meta": {"has_more": page.next_cursor is not None, "after_cursor": page.next_cursor},
            "links": links,
        })

    # -- OAuth clients -------------------------------------------------------------------------
    @bp.get("/connections/oauth/clients/<integration>")
    def list_clients(integration: str) -> Response:
        auth(integration)
        # The service's OAuth Clients API answers {"clients": [...]}.
        return jsonify({"clients": [client_json(c) for c in st().storage.list_clients(integration)]})

    @bp.post("/connections/oauth/clients/<integration>")
    def create_client(integration: str) -> tuple[Response, int]:
        caller = auth(integration)
        s = st()
        client = build_client(
            integration, json_body(), encryptor=s.encryptor,
            allow_insecure=bool(current_app.config[cfg.ALLOW_INSECURE_HTTP]),
            created_by=caller.identity,
        )
        return jsonify(client_json(s.storage.add_client(client))), 201

    @bp.patch("/connections/oauth/clients/<integration>/<uuid>")
    def update_client(integration: str, uuid: str) -> Response:
        auth(integration)
        s = st()
        body = json_body()
        existing = require_client(s.storage, integration, uuid=v.uuid_value(uuid))
        expected = _if_match_version(existing.version)
        client = build_client(
            integration, body, encryptor=s.encryptor, existing=existing,
            allow_insecure=bool(current_app.config[cfg.ALLOW_INSECURE_HTTP]),
            secret_follows_routing=False,
        )
        # Compare-and-swap on the version read above (or the one the caller names in
        # If-Match): of two concurrent edits, the second gets 409 instead of silently
        # undoing the first.
        stored = s.storage.update_client(client, expected_version=expected)
        resp = jsonify(client_json(stored))
        resp.headers["ETag"] = f'"{stored.version}"'
        return resp

    @bp.delete("/connections/oauth/clients/<integration>/<uuid>")
    def delete_client(integration: str, uuid: str) -> Response:
        auth(integration)
        s = st()
        client = require_client(s.storage, integration, uuid=v.uuid_value(uuid))
        s.storage.delete_client(integration, client.uuid)
        return jsonify({"deleted": True, "uuid": client.uuid})

    # -- operations ----------------------------------------------------------------------------
    @bp.get("/health")
    def health() -> tuple[Response, int]:
        from .health import check

        report = check(st())
        return jsonify(report), 200 if report["ok"] else 503

    return bp


def _if_match_version(current: int) -> int:
    """The client version a PATCH may overwrite: ``If-Match: "N"`` when sent (as
    answered in ``ETag`` and the ``version`` field), else the version just read."""
    header = request.headers.get("If-Match")
    if header is None:
        return current
    tag = header.strip().removeprefix("W/").strip('"')
    if not (tag.isascii() and tag.isdigit() and len(tag) <= 18):
        raise e.InvalidRequest('If-Match must be a client version as sent in ETag, e.g. "3".')
    if int(tag) != current:
        raise e.Conflict(
            "The OAuth client was changed since that version was read. Read it again and "
            "re-apply your change."
        )
    return current


def _proxy_token(body: dict[str, Any]) -> Response:
    """Forward the seed's token request to the host's own OAuth token URL."""
    url = current_app.config[cfg.HOST_TOKEN_URL]
    if not url:
        raise e.NotFound("The token proxy is not configured: set ZIS_HOST_TOKEN_URL.")
    v.reject_unknown(body, set(_PROXY_FIELDS))
    form: dict[str, str] = {}
    for key in _PROXY_FIELDS:
        if key in body and body[key] is not None:
            form[key] = v.string(body[key], key, max_len=4096)
    for required in ("grant_type", "client_id"):
        if required not in form:
            raise e.InvalidValue(required, "is required")
    policy = state().lifecycle.outbound
    try:
        with guarded_session(policy) as session:
            upstream = session.post(
                url, data=form, headers={"Accept": "application/json"}, timeout=policy.timeout
            )
    except OutboundRefused as exc:
        raise e.ProviderError(refusal_message("token endpoint (ZIS_HOST_TOKEN_URL)", exc, policy)) from None
    except requests.RequestException:
        raise e.ProviderError("The host token endpoint could not be reached.") from None
    if upstream.status_code >= 500:
        raise e.ProviderError(f"The host token endpoint failed (HTTP {upstream.status_code}).")
    try:
        data = upstream.json()
    except ValueError:
        raise e.ProviderError("The host token endpoint did not answer JSON.") from None
    if upstream.status_code != 200 or not isinstance(data, dict) or "access_token" not in data:
        status = upstream.status_code if upstream.status_code in (400, 401, 403) else 422
        error = data.get("error") if isinstance(data, dict) else None
        detail = {400: "Invalid request", 401: "Unauthorized", 403: "Forbidden"}.get(
            status, "Invalid value"
        )
        if isinstance(error, str) and error.replace("_", "").isalnum() and len(error) < 64:
            detail += f" ({error})"
        return envelope(status, detail)
    return jsonify(data)
