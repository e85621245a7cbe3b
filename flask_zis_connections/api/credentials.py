"""Credential connections over HTTP: the service's bearer token, basic auth and API key
connections.

``POST /integrations/{integration}/connections/{type}`` creates one (201),
``GET``/``PATCH``/``DELETE .../{type}/{name}`` read, change and delete it.  Answers wrap
the object in its type's key (``{"bearer_token": {...}}``) and never show a secret:
the validation, encryption and name rules live in :mod:`flask_zis_connections.credentials`,
shared with the Python API.
"""

from __future__ import annotations

from flask import Response, jsonify

from .. import credentials
from .._state import state
from ..domain import ConnectionRecord
from .blueprint import bp
from .helpers import auth, json_body
from .serializers import credential_json

#: The path segment naming the type; anything else is not a route (404).
_TYPE = "<any(bearer_token, basic_auth, api_key):connection_type>"


@bp.post(f"/integrations/<integration>/connections/{_TYPE}")
def create_credential(integration: str, connection_type: str) -> tuple[Response, int]:
    caller = auth(integration)
    rec = credentials.create(state(), integration, connection_type, json_body(), created_by=caller.identity)
    return _wrapped(rec), 201


@bp.get(f"/integrations/<integration>/connections/{_TYPE}/<name>")
def show_credential(integration: str, connection_type: str, name: str) -> Response:
    auth(integration)
    return _wrapped(credentials.find(state(), integration, connection_type, name))


@bp.patch(f"/integrations/<integration>/connections/{_TYPE}/<name>")
def update_credential(integration: str, connection_type: str, name: str) -> Response:
    auth(integration)
    body = json_body()
    return _wrapped(
        credentials.update(state(), integration, connection_type, name, body, secret_follows_routing=False)
    )


@bp.delete(f"/integrations/<integration>/connections/{_TYPE}/<name>")
def delete_credential(integration: str, connection_type: str, name: str) -> Response:
    auth(integration)
    rec = credentials.delete(state(), integration, connection_type, name)
    return jsonify({"deleted": True, "type": rec.type, "name": rec.name})


def _wrapped(rec: ConnectionRecord) -> Response:
    return jsonify({rec.type: credential_json(rec)})
