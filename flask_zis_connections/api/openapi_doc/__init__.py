"""The OpenAPI 3.1 document of the HTTP API, built once from the package's own rules.

Built in Python rather than kept as a JSON file so it cannot drift from the rules it
states: the name patterns come from :mod:`~flask_zis_connections.validation` and
:mod:`~flask_zis_connections.quirks`, the secret limits and mask from
:mod:`~flask_zis_connections.credentials`, the preset names from the catalog, the
error codes from :mod:`~flask_zis_connections.errors`.  :mod:`..openapi` serves it and
compiles the request checks from it; ``tests/test_openapi.py`` holds it to the URL map
and to the fields the code takes and sends.

=======================  ========================================================
``builders.py``          schema shorthands, the error envelope, shared parameters
``bodies.py``            request bodies
``answers.py``           answers, and every ``components/schemas`` entry
``examples.py``          examples (the service's API reference's where it has one)
``flow_paths.py``        the OAuth flow's operations
``resource_paths.py``    connections, clients, catalog, health, this document
=======================  ========================================================
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from .answers import schemas
from .builders import ERROR_CODES, JSON, error_response
from .flow_paths import flow_paths
from .resource_paths import resource_paths

__all__ = ["JSON", "document"]


DESCRIPTION: Final = """\
The Connections API of a hosted integration service, re-implemented by the
`flask-zis-connections` Flask extension: OAuth flows and connections, OAuth clients, and
bearer token, basic auth and API key connections of an *integration* (a name like
`acme_crm`).

**Authentication.** `Authorization: Bearer <token>` with a token the host made for the
integration (`zis.issue_access_token(integration)` or `flask zis tokens issue`): missing or
unknown 401, another integration's 403. A host may also admit its admins through their
browser session (`@zis.admin_session_loader`); how that session is carried (cookie name,
login) is the host's own, so it is not a security scheme of this document. Requests
admitted that way that change state (and the refresh `GET`) must come from the host's own
origin or `ZIS_TRUSTED_ORIGINS` (`Sec-Fetch-Site: same-origin`, else `Origin`/`Referer`).

**Errors.** Every error is `{"errors": [{"code", "detail", "status"}]}`. Codes: `1200`
unauthorized / forbidden (401, 403), `1300` too many requests (429, with `Retry-After`),
`1301` invalid request (400, 405, 413, 415), `1302` not found (404), `1303` invalid value
(422: `detail` is `Invalid value for: <field>. Desc: <what>`; also a connection that needs
re-authorization), `1304` conflict (409), `1305` provider error (502), `1306` storage
unavailable (503), `1307` internal error (500), `1308` not configured (503). Unknown paths
under the prefix are 404 and wrong methods 405 (with `Allow`), in the same envelope.

**Validation.** Requests are checked against this document before anything runs: a field
it does not list is refused (422 naming it), and so is a value of the wrong type, too long
or not matching its pattern.

**Rate limits.** Per integration and caller (`ZIS_RATELIMIT`); per client address for
failed authentications and the routes without credentials.
"""


@functools.cache
def document() -> Mapping[str, Any]:
    """The document (shared, built once: treat it as read-only)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Connections API (flask-zis-connections)",
            "version": "1",
            "description": DESCRIPTION,
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "servers": [{"url": "/api/services/zis", "description": "Where the host registered the blueprint."}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "OAuth flow"},
            {"name": "Connections"},
            {"name": "OAuth clients"},
            {"name": "Operations"},
        ],
        "paths": {**flow_paths(), **resource_paths()},
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token bound to one integration, made by the host "
                    "(`zis.issue_access_token`); stored only as a hash. The host's admin browser "
                    "session is the other way in (see the API's description).",
                }
            },
            "schemas": schemas(),
            "responses": {f"Error{status}": error_response(status) for status in ERROR_CODES},
        },
    }
