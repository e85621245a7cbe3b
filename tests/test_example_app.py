"""The example app's demo, clicked through over real HTTP as a browser would.

The example serves the host app and its demo provider (mounted at ``/provider``) from one
server; the extension reaches the provider's token endpoint over real HTTP on loopback,
exactly as when a person runs the README's first command.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import requests
from flask import Flask

PREFIX = "/api/services/zis"


def test_demo_walkthrough(demo: tuple[str, Flask]) -> None:
    base, _ = demo
    with requests.Session() as browser:
        page = browser.get(f"{base}/", timeout=5)
        assert page.status_code == 200 and "Connect" in page.text
        # What the page's button does: start with the admin session, same origin.
        started = browser.post(
            f"{base}{PREFIX}/connections/oauth/start/demo",
            timeout=5,
            json={
                "name": "main",
                "oauth_client_name": "demo-provider",
                "origin_oauth_redirect_url": f"{base}/connected",
                "allow_offline_access": True,
            },
            headers={"Origin": base},
        )
        assert started.status_code == 200, started.text
        consent = browser.get(started.json()["redirect_url"], timeout=5)  # follows the 307
        assert consent.status_code == 200 and "Approve" in consent.text
        assert consent.url.startswith(f"{base}/provider/oauth/authorize?")
        back = browser.post(consent.url, data={"confirm": "yes"}, timeout=10)  # callback -> /connected
        assert back.status_code == 200 and urlsplit(back.url).path == "/connected"
        code = parse_qs(urlsplit(back.url).query)["verification_code"][0]
        conn = browser.get(
            f"{base}{PREFIX}/connections/oauth/access_codes/demo",
            params={"verification_code": code},
            timeout=5,
        ).json()
        assert conn["name"] == "main" and conn["refresh_token"]
        called = browser.post(f"{base}/call-api", timeout=10).json()
        assert called["provider_status"] == 200
        assert called["provider_says"]["user_id"] == "demo-user"
        assert "main" in browser.get(f"{base}/", timeout=5).text
