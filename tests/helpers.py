"""Small helpers shared by the API tests."""

from __future__ import annotations

from typing import Any

from werkzeug.test import TestResponse

PREFIX = "/api/services/zis"


def assert_envelope(resp: TestResponse, status: int, code: str, detail_has: str = "") -> dict[str, Any]:
    """The service's error envelope, exactly, with the expected status and code."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert isinstance(body, dict) and set(body) == {"errors"}, body
    assert len(body["errors"]) == 1
    err = body["errors"][0]
    assert set(err) == {"code", "detail", "status"}
    assert err["status"] == str(status)
    assert err["code"] == code
    assert "Traceback" not in err["detail"]
    if detail_has:
        assert detail_has in err["detail"], err["detail"]
    return err  # type: ignore[no-any-return]


def client_body(provider_url: str = "https://acme.test", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "acme",
        "client_id": "cid-123",
        "client_secret": "s3cr3t-client-secret-value",
        "auth_url": f"{provider_url}/oauth/authorize",
        "token_url": f"{provider_url}/oauth/token",
        "default_scopes": "read write",
    }
    body.update(overrides)
    return body
