"""``GET /connections/oauth/providers``: the preset catalog, for building client forms.

The catalog is public knowledge taken from the providers' own docs (endpoints, how the
secret is sent, quirks), never a credential, so the route takes none; like the other
credential-less routes it is rate limited per client address.
"""

from __future__ import annotations

from flask import Response, jsonify

from ..providers import catalog
from .blueprint import bp


@bp.get("/connections/oauth/providers")
def providers() -> Response:
    presets = sorted(catalog().values(), key=lambda preset: preset.name)
    return jsonify({"providers": [preset.public_json() for preset in presets]})
