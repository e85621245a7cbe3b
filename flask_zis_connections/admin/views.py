"""Integrations, their OAuth clients and their API tokens.

Views parse the form, call the same functions as the Python API, and answer a page or a
``303 See Other`` back to a page with a fixed status message (``?msg=``, looked up in
:data:`MESSAGES`, so nothing a link carries is ever shown as text).  Client secrets are
write-only: a form never shows one; an API token is shown once, on the page answering the
``POST`` that issued it.
"""

from __future__ import annotations

from typing import Any

from flask import render_template, request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from .. import clients
from .._state import state
from ..errors import Unauthorized, ZISError
from ..validation import integration_name
from .blueprint import bp
from .security import admin_for, admit, admit_write, csrf_token
from .status import connection_rows, see_other

#: Every status line a redirect may ask a page to show.
MESSAGES = {
    "client-created": "OAuth client created.",
    "client-updated": "OAuth client saved.",
    "client-deleted": "OAuth client and its connections deleted.",
    "token-revoked": "API token revoked.",
    "token-not-found": "No such API token (already revoked?).",
    "connected": "Connected: the provider's tokens are stored.",
    "refreshed": "Refreshed: a new access token is stored.",
}
#: The form fields of an OAuth client; empty ones are left out (the preset's or the
#: stored value stays).
CLIENT_TEXT_FIELDS = ("name", "client_id", "default_scopes", "auth_url", "token_url", "revocation_url")


@bp.app_template_global("zis_admin_csrf_token")
def _csrf_token_global() -> str:
    """The console's CSRF token in any template (the console's macros, a host's page)."""
    return csrf_token()


def page(template: str, **context: Any) -> str:
    """Render a console page with the CSRF token and the ``?msg=`` status line."""
    message = MESSAGES.get(request.args.get("msg", ""))
    return render_template(f"zis_admin/{template}", message=message, **context)


def known_integrations() -> list[str]:
    """Every integration that has an OAuth client or an API token, sorted."""
    storage = state().storage
    found = {c.integration for c in storage.list_clients()}
    found |= {t.integration for t in storage.list_api_tokens()}
    return sorted(found)


@bp.get("/")
def index() -> str | WerkzeugResponse:
    """The integrations this admin may see.  A browser the loader admits for none of
    the stored integrations gets 401; with nothing stored yet there is nothing to hide
    and the page only offers to open an integration by name."""
    found = known_integrations()
    admitted = [name for name in found if admin_for(name) is not None]
    if found and not admitted:
        raise Unauthorized("Unauthorized: sign in as an admin of an integration to use the console.")
    name = request.args.get("integration")
    if name:
        integration_name(name)
        return see_other(url_for(".integration", integration=name))
    return page("index.html", integrations=admitted)


@bp.get("/i/<integration>")
def integration(integration: str) -> str:
    admit(integration)
    storage = state().storage
    return page(
        "integration.html",
        integration=integration,
        clients=storage.list_clients(integration),
        connections=connection_rows(integration),
        tokens=storage.list_api_tokens(integration),
        presets=sorted(state().ext.providers()),
    )


# -- OAuth clients ---------------------------------------------------------------------
def client_form() -> dict[str, Any]:
    """The client fields a form sent; an empty field means "not given"."""
    data: dict[str, Any] = {}
    for field in CLIENT_TEXT_FIELDS:
        value = request.form.get(field, "").strip()
        if value:
            data[field] = value
    secret = request.form.get("client_secret", "")
    if secret:
        data["client_secret"] = secret
    return data


@bp.get("/i/<integration>/clients/new")
def new_client(integration: str) -> str:
    admit(integration)
    return page("client_form.html", integration=integration, client=None, presets=_presets(), error=None)


@bp.post("/i/<integration>/clients/new")
def create_client(integration: str) -> str | WerkzeugResponse | tuple[str, int]:
    admin = admit_write(integration)
    data = client_form()
    provider = request.form.get("provider", "").strip()
    if provider:
        data["provider"] = provider
    try:
        clients.create_client(state(), integration, data, created_by=admin)
    except ZISError as exc:
        if exc.status >= 500:
            raise
        form = page("client_form.html", integration=integration, client=None, presets=_presets(), error=exc)
        return form, exc.status
    return see_other(url_for(".integration", integration=integration, msg="client-created"))


@bp.get("/i/<integration>/clients/<uuid>/edit")
def edit_client(integration: str, uuid: str) -> str:
    admit(integration)
    found = clients.require_client(state().storage, integration, uuid=uuid)
    return page("client_form.html", integration=integration, client=found, presets=(), error=None)


@bp.post("/i/<integration>/clients/<uuid>/edit")
def update_client(integration: str, uuid: str) -> WerkzeugResponse | tuple[str, int]:
    admit_write(integration)
    found = clients.require_client(state().storage, integration, uuid=uuid)
    version = request.form.get("version", "")
    try:
        clients.update_client(
            state(),
            integration,
            uuid,
            client_form(),
            expected_version=int(version) if version.isdigit() else None,
            secret_follows_routing=False,  # as over HTTP: moving a secret needs the secret
        )
    except ZISError as exc:
        if exc.status >= 500:
            raise
        form = page("client_form.html", integration=integration, client=found, presets=(), error=exc)
        return form, exc.status
    return see_other(url_for(".integration", integration=integration, msg="client-updated"))


@bp.get("/i/<integration>/clients/<uuid>/delete")
def confirm_delete_client(integration: str, uuid: str) -> str:
    admit(integration)
    found = clients.require_client(state().storage, integration, uuid=uuid)
    count = sum(1 for row in connection_rows(integration) if row.record.oauth_client_uuid == found.uuid)
    return page("client_delete.html", integration=integration, client=found, connection_count=count)


@bp.post("/i/<integration>/clients/<uuid>/delete")
def delete_client(integration: str, uuid: str) -> WerkzeugResponse:
    admit_write(integration)
    clients.delete_client(state(), integration, uuid)
    return see_other(url_for(".integration", integration=integration, msg="client-deleted"))


def _presets() -> list[tuple[str, str]]:
    return sorted((name, preset.display_name) for name, preset in state().ext.providers().items())


# -- API tokens --------------------------------------------------------------------------
@bp.post("/i/<integration>/tokens")
def issue_token(integration: str) -> str:
    """The one answer that holds the new token: never stored in clear, never shown again."""
    admit_write(integration)
    token = state().ext.issue_access_token(integration)
    return page("token_issued.html", integration=integration, token=token)


@bp.post("/i/<integration>/tokens/<token_id>/revoke")
def revoke_token(integration: str, token_id: str) -> WerkzeugResponse:
    admit_write(integration)
    # Only a token of this integration, by id: the admin of one must not revoke another's.
    mine = any(t.id == token_id for t in state().storage.list_api_tokens(integration))
    revoked = mine and state().ext.revoke_access_token(token_id)
    msg = "token-revoked" if revoked else "token-not-found"
    return see_other(url_for(".integration", integration=integration, msg=msg))
