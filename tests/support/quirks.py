"""Real providers' quirks, taught to the instrumented demo provider.

The demo provider speaks plain RFC 6749. Real providers do not: Slack joins scopes with
commas and wraps its answer in ``{"ok": true, ...}``, Salesforce never says when a token
expires, GitHub's older endpoints answer form-encoded, QuickBooks names the company on the
callback. To run the extension's flows against those shapes for real, a
:class:`Behaviour` sits in :meth:`InstrumentedProviderState.around_request
<tests.support.instrumented_provider.InstrumentedProviderState.around_request>`: it
rewrites what reaches the demo's Authlib server (Slack's comma-joined scope becomes the
space-joined one Authlib reads), refuses what the real provider refuses, adds what the
real provider adds to the authorize redirect, and reshapes the token endpoint's answer.
The OAuth protocol underneath (codes, PKCE, client authentication, rotation) is still the
demo's Authlib server, so a token the extension stores is a token the provider issued.

Pick one with ``provider_factory(BEHAVE_LIKE="slack")`` or ``state.behave_like = "slack"``;
:data:`BEHAVIOURS` lists the names. Each behaviour's docstring says what it changes and
where that comes from. Values a test compares against (Slack's team, the QuickBooks realm)
are module constants here; a few can be changed per provider through its config:
``SLACK_TOKEN_OWNER`` (``"bot"`` or ``"user"``: whose token is the refreshable one),
``SALESFORCE_INSTANCE_URL`` (default: the provider's own URL, so API calls stay local)
and ``QUICKBOOKS_REALM_ID``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import Response, current_app, g, jsonify, request
from werkzeug.datastructures import CombinedMultiDict, ImmutableMultiDict

__all__ = [
    "BEHAVIOURS",
    "GITHUB_REFRESH_TOKEN_LIFETIME",
    "NOTION_WORKSPACE",
    "QUICKBOOKS_REALM_ID",
    "QUICKBOOKS_REFRESH_TOKEN_LIFETIME",
    "REFRESH_TOKEN_DECISION_KEY",
    "SALESFORCE_ID_PATH",
    "SHOPIFY_REFRESH_TOKEN_LIFETIME",
    "SLACK_APP_ID",
    "SLACK_BOT_USER_ID",
    "SLACK_TEAM",
    "SLACK_USER_ID",
    "STANDARD_TOKEN_FIELDS",
    "STRIPE_ACCOUNT",
    "TENANT_ENVIRON_KEY",
    "Behaviour",
    "TokenRequest",
    "make_behaviour",
]

#: Where the provider's tenant-path middleware leaves ``<tenant>`` of ``/t/<tenant>/...``.
TENANT_ENVIRON_KEY = "instrumented_provider.tenant"
#: ``flask.g`` key: whether the token answer being built carries a refresh token.
REFRESH_TOKEN_DECISION_KEY = "quirk_refresh_token_decision"

SLACK_TEAM: Mapping[str, str] = {"id": "T0ACME0001", "name": "Acme Workspace"}
SLACK_USER_ID = "U0ACME0001"
SLACK_BOT_USER_ID = "U0ACMEBOT1"
SLACK_APP_ID = "A0ACME0001"
SALESFORCE_ID_PATH = "/id/00D5g000000ACMEEA0/0055g000000ACMEAA2"
QUICKBOOKS_REALM_ID = "9341452331728146"
#: Intuit's refresh tokens live 100 days; it reports the rest as x_refresh_token_expires_in.
QUICKBOOKS_REFRESH_TOKEN_LIFETIME = 8_726_400
#: GitHub App user tokens: 8 hours, their refresh tokens six months.
GITHUB_REFRESH_TOKEN_LIFETIME = 15_811_200
SHOPIFY_REFRESH_TOKEN_LIFETIME = 7_776_000
NOTION_WORKSPACE: Mapping[str, str] = {
    "workspace_id": "5b8f0c8e-acme-4c8e-9a3b-000000000001",
    "workspace_name": "Acme Notes",
    "bot_id": "0c6f7d2e-acme-4b1c-8f3a-000000000002",
}
STRIPE_ACCOUNT = "acct_1AcmeConnected01"

#: Token form fields every client sends (RFC 6749 §4.1.3, §4.4.2, §6, RFC 7636 §4.5).
STANDARD_TOKEN_FIELDS = frozenset(
    {
        "grant_type",
        "code",
        "redirect_uri",
        "client_id",
        "client_secret",
        "code_verifier",
        "refresh_token",
        "scope",
    }
)


@dataclass
class TokenRequest:
    """What a behaviour knows about the token request it is answering."""

    grant_type: str | None
    form: dict[str, str]
    tenant: str | None
    #: The authorize query the presented code came from (code exchange only).
    authorize_args: dict[str, str] | None = None
    #: The authorize query the refresh token's grant came from (refresh only).
    grant_args: dict[str, str] | None = None


class Behaviour:
    """The plain provider: the demo's answers, unchanged (only tenant paths recorded).

    Subclasses set the class attributes and override :meth:`authorize_problem`,
    :meth:`callback_params`, :meth:`issues_refresh_token`, :meth:`success`,
    :meth:`failure` or :meth:`render`. A behaviour keeps
    a little memory of its own (which authorize query each code came from, which grant
    each refresh token belongs to), because real providers decide on refresh tokens from
    what the authorize request said.
    """

    name: ClassVar[str] = "plain"
    #: How the provider wants the scopes on the authorize URL joined. ``","``: a
    #: space-joined list of several scopes is refused with ``invalid_scope``.
    scope_separator: ClassVar[str] = " "
    #: Authorize parameters the provider insists on (refused with invalid_request).
    required_authorize_params: ClassVar[Mapping[str, str]] = {}
    #: Whether every request must come through ``/t/<tenant>/...`` (a per-account host).
    requires_tenant: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code_args: dict[str, dict[str, str]] = {}
        self._grant_args: dict[str, dict[str, str]] = {}

    # -- the authorize endpoint ---------------------------------------------------------

    def authorize(self, clients: Mapping[str, Any], respond: Callable[[], Response]) -> Response:
        """Answer one authorize request (GET consent page or POST decision)."""
        tenant = request.environ.get(TENANT_ENVIRON_KEY)
        if self.requires_tenant and not tenant:
            return _not_found()
        sent = request.args.to_dict()
        problem = self.authorize_problem(sent)
        if problem is not None:
            return _error_redirect(clients, sent, *problem)
        _replace_args(self.rewrite_authorize_args(dict(sent)))
        response = respond()
        location = response.headers.get("Location")
        if location and response.status_code in (302, 303, 307):
            response.headers["Location"] = self._after_redirect(location, sent, tenant)
        return response

    def authorize_problem(self, args: Mapping[str, str]) -> tuple[str, str] | None:
        """``(error, description)`` when the real provider refuses this authorize query."""
        for key, value in self.required_authorize_params.items():
            if args.get(key) != value:
                return "invalid_request", f"{self.name} requires {key}={value}"
        scope = args.get("scope", "")
        if self.scope_separator == "," and len(scope.split()) > 1:
            return "invalid_scope", f"{self.name} scopes are separated by commas"
        return None

    def rewrite_authorize_args(self, args: dict[str, str]) -> dict[str, str]:
        """The query as the demo's Authlib server must read it."""
        if self.scope_separator != " " and "scope" in args:
            args["scope"] = " ".join(s for s in args["scope"].split(self.scope_separator) if s)
        return args

    def callback_params(self, tenant: str | None) -> dict[str, str]:
        """Extra query parameters on the redirect back to the client (with a code)."""
        return {}

    def _after_redirect(self, location: str, sent: dict[str, str], tenant: str | None) -> str:
        parts = urlsplit(location)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        code = query.get("code")
        if code is None:
            return location
        with self._lock:
            self._code_args[code] = sent
        extra = self.callback_params(tenant)
        if not extra:
            return location
        return urlunsplit(parts._replace(query=urlencode({**query, **extra})))

    # -- the token endpoint -------------------------------------------------------------

    def token(self, answer: Callable[[], Response]) -> Response:
        """Answer one token request; ``answer`` runs the demo endpoint (or a fault)."""
        tenant = request.environ.get(TENANT_ENVIRON_KEY)
        if self.requires_tenant and not tenant:
            return _not_found()
        form = request.form.to_dict()
        call = TokenRequest(grant_type=form.get("grant_type"), form=form, tenant=tenant)
        with self._lock:
            if call.grant_type == "authorization_code":
                call.authorize_args = self._code_args.get(form.get("code", ""))
            elif call.grant_type == "refresh_token":
                call.grant_args = self._grant_args.get(form.get("refresh_token", ""))
        setattr(g, REFRESH_TOKEN_DECISION_KEY, self.issues_refresh_token(call))
        if self.scope_separator != " " and "scope" in form:
            form_for_server = {**form, "scope": " ".join(form["scope"].split(self.scope_separator))}
            _replace_form(form_for_server)
        response = answer()
        data = _json_object(response)
        if data is None:
            return response
        if response.status_code == 200 and "access_token" in data:
            self._remember_grant(call, data)
            body = self.success(call, data)
            return self.render(body, 200, response)
        if "error" in data:
            body, status = self.failure(call, data, response.status_code)
            return self.render(body, status, response)
        return response

    def issues_refresh_token(self, call: TokenRequest) -> bool:
        """Whether this answer carries a (new) refresh token; ``False`` on a refresh keeps
        the presented one alive, as providers that never rotate do."""
        return True

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        """The provider's shape of a successful answer (``data``: the demo's JSON)."""
        return data

    def failure(self, call: TokenRequest, data: dict[str, Any], status: int) -> tuple[dict[str, Any], int]:
        """The provider's shape of an error answer, and its HTTP status."""
        return data, status

    def render(self, body: Mapping[str, Any], status: int, original: Response) -> Response:
        """The answer on the wire: JSON, with the demo's cache headers."""
        response = jsonify(body)
        return _finish(response, status, original)

    def _remember_grant(self, call: TokenRequest, data: Mapping[str, Any]) -> None:
        refresh = data.get("refresh_token")
        if not isinstance(refresh, str):
            return
        origin = call.authorize_args if call.grant_type == "authorization_code" else call.grant_args
        with self._lock:
            self._grant_args[refresh] = dict(origin or {})


class Google(Behaviour):
    """Google: a refresh token only for ``access_type=offline`` with ``prompt=consent``.

    Google gives a refresh token only for offline access, and only on the first consent
    unless ``prompt=consent`` asks again; tests cannot have a "first" consent, so both are
    required here. Refreshing never rotates: the answer has no refresh token and the old
    one stays valid (developers.google.com/identity/protocols/oauth2/web-server).
    """

    name = "google"

    def issues_refresh_token(self, call: TokenRequest) -> bool:
        if call.grant_type == "authorization_code":
            args = call.authorize_args or {}
            return args.get("access_type") == "offline" and args.get("prompt") == "consent"
        return call.grant_type != "refresh_token"


class Slack(Behaviour):
    """Slack's ``oauth.v2.access`` (docs.slack.dev/reference/methods/oauth.v2.access).

    Scopes are comma-joined on the authorize URL (a space-joined list is refused). The
    answer is an envelope ``{"ok": true, ...}`` holding the bot token at the top level
    (``token_type`` ``bot``) and the installing user's token under ``authed_user``
    (``token_type`` ``user``), with the team and app; scopes in it are comma-joined. The
    demo's refreshable token (token rotation on) is the bot's, or the user's when the
    provider's config says ``SLACK_TOKEN_OWNER="user"``; the other token is a long-lived
    one of its own. A refresh answers at the top level, whoever owns the token
    (``OAuthV2TokenRefreshResponse``). Errors are HTTP 200 ``{"ok": false, "error": ...}``
    with Slack's codes (``invalid_code``, ``invalid_refresh_token``, ``invalid_client_id``).
    """

    name = "slack"
    scope_separator = ","
    _ERRORS: ClassVar[Mapping[tuple[str | None, str], str]] = {
        ("authorization_code", "invalid_grant"): "invalid_code",
        ("refresh_token", "invalid_grant"): "invalid_refresh_token",
    }

    @staticmethod
    def owner() -> str:
        owner = current_app.config.get("SLACK_TOKEN_OWNER", "bot")
        if owner not in ("bot", "user"):
            raise ValueError(f"SLACK_TOKEN_OWNER must be 'bot' or 'user', not {owner!r}.")
        return str(owner)

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        owner = self.owner()
        scope = ",".join(str(data.get("scope", "")).split())
        grant: dict[str, Any] = {"access_token": data["access_token"], "token_type": owner, "scope": scope}
        for key in ("refresh_token", "expires_in"):
            if key in data:
                grant[key] = data[key]
        envelope: dict[str, Any] = {
            "ok": True,
            "app_id": SLACK_APP_ID,
            "team": dict(SLACK_TEAM),
            "enterprise": None,
            "is_enterprise_install": False,
        }
        if call.grant_type != "authorization_code":
            bot = {"bot_user_id": SLACK_BOT_USER_ID} if owner == "bot" else {}
            return {**envelope, **grant, **bot}
        if owner == "bot":
            user = {
                "id": SLACK_USER_ID,
                "scope": scope,
                "access_token": f"xoxp-{secrets.token_urlsafe(24)}",
                "token_type": "user",
            }
            return {**envelope, **grant, "bot_user_id": SLACK_BOT_USER_ID, "authed_user": user}
        bot_token = {
            "access_token": f"xoxb-{secrets.token_urlsafe(24)}",
            "token_type": "bot",
            "scope": scope,
            "bot_user_id": SLACK_BOT_USER_ID,
        }
        return {**envelope, **bot_token, "authed_user": {"id": SLACK_USER_ID, **grant}}

    def failure(self, call: TokenRequest, data: dict[str, Any], status: int) -> tuple[dict[str, Any], int]:
        error = str(data["error"])
        if error == "invalid_client":
            error = "invalid_client_id"
        return {"ok": False, "error": self._ERRORS.get((call.grant_type, error), error)}, 200


class Salesforce(Behaviour):
    """Salesforce's web server flow (help.salesforce.com, "OAuth 2.0 Web Server Flow").

    The answer names the org's API host (``instance_url``) and the identity URL (``id``),
    has ``signature`` and ``issued_at``, and never ``expires_in`` (the org's session
    timeout applies). A refresh token comes only when the ``refresh_token`` (or
    ``offline_access``) scope was asked for, and a refresh answer has none: the refresh
    token does not rotate.
    """

    name = "salesforce"

    def issues_refresh_token(self, call: TokenRequest) -> bool:
        if call.grant_type == "authorization_code":
            scopes = (call.authorize_args or {}).get("scope", "").split()
            return "refresh_token" in scopes or "offline_access" in scopes
        return call.grant_type != "refresh_token"

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in data.items() if k != "expires_in"}
        body["instance_url"] = salesforce_instance_url()
        body["id"] = f"https://login.salesforce.com{SALESFORCE_ID_PATH}"
        body["issued_at"] = str(int(time.time() * 1000))
        body["signature"] = secrets.token_urlsafe(32)
        return body


def salesforce_instance_url() -> str:
    """The org's host this provider names; its own URL unless configured."""
    configured = current_app.config.get("SALESFORCE_INSTANCE_URL")
    return str(configured) if configured else request.host_url.rstrip("/")


class Zendesk(Behaviour):
    """Zendesk: one host per account, and token lifetimes only when asked for.

    Every request goes to the account's host (here ``/t/<subdomain>/...``; anything else
    is 404). The answer has ``expires_in`` (and ``refresh_token_expires_in``) only when
    the token request carried them as form fields - code exchange and refresh alike -
    and then echoes the requested lifetimes (developer.zendesk.com, "Using OAuth
    refresh token grant type ... expires_in, refresh_token_expires_in").
    """

    name = "zendesk"
    requires_tenant = True

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in data.items() if k != "expires_in"}
        body["token_type"] = "bearer"
        for key in ("expires_in", "refresh_token_expires_in"):
            requested = call.form.get(key)
            if requested is not None and requested.isdigit():
                body[key] = int(requested)
        return body


class QuickBooks(Behaviour):
    """Intuit QuickBooks Online: the company arrives on the callback as ``realmId``.

    The redirect back carries ``realmId=<company id>`` beside ``code`` and ``state``. The
    answer has ``x_refresh_token_expires_in`` (the refresh token's remaining lifetime)
    and here ``expires_in`` as a numeric string, as some of Intuit's SDK samples show it.
    """

    name = "quickbooks"

    def callback_params(self, tenant: str | None) -> dict[str, str]:
        return {"realmId": str(current_app.config.get("QUICKBOOKS_REALM_ID", QUICKBOOKS_REALM_ID))}

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        body = dict(data)
        body["token_type"] = "bearer"
        if "expires_in" in body:
            body["expires_in"] = str(body["expires_in"])
        if "refresh_token" in body:
            body["x_refresh_token_expires_in"] = QUICKBOOKS_REFRESH_TOKEN_LIFETIME
        return body


class GitHubForm(Behaviour):
    """GitHub's token endpoint without ``Accept: application/json``: form-encoded answers.

    ``access_token=...&scope=repo%2Cgist&token_type=bearer`` (scopes comma-joined), with
    ``expires_in``, ``refresh_token`` and ``refresh_token_expires_in`` for expiring user
    tokens. Errors are HTTP 200 too, form-encoded, with GitHub's codes
    (``bad_verification_code``, ``bad_refresh_token``, ``incorrect_client_credentials``).
    """

    name = "github-form"
    _ERRORS: ClassVar[Mapping[tuple[str | None, str], str]] = {
        ("authorization_code", "invalid_grant"): "bad_verification_code",
        ("refresh_token", "invalid_grant"): "bad_refresh_token",
    }

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in data.items() if k not in ("token_type", "scope")}
        body["scope"] = ",".join(str(data.get("scope", "")).split())
        body["token_type"] = "bearer"
        if "refresh_token" in body:
            body["refresh_token_expires_in"] = GITHUB_REFRESH_TOKEN_LIFETIME
        return body

    def failure(self, call: TokenRequest, data: dict[str, Any], status: int) -> tuple[dict[str, Any], int]:
        error = str(data["error"])
        if error == "invalid_client":
            error = "incorrect_client_credentials"
        return {"error": self._ERRORS.get((call.grant_type, error), error)}, 200

    def render(self, body: Mapping[str, Any], status: int, original: Response) -> Response:
        response = Response(
            urlencode({k: str(v) for k, v in body.items()}), mimetype="application/x-www-form-urlencoded"
        )
        return _finish(response, status, original)


class OfflineAccessScope(Behaviour):
    """A refresh token only when the authorize request asked for ``offline_access``
    (Microsoft identity platform, Xero, Atlassian); refreshes rotate it."""

    name = "offline-access"

    def issues_refresh_token(self, call: TokenRequest) -> bool:
        if call.grant_type == "authorization_code":
            return "offline_access" in (call.authorize_args or {}).get("scope", "").split()
        return True


class Microsoft(OfflineAccessScope):
    """Microsoft identity platform: the tenant is in the path (``/t/<tenant>/...``
    here), ``offline_access`` brings the refresh token, answers add ``ext_expires_in``."""

    name = "microsoft"
    requires_tenant = True

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        body = dict(data)
        if "expires_in" in body:
            body["ext_expires_in"] = body["expires_in"]
        return body


class Xero(OfflineAccessScope):
    """Xero: ``offline_access`` brings the refresh token, which rotates."""

    name = "xero"


class Atlassian(OfflineAccessScope):
    """Atlassian 3LO: the authorize URL must carry ``audience=api.atlassian.com`` and
    ``prompt=consent``; ``offline_access`` brings a rotating refresh token."""

    name = "atlassian"
    required_authorize_params: ClassVar[Mapping[str, str]] = {
        "audience": "api.atlassian.com",
        "prompt": "consent",
    }


class Dropbox(Behaviour):
    """Dropbox: a refresh token only with ``token_access_type=offline``; it never rotates."""

    name = "dropbox"

    def issues_refresh_token(self, call: TokenRequest) -> bool:
        if call.grant_type == "authorization_code":
            return (call.authorize_args or {}).get("token_access_type") == "offline"
        return call.grant_type != "refresh_token"


class Notion(Behaviour):
    """Notion: the authorize URL must say ``owner=user``; the answer names the
    workspace and the integration's bot."""

    name = "notion"
    required_authorize_params: ClassVar[Mapping[str, str]] = {"owner": "user"}

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        return {
            **data,
            **NOTION_WORKSPACE,
            "workspace_icon": None,
            "owner": {"type": "user", "user": {"object": "user", "id": "acme-user"}},
            "duplicated_template_id": None,
        }


class Stripe(Behaviour):
    """Stripe Connect: the answer names the connected account (``stripe_user_id``)."""

    name = "stripe"

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        return {
            **data,
            "stripe_user_id": STRIPE_ACCOUNT,
            "stripe_publishable_key": "pk_test_acme",
            "livemode": False,
        }


class Shopify(Behaviour):
    """Shopify: one host per shop (``/t/<shop>/...`` here), comma-joined scopes, and the
    callback names the shop (``shop=<shop>.myshopify.com``, with ``hmac``, ``host`` and
    ``timestamp``). Expiring offline tokens come with ``refresh_token_expires_in``."""

    name = "shopify"
    scope_separator = ","
    requires_tenant = True

    def callback_params(self, tenant: str | None) -> dict[str, str]:
        return {
            "shop": f"{tenant}.myshopify.com",
            "hmac": secrets.token_hex(32),
            "host": "YWNtZS5teXNob3BpZnkuY29tL2FkbWlu",
            "timestamp": str(int(time.time())),
        }

    def success(self, call: TokenRequest, data: dict[str, Any]) -> dict[str, Any]:
        body = {**data, "scope": ",".join(str(data.get("scope", "")).split())}
        if "refresh_token" in body:
            body["refresh_token_expires_in"] = SHOPIFY_REFRESH_TOKEN_LIFETIME
        return body


class Linear(Behaviour):
    """Linear: comma-joined scopes on the authorize URL."""

    name = "linear"
    scope_separator = ","


#: Every behaviour, by the name ``BEHAVE_LIKE`` takes.
BEHAVIOURS: Mapping[str, type[Behaviour]] = {
    cls.name: cls
    for cls in (
        Behaviour,
        Google,
        Slack,
        Salesforce,
        Zendesk,
        QuickBooks,
        GitHubForm,
        OfflineAccessScope,
        Microsoft,
        Xero,
        Atlassian,
        Dropbox,
        Notion,
        Stripe,
        Shopify,
        Linear,
    )
}


def make_behaviour(name: str) -> Behaviour:
    """A fresh behaviour (with empty memory) called ``name``."""
    try:
        return BEHAVIOURS[name]()
    except KeyError:
        raise ValueError(f"Unknown provider behaviour {name!r}; pick one of {sorted(BEHAVIOURS)}.") from None


# -- request and response plumbing ----------------------------------------------------------


def _replace_args(args: Mapping[str, str]) -> None:
    """Make the demo's Authlib server read ``args`` as this request's query."""
    new = ImmutableMultiDict(list(args.items()))
    request.args = new
    parts = [new] if request.method == "GET" else [new, request.form]
    request.values = CombinedMultiDict(parts)


def _replace_form(form: Mapping[str, str]) -> None:
    new = ImmutableMultiDict(list(form.items()))
    request.form = new
    request.values = CombinedMultiDict([request.args, new])


def _json_object(response: Response) -> dict[str, Any] | None:
    if not response.is_json:
        return None
    data = response.get_json(silent=True)
    return data if isinstance(data, dict) else None


def _finish(response: Response, status: int, original: Response) -> Response:
    response.status_code = status
    for header in ("Cache-Control", "Pragma"):
        if header in original.headers:
            response.headers[header] = original.headers[header]
    return response


def _not_found() -> Response:
    response = jsonify({"error": "not_found", "error_description": "No such account host."})
    response.status_code = 404
    return response


def _error_redirect(
    clients: Mapping[str, Any], args: Mapping[str, str], error: str, description: str
) -> Response:
    """The authorization error redirect (RFC 6749 §4.1.2.1), when the client and its
    redirect URI are known; a 400 page otherwise, as a real provider would."""
    client = clients.get(args.get("client_id", ""))
    redirect_uri = args.get("redirect_uri") or (client.get_default_redirect_uri() if client else None)
    if client is None or not redirect_uri or not client.check_redirect_uri(redirect_uri):
        return Response(f"{error}: {description}", 400, mimetype="text/plain")
    params = {"error": error, "error_description": description}
    if "state" in args:
        params["state"] = args["state"]
    issuer = current_app.config.get("ISSUER")
    if issuer:
        params["iss"] = str(issuer)
    parts = urlsplit(redirect_uri)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    response = Response("", 302)
    response.headers["Location"] = urlunsplit(parts._replace(query=query))
    return response
