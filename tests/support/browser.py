"""Headless Chromium for browser tests: Debian's `chromium` driven by Playwright for Python (nothing downloaded)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

#: Where Debian's package puts the browser; scripts/test installs it when missing.
CHROMIUM = "chromium"


def chromium_path() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        raise RuntimeError("chromium is not installed: scripts/test installs Debian's chromium package (apt-get install chromium)")
    return path


@contextmanager
def browser_page(width: int = 1400, height: int = 900, http_credentials: dict | None = None):
    """A fresh page of a headless Chromium (signing in with `http_credentials` where basic auth asks), closed afterwards."""
    from playwright.sync_api import sync_playwright

    # Chromium's sandbox refuses to run as root, as tests do in containers.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=args)
        try:
            yield browser.new_page(viewport={"width": width, "height": height}, http_credentials=http_credentials)
        finally:
            browser.close()


def sign_in_to_label_studio(page, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda address: "/user/login" not in address)
