"""The browser for tests/browser: one Chromium per module (tests/browser/chromium.py says which)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, sync_playwright

from .chromium import CHROMIUM_ARGS, chromium_path


@pytest.fixture(scope="module")
def browser() -> Browser:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "Chromium is not installed and could not be (`make test` runs `apt-get install -y chromium` "
            "where apt-get is available); set CHROMIUM=/path/to/chromium to use another build"
        )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()
