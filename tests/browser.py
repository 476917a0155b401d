"""A real headless browser for the report tests: open a local HTML page in Debian's chromium,
read what its console and network reported, and act on it as a user would.

Selenium drives Debian's ``chromedriver``, which ships in the same package version as
``chromium``, so driver and browser always speak the same protocol. What the page did is read
from the browser itself: console errors and uncaught exceptions from chromedriver's browser
log, failed loads and JavaScript dialogs from its performance log (the DevTools
``Network.loadingFailed`` and ``Page.javascriptDialogOpening`` events).

    from tests.browser import browser_available, open_page

    with open_page(tmp_path / "report.html") as page:
        assert page.failed_requests == [] and page.console_errors == []
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

WINDOW_SIZE = "1400,1000"  # a desktop viewport: the report's layout as a reader sees it
LOAD_TIMEOUT_S = 30


def browser_available() -> bool:
    """Whether the system chromium, Debian's chromedriver and selenium are all installed."""
    return (shutil.which("chromium") is not None and shutil.which("chromedriver") is not None
            and importlib.util.find_spec("selenium") is not None)


class Page:
    """One page open in its own headless browser; closing the page quits the browser.

    ``console_errors``, ``failed_requests`` and ``dialogs`` are read from the browser's logs
    each time they are asked for, so they include what a ``click`` or ``select`` caused.
    A dialog (alert, confirm, prompt) never blocks: the driver dismisses it before its next
    command, and it is recorded in ``dialogs``.
    """

    def __init__(self, driver):
        self._driver = driver
        self._console_errors: list[str] = []
        self._failed_requests: list[str] = []
        self._dialogs: list[str] = []
        self._urls: dict[str, str] = {}  # DevTools requestId -> URL: a failure event names only the id

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._driver.quit()

    @property
    def console_errors(self) -> list[str]:
        """Console messages of level error and uncaught exceptions (and CSP violations), as
        chromium words them. Failed loads are left to ``failed_requests``."""
        self._read_logs()
        return list(self._console_errors)

    @property
    def failed_requests(self) -> list[str]:
        """Every resource that failed to load, as ``"URL (reason)"``: a missing file, a blocked
        or unreachable URL, an HTTP error status. A self-contained page has none."""
        self._read_logs()
        return list(self._failed_requests)

    @property
    def dialogs(self) -> list[str]:
        """Every JavaScript dialog the page opened, as ``"alert: message"``."""
        self._read_logs()
        return list(self._dialogs)

    def images(self) -> list[dict]:
        """Every ``<img>`` as ``{"alt", "complete", "naturalWidth", "decoded"}``; decoded means
        complete with a natural width above 0 (a broken image is complete with width 0)."""
        return self.run("""[...document.images].map(img => ({
            alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
            decoded: img.complete && img.naturalWidth > 0}))""")

    def run(self, js: str) -> Any:
        """Evaluate ``js`` (an expression, or statements whose last value is returned) in the
        page and return its JSON value; a promise is awaited. A JavaScript exception raises
        ``JavascriptException``. Top-level ``let``/``const`` may be declared again in a later call.

        It goes through DevTools' ``Runtime.evaluate``, which the page's Content Security
        Policy does not block, unlike an ``eval`` inside the page.
        """
        from selenium.common.exceptions import JavascriptException

        reply = self._driver.execute_cdp_cmd("Runtime.evaluate", {
            "expression": js, "returnByValue": True, "awaitPromise": True, "replMode": True})
        if reply is None:  # chromedriver abandons an evaluation that opened a dialog
            raise JavascriptException(f"a dialog interrupted the script: {js[:200]}")
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise JavascriptException(details.get("exception", {}).get("description") or details["text"])
        return reply["result"].get("value")

    def click(self, css: str) -> None:
        """Click the first element matching ``css`` as a user would: it must be visible and
        not covered by another element."""
        from selenium.webdriver.common.by import By

        self._driver.find_element(By.CSS_SELECTOR, css).click()

    def select(self, css: str, value: str) -> None:
        """Choose the option with ``value`` in the first ``<select>`` matching ``css``; the
        page gets the same input and change events as from a user's choice."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.select import Select

        Select(self._driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value)

    def visible_count(self, css: str) -> int:
        """How many elements matching ``css`` are displayed: neither they nor an ancestor
        has ``display: none``, and they are not ``visibility: hidden``."""
        return self.run(f"""[...document.querySelectorAll({json.dumps(css)})]
            .filter(e => e.checkVisibility({{visibilityProperty: true}})).length""")

    def text(self, css: str) -> str:
        """The visible text of the first element matching ``css``, as a user reads it."""
        from selenium.webdriver.common.by import By

        return self._driver.find_element(By.CSS_SELECTOR, css).text

    def _read_logs(self) -> None:
        # chromedriver hands each log entry out once: keep them here
        for entry in self._driver.get_log("browser"):
            if entry["level"] == "SEVERE" and entry["source"] != "network":
                self._console_errors.append(entry["message"])
        for entry in self._driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message["method"], message["params"]
            if method == "Network.requestWillBeSent":
                self._urls[params["requestId"]] = params["request"]["url"]
            elif method == "Network.loadingFailed":
                url = self._urls.get(params["requestId"], f"request {params['requestId']}")
                reason = params.get("errorText") or ""
                if params.get("blockedReason"):
                    reason = f"blocked: {params['blockedReason']} {reason}".strip()
                if params.get("canceled"):
                    reason = f"canceled {reason}".strip()
                self._failed_requests.append(f"{_short(url)} ({reason})")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                self._failed_requests.append(f"{_short(params['response']['url'])} "
                                             f"(HTTP {params['response']['status']})")
            elif method == "Page.javascriptDialogOpening":
                self._dialogs.append(f"{params['type']}: {params['message']}")


def open_page(path: Path) -> Page:
    """Open the local file ``path`` in a fresh headless chromium and wait until it has loaded
    (``document.readyState`` is complete: its images and scripts have loaded or failed)."""
    from selenium import webdriver
    from selenium.common.exceptions import JavascriptException, UnexpectedAlertPresentException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    # --no-sandbox: CI runs as root; --disable-dev-shm-usage: containers have a small /dev/shm
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW_SIZE}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": True})
    options.unhandled_prompt_behavior = "dismiss"
    # explicit paths: selenium then never runs its manager, which would try to download a driver
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    page = Page(driver)
    try:
        driver.set_page_load_timeout(LOAD_TIMEOUT_S)
        driver.get(Path(path).resolve().as_uri())
        # a dialog during loading makes get() return early: wait for the rest of the page
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while True:
            try:
                if page.run("document.readyState") == "complete":
                    break
            except (JavascriptException, UnexpectedAlertPresentException):
                pass  # another dialog: dismissed by the next command
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not finish loading in {LOAD_TIMEOUT_S} s")
            time.sleep(0.05)
    except BaseException:
        page.close()
        raise
    return page


def _short(url: str) -> str:
    # a data: URL can be a whole base64 image
    return url if len(url) <= 200 else url[:200] + "..."
