"""The admin console and the connect popup in a real headless Chromium.

One walk through the example app as its admin: add an OAuth client, connect through the
demo provider's consent page, refresh now, have the provider refuse the refresh token,
reconnect, delete; then ``ZISConnect.open`` on the host's own page, resolved in a popup.
Every console page is checked with axe-core (``tests/support/axe.min.js``, the npm
package ``axe-core``, MPL-2.0) for serious or critical violations, and saved as a
screenshot under ``tests/artifacts/`` (CI keeps that folder as an artifact).

Chromium and chromedriver come from Debian, as in ``test_browser_demo.py``, whose
driver set-up and helpers this reuses; without them the test skips (fails under CI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from .test_browser_demo import _click, _js_errors, _wait, browser, evidence_on_failure  # noqa: F401

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
AXE = Path(__file__).parent / "support" / "axe.min.js"
CONSOLE = "/admin/connections"


def check_page(driver: Any, name: str) -> None:
    """No serious or critical axe-core violation; a screenshot for the record."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))
    # WebDriver scripts are not bound by the page's CSP, so axe runs on the real page.
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    violations = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {resultTypes: ["violations"]}).then(
          r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                             nodes: v.nodes.map(n => n.target.join(" "))}))),
          e => done([{id: "axe-error", impact: "critical", help: String(e), nodes: []}]));
        """
    )
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert bad == [], f"{name}: {json.dumps(bad, indent=2)}"


def _text(driver: Any, css: str) -> str:
    """The element's text; empty while the page is changing (a wait polls again)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _consent(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, "the consent page", lambda d: d.current_url.startswith(f"{base}/provider/oauth/authorize?"))
    _click(driver, By.XPATH, "//button[text()='Approve']")


def test_console_walk_and_popup(demo: tuple[str, Flask], browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, app = demo
    driver = browser
    driver.set_script_timeout(20)
    provider = app.extensions["demo_provider_app"].extensions["demo_provider"]
    st = app.extensions["zis_connections"]
    with evidence_on_failure(driver, tmp_path):
        driver.get(f"{base}/")  # the example app's sign-in: everyone is its admin
        driver.get(f"{base}{CONSOLE}/")
        assert _text(driver, "h1") == "Integrations"
        check_page(driver, "integrations")
        _click(driver, By.LINK_TEXT, "demo")
        _wait(driver, "the integration page", lambda d: "Integration demo" in _text(d, "h1"))

        # An OAuth client for the demo provider, from the form.
        _click(driver, By.LINK_TEXT, "Add an OAuth client")
        _wait(driver, "the client form", lambda d: d.find_elements(By.ID, "provider"))
        check_page(driver, "client-form")
        Select(driver.find_element(By.ID, "provider")).select_by_value("")
        for field, value in {
            "name": "demo-console",
            "client_id": "demo-client",
            "client_secret": "demo-client-secret",
            "default_scopes": "read write",
            "auth_url": f"{base}/provider/oauth/authorize",
            "token_url": f"{base}/provider/oauth/token",
            "revocation_url": f"{base}/provider/oauth/revoke",
        }.items():
            driver.find_element(By.ID, field).send_keys(value)
        _click(driver, By.XPATH, "//button[text()='Create']")
        _wait(driver, "the client to be created", lambda d: "OAuth client created." in d.page_source)

        # Connect through the provider's consent page.
        Select(driver.find_element(By.ID, "connect-client")).select_by_visible_text("demo-console")
        _click(driver, By.XPATH, "//form//button[text()='Connect']")
        _consent(driver, base)
        _wait(driver, "the connection page", lambda d: "Connected: the provider" in d.page_source)
        assert _text(driver, "#status") == "active"
        check_page(driver, "connection")
        conn_url = driver.current_url.split("?")[0]

        _click(driver, By.XPATH, "//button[text()='Refresh now']")
        _wait(driver, "the refresh", lambda d: "Refreshed: a new access token" in d.page_source)
        assert _text(driver, "#status") == "active"

        # The provider refuses the refresh token: a person must connect again.
        with app.app_context():
            conn = st.lifecycle.decrypt(st.lifecycle.find("demo", name="main"))
        provider.revoke(provider.find_refresh_token(conn.refresh_token), access_only=False)
        _click(driver, By.XPATH, "//button[text()='Refresh now']")
        _wait(driver, "needs re-authorization", lambda d: _text(d, "#status") == "needs re-authorization")
        driver.get(f"{base}{CONSOLE}/i/demo")
        listed = _text(driver, "section[aria-labelledby='connections-h'] table")
        assert "main oauth needs re-authorization" in listed
        check_page(driver, "integration")
        driver.get(conn_url)
        _click(driver, By.XPATH, "//button[text()='Reconnect']")
        _consent(driver, base)
        _wait(driver, "reconnected", lambda d: "Connected: the provider" in d.page_source)
        assert _text(driver, "#status") == "active" and driver.current_url.split("?")[0] == conn_url

        _click(driver, By.LINK_TEXT, "Delete…")
        _wait(driver, "the confirmation", lambda d: d.current_url.endswith("/delete"))
        check_page(driver, "connection-delete")
        _click(driver, By.XPATH, "//button[starts-with(text(), 'Delete connection')]")
        _wait(driver, "the deletion", lambda d: "deleted" in _text(d, "h1"))
        assert "Revoked at the provider" in _text(driver, "#revocation")
        check_page(driver, "connection-deleted")

        # An API token, shown once.
        _click(driver, By.LINK_TEXT, "Back to demo")
        _click(driver, By.XPATH, "//button[text()='Issue an API token']")
        _wait(driver, "the issued token", lambda d: d.find_elements(By.ID, "new-token"))
        token = driver.find_element(By.ID, "new-token").get_attribute("value")
        assert token.startswith("zis_")
        check_page(driver, "token-issued")
        _click(driver, By.LINK_TEXT, "Back to demo")
        _wait(driver, "the integration page", lambda d: d.current_url == f"{base}{CONSOLE}/i/demo")
        assert token not in driver.page_source
        _click(driver, By.XPATH, "//button[starts-with(text(), 'Revoke')]")
        _wait(driver, "the revocation", lambda d: "API token revoked." in d.page_source)

        # The host's own page: ZISConnect.open in a popup resolves with the code.
        driver.get(f"{base}/")
        home = driver.current_window_handle
        _click(driver, By.ID, "connect-popup")
        _wait(driver, "the popup", lambda d: len(d.window_handles) == 2)
        driver.switch_to.window(next(h for h in driver.window_handles if h != home))
        _consent(driver, base)
        _wait(driver, "the popup to close", lambda d: len(d.window_handles) == 1)
        driver.switch_to.window(home)
        _wait(driver, "the resolved promise", lambda d: 'Connected "popup"' in _text(d, "#popup-status"))
        code = driver.find_element(By.ID, "popup-status").get_attribute("data-code")
        assert code and len(code) > 16
        with app.app_context():
            assert st.lifecycle.find("demo", name="popup").permission_scope == "read write"
        assert _js_errors(driver) == []
