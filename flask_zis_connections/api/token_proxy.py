"""``POST /connections/oauth/tokens/{integration}``: the service's token endpoint, proxied.

The request is relayed to the host's own OAuth token URL (``ZIS_HOST_TOKEN_URL``) with
a fixed set of fields, through the same outbound guard as every provider call (no
redirects, no private destinations unless allowed, one deadline, a size cap).  The
host's endpoint authenticates the ``client_id``/``client_secret`` in the body, so the
route takes no bearer token; it is rate limited per address and globally instead.
"""

from __future__ import annotations

from typing import Any

import requests
from flask import Response, jsonify

from .. import errors as e
from .. import validation as v
from .._state import state
from ..outbound import OutboundRefused, guarded_session
from ..provider_client import refusal_message
from ..signals import timed_call
from .blueprint import bp
from .errors import envelope
from .helpers import json_body

#: The fields the service's token endpoint takes; the refresh grant and the lifetimes a
#: client may ask for included.
_PROXY_FIELDS = frozenset(
    {
        "client_id",
        "client_secret",
        "code",
        "grant_type",
        "redirect_uri",
        "scope",
        "refresh_token",
        "expires_in",
        "refresh_token_expires_in",
    }
)
_NUMERIC_FIELDS = frozenset({"expires_in", "refresh_token_expires_in"})


@bp.post("/connections/oauth/tokens/<integration>")
def token_proxy(integration: str) -> Response:
    v.integration_name(integration)
    return _proxy_token(json_body())


def _proxy_token(body: dict[str, Any]) -> Response:
    st = state()
    url = st.settings.host_token_url
    if not url:
        raise e.NotConfigured("The token endpoint is not available: the host has not set ZIS_HOST_TOKEN_URL.")
    v.reject_unknown(body, set(_PROXY_FIELDS))
    form: dict[str, str] = {}
    for key in sorted(_PROXY_FIELDS):
        if key not in body or body[key] is None:
            continue
        if key in _NUMERIC_FIELDS:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 10 * 365 * 86400:
                raise e.InvalidValue(key, "must be a positive number of seconds")
            form[key] = str(value)
        else:
            form[key] = v.string(body[key], key, max_len=4096)
    for required in ("grant_type", "client_id"):
        if required not in form:
            raise e.InvalidValue(required, "is required")
    policy = st.lifecycle.outbound
    try:
        with guarded_session(policy) as session:
            upstream = timed_call(
                st.lifecycle.app,
                "proxy",
                session.post,
                url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=policy.timeout,
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
        detail = {400: "Invalid request", 401: "Unauthorized", 403: "Forbidden"}.get(status, "Invalid value")
        if isinstance(error, str) and error.replace("_", "").isalnum() and len(error) < 64:
            detail += f" ({error})"
        return envelope(status, detail)
    return jsonify(data)
