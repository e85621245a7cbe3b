"""Example host app: a Flask product using flask-zis-connections the way the README says.

Run it with ``flask --app example_app run`` (see README).  It mounts a small demo OAuth
provider (``example_app.provider``, a real Authlib authorization server) under
``/provider`` so the whole flow can be clicked through on localhost: start a connection,
approve on the provider's consent page, come back with a verification code, then call
the provider's API with ``get_token("demo", "main")``.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from flask import Flask, jsonify, render_template, request, session
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_zis_connections import ZISConnections, ZISError, get_token

from .provider import create_provider_app

zis = ZISConnections()

DEMO_INTEGRATION = "demo"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-client-secret"  # the demo provider's own client, not a secret


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    public = str(
        (config or {}).get("DEMO_PUBLIC_URL") or os.environ.get("DEMO_PUBLIC_URL", "http://127.0.0.1:5000")
    ).rstrip("/")
    app.config.update(
        # A real host keeps SECRET_KEY and ZIS_ENCRYPTION_KEYS in its secret store.
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev-only-not-secret"),
        ZIS_PUBLIC_URL=public,
        ZIS_ALLOW_INSECURE_HTTP=True,  # the demo provider runs on plain http on localhost
        ZIS_OAUTH_CLIENTS={
            DEMO_INTEGRATION: [
                {
                    "name": "demo-provider",
                    "client_id": DEMO_CLIENT_ID,
                    "client_secret": DEMO_CLIENT_SECRET,
                    "auth_url": f"{public}/provider/oauth/authorize",
                    "token_url": f"{public}/provider/oauth/token",
                    "revocation_url": f"{public}/provider/oauth/revoke",
                    "default_scopes": "read write",
                }
            ],
        },
    )
    if os.environ.get("ZIS_DATABASE_URI"):
        app.config["ZIS_DATABASE_URI"] = os.environ["ZIS_DATABASE_URI"]
    if os.environ.get("ZIS_ENCRYPTION_KEYS"):
        app.config["ZIS_ENCRYPTION_KEYS"] = os.environ["ZIS_ENCRYPTION_KEYS"].split(",")
    app.config.update(config or {})

    zis.init_app(app)
    app.register_blueprint(zis.blueprint)
    # The admin console (and the zis-connect.js popup script it serves).
    app.register_blueprint(zis.admin_blueprint, url_prefix="/admin/connections")

    @zis.admin_session_loader
    def load_admin(integration: str) -> str | None:
        """The demo's "logged-in admin"; a real host checks its own user session."""
        admin = session.get("admin")
        return str(admin) if admin else None

    provider_app = create_provider_app(app.config.get("DEMO_PROVIDER_CONFIG"))
    provider_app.extensions["demo_provider"].register_client(
        DEMO_CLIENT_ID,
        DEMO_CLIENT_SECRET,
        redirect_uris=[f"{public}/api/services/zis/connections/oauth/callback"],
        token_endpoint_auth_method="client_secret_basic",
    )
    app.extensions["demo_provider_app"] = provider_app
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/provider": provider_app})  # type: ignore[method-assign]

    @app.get("/")
    def index() -> str:
        session["admin"] = "demo-admin"  # the demo logs everyone in as an admin
        page = zis.list_connections(DEMO_INTEGRATION)
        return render_template("index.html", connections=page["connections"], integration=DEMO_INTEGRATION)

    @app.get("/connected")
    def connected() -> str:
        return render_template(
            "connected.html", integration=DEMO_INTEGRATION, error=request.args.get("error")
        )

    @app.post("/call-api")
    def call_api() -> Any:
        """Host code using the stored connection: the reason the extension exists."""
        try:
            token = get_token(DEMO_INTEGRATION, "main")
        except ZISError as exc:
            return jsonify({"error": exc.message}), 409
        resp = requests.get(
            f"{public}/provider/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        return jsonify({"provider_status": resp.status_code, "provider_says": resp.json()})

    return app
