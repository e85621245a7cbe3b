"""``GET /health``: whether storage and the encryption keys are usable (200 / 503)."""

from __future__ import annotations

from flask import Response, jsonify

from .._state import state
from ..health import check
from .blueprint import bp


@bp.get("/health")
def health() -> tuple[Response, int]:
    report = check(state())
    return jsonify(report), 200 if report["ok"] else 503
