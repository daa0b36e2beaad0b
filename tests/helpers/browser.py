"""Headless Chromium for the browser tests: Debian's chromium + chromedriver (never a download).

``require_browser()`` skips a test module when a piece is missing, except under ``EDGESAM_REQUIRE_BROWSER=1``
(set by ``.ci/run`` after installing the browser), where a missing piece fails it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Flags that keep headless Chromium off the network (it would otherwise call Google's hosts at start).
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1000,900",
)


def require_browser(*extra_missing: str) -> None:
    """Skip (or, under ``EDGESAM_REQUIRE_BROWSER=1``, fail) the calling module when a piece is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()] + list(extra_missing)
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install selenium)")
    if not missing:
        return
    if os.environ.get("EDGESAM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"EDGESAM_REQUIRE_BROWSER=1 but the browser test lacks {', '.join(missing)}; "
                    "apt-get install chromium chromium-driver", pytrace=False)
    pytest.skip(f"browser test needs {', '.join(missing)}", allow_module_level=True)


@contextmanager
def chromium(performance_log: bool = False) -> Iterator[Any]:
    """A headless Chromium driven through the system chromedriver, with a fresh profile.

    ``performance_log`` records DevTools network events (``driver.get_log("performance")``).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgesam-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if performance_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_body(browser: Any, attribute: str, predicate: Any, timeout: float = 20.0) -> str:
    """Wait until ``<body attribute>`` satisfies ``predicate``; returns the value."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d: Any) -> str | bool:
        value = d.find_element(By.TAG_NAME, "body").get_attribute(attribute) or ""
        return value if predicate(value) else False

    return WebDriverWait(browser, timeout).until(check)
