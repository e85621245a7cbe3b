"""The example app's demo in a real headless Chromium: the pages' JavaScript runs.

``test_example_app`` clicks through the demo with ``requests`` and so never executes the
templates' scripts.  Here Selenium drives the Debian ``chromium`` through the Debian
``chromium-driver`` (never a downloaded browser: Selenium Manager is kept out of it with
explicit paths and ``SE_OFFLINE``): the Connect button's ``fetch`` starts the flow, the
browser follows the provider's consent page and the callback, ``/connected``'s script
exchanges the verification code, and the Call button reaches the provider's API.

Without Chromium/chromedriver the tests skip (``apt-get install chromium
chromium-driver``); under ``CI=true`` they fail instead.  On failure a screenshot, the
page source and the browser console are saved under the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
from flask import Flask

from example_app import zis

pytestmark = pytest.mark.browser

INSTALL_HINT = "apt-get install chromium chromium-driver"
WAIT = 10  # seconds for any single browser step
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


def _unavailable(msg: str) -> NoReturn:
    """Skip, or fail under CI=true: CI must run the browser tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the browser tests: {msg}")
    pytest.skip(msg)


def _find(name: str) -> str | None:
    path = f"/usr/bin/{name}"
    return path if os.access(path, os.X_OK) else shutil.which(name)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, quit afterwards."""
    chromium, chromedriver = _find("chromium"), _find("chromedriver")
    if not chromium or not chromedriver:
        _unavailable(f"Chromium and chromedriver are needed for the browser tests: {INSTALL_HINT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is needed for the browser tests: pip install -e '.[test]'")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _console(driver: Any) -> list[dict[str, Any]]:
    return list(driver.get_log("browser"))


@contextmanager
def evidence_on_failure(driver: Any, tmp_path: Path) -> Iterator[None]:
    """On any failure keep a screenshot, the page and the console log under ``tmp_path``."""
    try:
        yield
    except BaseException:
        try:
            driver.save_screenshot(str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(
                f"<!-- {driver.current_url} -->\n{driver.page_source}", encoding="utf-8"
            )
            (tmp_path / "console.json").write_text(json.dumps(_console(driver), indent=2), encoding="utf-8")
            print(f"browser evidence saved in {tmp_path}")
        except Exception as exc:  # the browser itself may be gone
            print(f"could not save browser evidence: {exc!r}")
        raise


def _wait(driver: Any, what: str, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition, message=what)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def _click(driver: Any, by: str, value: str) -> None:
    from selenium.webdriver.support import expected_conditions as ec

    _wait(driver, f"{value} to be clickable", ec.element_to_be_clickable((by, value))).click()


def _to_consent_page(driver: Any, base: str) -> None:
    """Open the demo, press Connect (the page's fetch + redirect) and land on the consent page."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/")
    assert "none yet" in driver.find_element(By.TAG_NAME, "table").text
    _click(driver, By.ID, "connect")
    _wait(
        driver,
        "the provider's consent page",
        lambda d: d.current_url.startswith(f"{base}/provider/oauth/authorize?"),
    )
    _wait(driver, "the Approve button", lambda d: d.find_elements(By.XPATH, "//button[text()='Approve']"))


def _js_errors(driver: Any) -> list[dict[str, Any]]:
    """Uncaught exceptions and the like; failed HTTP loads (favicon, expected 4xx) are not JS errors."""
    return [
        e
        for e in _console(driver)
        if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def test_connect_approve_and_call_api(demo: tuple[str, Flask], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base, app = demo
    driver = browser
    with evidence_on_failure(driver, tmp_path):
        _to_consent_page(driver, base)
        _click(driver, By.XPATH, "//button[text()='Approve']")

        # The callback sends the browser to /connected, whose script exchanges the code.
        _wait(driver, "/connected", lambda d: d.current_url.startswith(f"{base}/connected?"))
        assert "verification_code=" in driver.current_url
        _wait(driver, '#status "Connected."', lambda d: _text(d, "status") == "Connected.")
        shown = json.loads(_wait(driver, "#out to show the connection", lambda d: _text(d, "out")))
        assert shown["name"] == "main"
        assert shown["uuid"] and shown["token_type"].lower() == "bearer"

        # The page shows the connection without its secrets.
        with app.app_context():
            st = app.extensions["zis_connections"]
            conn = st.lifecycle.decrypt(st.lifecycle.find("demo", name="main"))
        assert conn.uuid == shown["uuid"] and conn.access_token and conn.refresh_token
        page = driver.page_source + _text(driver, "out")
        assert "access_token" not in page and "refresh_token" not in page
        assert conn.access_token not in page and conn.refresh_token not in page

        # The code is single-use: a reload says so instead of "Exchanging..." forever.
        driver.refresh()
        _wait(
            driver,
            "#status to report the used code",
            lambda d: "Could not get the connection" in _text(d, "status"),
        )
        assert "unknown, used or expired" in _text(driver, "out")

        # Back to the demo: the connection is listed; the Call button uses get_token().
        _click(driver, By.LINK_TEXT, "Back to the demo")
        _wait(driver, "the demo page", lambda d: d.current_url == f"{base}/")
        assert shown["uuid"] in driver.find_element(By.TAG_NAME, "table").text
        _click(driver, By.ID, "call")
        _wait(
            driver,
            '#out to contain "provider_status": 200',
            lambda d: '"provider_status": 200' in _text(d, "out"),
        )
        called = json.loads(_text(driver, "out"))
        assert called["provider_says"]["user_id"] == "demo-user"
        assert conn.access_token not in driver.page_source
        assert _js_errors(driver) == []


def test_deny_stores_nothing(demo: tuple[str, Flask], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base, app = demo
    driver = browser
    with evidence_on_failure(driver, tmp_path):
        _to_consent_page(driver, base)
        _click(driver, By.XPATH, "//button[text()='Deny']")

        _wait(
            driver,
            "/connected with the provider's error",
            lambda d: d.current_url.startswith(f"{base}/connected?"),
        )
        assert "error=access_denied" in driver.current_url
        assert "verification_code" not in driver.current_url
        _wait(driver, "#status to show access_denied", lambda d: "access_denied" in _text(d, "status"))
        assert "Nothing was stored" in _text(driver, "status")
        assert _text(driver, "out") == ""

        with app.app_context():
            assert list(zis.list_connections("demo")["connections"]) == []
        _click(driver, By.LINK_TEXT, "Back to the demo")
        _wait(driver, "the demo page", lambda d: d.current_url == f"{base}/")
        assert "none yet" in driver.find_element(By.TAG_NAME, "table").text
        # With nothing stored, the Call button shows the host's error (get_token failed).
        _click(driver, By.ID, "call")
        _wait(driver, "#out to show the call's error", lambda d: '"error"' in _text(d, "out"))
        assert "provider_status" not in _text(driver, "out")
        assert _js_errors(driver) == []
