"""The page at `/` of `mtcli serve`, in a real headless Chromium driven by selenium.

Debian's `chromium` and `chromium-driver` (`make test` installs them); selenium's own driver
download cannot work here, so the driver is named. Under CI=true a missing browser fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_helpers import Server, bundle, post_json

pytest.importorskip("fastapi")
__all__ = ["bundle"]  # the fixture, imported
DRIVER = Path("/usr/bin/chromedriver")
TEXT = "A dog runs in the park."


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; skipped where it is missing, except under CI=true."""
    browser_bin = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [n for n, ok in (("selenium", _has_selenium()), (str(DRIVER), DRIVER.exists()),
                               ("chromium", browser_bin)) if not ok]  # fmt: skip
    if missing:
        message = f"headless browser test needs {', '.join(missing)} (make test installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.binary_location = browser_bin
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def _has_selenium() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def test_page_translates_what_the_api_translates(browser, bundle):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    srv = Server(bundle).start()
    try:
        expected = post_json(srv.url + "/translate", {"q": TEXT, "source": "en", "target": "de", "alternatives": 1})[1]
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: Select(d.find_element(By.ID, "pair")).options)
        assert Select(browser.find_element(By.ID, "pair")).first_selected_option.get_attribute("value") == "en:de"
        browser.find_element(By.ID, "source").send_keys(TEXT)
        alternatives = browser.find_element(By.ID, "alternatives")
        alternatives.clear()
        alternatives.send_keys("1")
        browser.find_element(By.ID, "go").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "elapsed"), "ms"))
        assert browser.find_element(By.ID, "translation").text == expected["translatedText"].strip()
        shown = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#alts li")]
        assert shown == [a.strip() for a in expected["alternatives"]]
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        assert srv.stop() == 0
