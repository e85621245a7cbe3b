"""OAuth clients over HTTP, in the shape of the service's OAuth Clients API.

The views only parse and shape: creating, changing and deleting go through the same
functions as the Python API (:mod:`flask_zis_connections.clients`), so both are held to
the same rules.  Over HTTP, moving where the client secret is sent needs the secret.
"""

from __future__ import annotations

from flask import Response, jsonify

from .. import clients
from .._state import state
from .blueprint import bp
from .helpers import auth, if_match, json_body
from .serializers import client_json


@bp.get("/connections/oauth/clients/<integration>")
def list_clients(integration: str) -> Response:
    auth(integration)
    # The service's OAuth Clients API answers {"clients": [...]}.
    return jsonify({"clients": [client_json(c) for c in state().storage.list_clients(integration)]})


@bp.post("/connections/oauth/clients/<integration>")
def create_client(integration: str) -> tuple[Response, int]:
    caller = auth(integration)
    client = clients.create_client(state(), integration, json_body(), created_by=caller.identity)
    return _with_etag(client_json(client), client.version), 201


@bp.patch("/connections/oauth/clients/<integration>/<uuid>")
def update_client(integration: str, uuid: str) -> Response:
    auth(integration)
    changed = clients.update_client(
        state(), integration, uuid, json_body(), expected_version=if_match(), secret_follows_routing=False
    )
    return _with_etag(client_json(changed), changed.version)


@bp.delete("/connections/oauth/clients/<integration>/<uuid>")
def delete_client(integration: str, uuid: str) -> Response:
    auth(integration)
    deleted = clients.delete_client(state(), integration, uuid)
    return jsonify({"deleted": True, "uuid": deleted.uuid})


def _with_etag(data: dict[str, object], version: int) -> Response:
    resp = jsonify(data)
    resp.headers["ETag"] = f'"{version}"'
    return resp
