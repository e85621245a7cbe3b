"""The admin console: a second, optional blueprint for operating the extension in a browser.

The host registers it where it likes, next to the HTTP API::

    app.register_blueprint(zis.blueprint)
    app.register_blueprint(zis.admin_blueprint, url_prefix="/admin/connections")

Everything is server-rendered (Jinja, its own small CSS, no build step, no CDN) and every
action works without JavaScript.  Only people the host's ``@zis.admin_session_loader``
admits for an integration see or change it.  Where to look:

=====================  ==========================================================
``blueprint.py``       the blueprint, its security headers and error pages
``security.py``        who may act (the admin loader), the CSRF token, origin checks
``views.py``           integrations, OAuth clients, API tokens
``connections.py``     connection pages: status, history, connect, refresh, delete
``popup.py``           the JSON start endpoint and landing page behind ``zis-connect.js``
=====================  ==========================================================
"""

from __future__ import annotations

# Importing the view modules registers their routes on the blueprint.
from . import connections as connections
from . import popup as popup
from . import views as views
from .blueprint import bp
from .security import csrf_token

__all__ = ["bp", "csrf_token"]
