"""Examples: the service's API reference's own where it gives one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

START_EXAMPLE: Final = {
    "allow_offline_access": True,
    "grant_type": "authorization_code",
    "name": "my_connection_name",
    "oauth_client_name": "my_oauth_client_name",
    "oauth_client_uuid": "9c81f444-4beb-4ba7-9bcc-6b2d068e7ade",
    "oauth_url_subdomain": "foobar",
    "origin_oauth_redirect_url": "https://client.int/callback",
    "permission_scopes": "read write",
}
TOKEN_EXAMPLE: Final = {
    "client_id": "my_client_id",
    "client_secret": "my_client_secret",
    "code": "LgwEzL8CA3aRA35r5QYfRbjjMa3Iacsk1CvwcRsnM",
    "grant_type": "authorization_code",
    "redirect_uri": "https://client.int/callback",
    "scope": "read write",
}
CONNECTION_EXAMPLE: Final = {
    "access_token": "ps55XW1CbNj_hKnzwJU3yc968SL39yh3C3Okn1fpC-ThYWDqY2_M5w==",
    "created_by": "test_user",
    "integration": "my_integration",
    "name": "my_oauth_connection",
    "oauth_access_token_response_body": '{"access_token":"ps55XW1CbNj_hKnzwJU3yc968SL39yh3C3Okn1fpC"}',
    "oauth_client_uuid": "9c81f444-4beb-4ba7-9bcc-6b2d068e7ade",
    "oauth_url_subdomain": "foobar",
    "permission_scope": "read write",
    "refresh_token": "cs95Xaw_F5PKcxO4fQ9bZKklHKncdkXIc9qGrvktPt2elg==",
    "token_expiry": "2021-10-01T12:44:22Z",
    "token_type": "bearer",
    "uuid": "ac10a230-0c43-45f8-b221-9e085ce90418",
    "zendesk_account_id": 123456,
    "metadata": {},
    "refresh_token_expiry": None,
}
ACCESS_CODES_EXAMPLE: Final = {
    **CONNECTION_EXAMPLE,
    "origin_oauth_redirect_url": "https://client.int/callback",
    "raw_callback_params": "code=aPrx.f3G28C1ueiVxd.Skd2w.u5bioOnuzTNDdT81IaImk7PKmXXHAfVBtYu5rK.Yh.lDL4jsA"
    "&state=CC5j68_SRVA5pSBbDkMq2sa4d36NyibXf12_Hf2POkk",
}
CREDENTIAL_EXAMPLES: Final[Mapping[str, Mapping[str, str]]] = {
    "bearer_token": {"name": "crm_token", "token": "my_token", "allowed_domain": "api.example.com"},
    "basic_auth": {
        "name": "crm_login",
        "username": "my_user",
        "password": "my_password",
        "allowed_domain": "api.example.com",
    },
    "api_key": {
        "name": "crm_key",
        "api_key": "my_api_key",
        "header_name": "X-Api-Key",
        "allowed_domain": "api.example.com",
    },
}
