"""The OAuth flow's operations: start, start_redirect, the callbacks, access codes and
the token proxy."""

from __future__ import annotations

from typing import Any

from .builders import (
    AUTH_ERRORS,
    BODY_ERRORS,
    COMMON_ERRORS,
    INTEGRATION,
    json_answer,
    operation,
    path_param,
    query_param,
    redirect_answer,
    string,
)
from .examples import ACCESS_CODES_EXAMPLE, START_EXAMPLE, TOKEN_EXAMPLE


def flow_paths() -> dict[str, dict[str, Any]]:
    return {
        "/connections/oauth/start/{integration}": {
            "post": operation(
                "start",
                "Start OAuth flow",
                "Validates the body, records a pending flow and returns the `start_redirect` URL to "
                "open in the admin's browser. For `client_credentials` the token is fetched at once "
                "and `redirect_url` is the `access_codes` URL with a `verification_code`.",
                tag="OAuth flow",
                parameters=[INTEGRATION],
                body="StartRequest",
                body_example=START_EXAMPLE,
                answers={
                    200: json_answer(
                        "Where to send the browser.",
                        "StartAnswer",
                        {
                            "redirect_url": "https://foobar.zendesk.com/api/services/zis/connections/oauth/"
                            "start_redirect?flow_token=xyz"
                        },
                    )
                },
                errors=(*AUTH_ERRORS, *BODY_ERRORS, 409, 502),
            )
        },
        "/connections/oauth/start_redirect": {
            "get": operation(
                "start_redirect",
                "Start OAuth redirect",
                "Single use: binds the flow to this browser (a cookie) and redirects to the "
                "provider's authorization URL with `state` and PKCE. No credentials: the signed flow "
                "token is the authority.",
                tag="OAuth flow",
                public=True,
                parameters=[
                    query_param(
                        "flow_token",
                        "The token of the `redirect_url` the start answered.",
                        string(examples=["TgtEfGWfduqzwNnkST8jNsr5MnjPnYEt"]),
                        required=True,
                    )
                ],
                answers={307: redirect_answer("To the provider's authorization endpoint.")},
                errors=(400, 403, 404, *COMMON_ERRORS),
            )
        },
        "/connections/oauth/callback": {"get": callback("callback", per_client=False)},
        "/connections/oauth/callback/{client_uuid}": {
            "get": callback("callback_per_client", per_client=True)
        },
        "/connections/oauth/access_codes/{integration}": {
            "get": operation(
                "access_codes",
                "Exchange verification code",
                "The single-use, short-lived verification code of the flow's redirect for the "
                "connection, with `origin_oauth_redirect_url` and `raw_callback_params`. A used, "
                "expired or unknown code is 400.",
                tag="OAuth flow",
                parameters=[
                    query_param(
                        "verification_code",
                        "The verification code returned from the authorization flow.",
                        string(examples=["s8fOrC4oP"]),
                        required=True,
                    ),
                    INTEGRATION,
                ],
                answers={200: json_answer("The connection.", "AccessCodesAnswer", ACCESS_CODES_EXAMPLE)},
                errors=(400, *AUTH_ERRORS),
            )
        },
        "/connections/oauth/tokens/{integration}": {
            "post": operation(
                "token_proxy",
                "OAuth token",
                "A proxy for the host's own OAuth token URL (`ZIS_HOST_TOKEN_URL`): the fields are "
                "relayed as a form and its token JSON answered. The host's endpoint authenticates the "
                "client in the body, so the route takes no bearer token; it is rate limited per "
                "address and globally.",
                tag="OAuth flow",
                public=True,
                parameters=[INTEGRATION],
                body="TokenRequest",
                body_example=TOKEN_EXAMPLE,
                answers={
                    200: json_answer(
                        "The host token endpoint's answer.",
                        "TokenAnswer",
                        {
                            "access_token": "ps55XW1CbNj_hKnzwJU3yc968SL39yh3C3Okn1fpC-ThYWDqY2_M5w==",
                            "scope": "read write",
                            "token_type": "bearer",
                        },
                    )
                },
                errors=(*BODY_ERRORS, 401, 403, 404, *COMMON_ERRORS, 502),
            )
        },
    }


def callback(operation_id: str, *, per_client: bool) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        query_param(name, text, string())
        for name, text in (
            ("code", "The authorization code."),
            ("state", "The OAuth state of the flow."),
            ("iss", "The issuer (RFC 9207), checked when the client has `issuer`."),
            ("error", "The provider's error code; passed on to the origin."),
            ("error_description", "The provider's error text; passed on to the origin."),
        )
    ]
    if per_client:
        params.insert(0, path_param("client_uuid", "The client's uuid (`per_client_callback`).", string()))
    return operation(
        operation_id,
        "OAuth callback" + (" (per client)" if per_client else ""),
        "The provider's redirect target (not called by API clients). Checks the state (signed, "
        "unexpired, single use, same browser, `iss` when known), exchanges the code, stores the "
        "connection and redirects to `origin_oauth_redirect_url` with `verification_code` (and its "
        "alias `verification_token`); a provider `error` is passed on there and nothing is stored. "
        "Other query parameters a client's `metadata_from_callback` names are kept as metadata.",
        tag="OAuth flow",
        public=True,
        parameters=params,
        answers={302: redirect_answer("To the origin, with `verification_code` or `error`.")},
        errors=(400, 403, 404, *COMMON_ERRORS),
        endpoint="callback" if per_client else None,
    )
