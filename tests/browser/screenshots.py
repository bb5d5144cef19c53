"""The README's screenshots of the console: each view in the light and the dark scheme, on a local stack of its own.

    .venv/bin/python -m tests.browser.screenshots [--out docs/images]

Starts the stack (Azurite, the emulator, the webhook receiver, the host) on free ports with the tests' callers and
per-caller quotas (SCREENSHOT_ENV), starts a few runs (one still going, one with a webhook that failed, one
cancelled, one that holds bob's only active-run slot), and writes console-<view>-<scheme>.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from local.stack import LocalStack

from ..stack import FACADE_KEYS, TEST_ENV, Stack
from .chromium import CHROMIUM_ARGS, chromium_path
from .console_page import REPO, Console

# Quotas for the operator view's capacity panel: every caller 3 active runs, bob 1 and 10 starts a minute, ops none.
SCREENSHOT_ENV = {**TEST_ENV, "CALLER_MAX_ACTIVE_RUNS": "3", "CALLER_QUOTAS": "bob:1:10 ops:0:0"}


def seed(stack: Stack) -> str:
    """A few runs of two callers; the id of the one to show (ended, with a delivered webhook)."""
    stack.start_as(
        "bob", "Summarise the quarterly report", duration_ms=2000, webhook_url=stack.hook_url("bob", fail=10)
    )
    cancelled = stack.start_as("alice", "Plan the migration", duration_ms=60000)
    stack.post(f"/api/runs/{cancelled}/cancel")
    shown = stack.start_as(
        "alice", "Write a haiku about queues", duration_ms=4000, chars=420, webhook_url=stack.hook_url("alice")
    )
    stack.start_as("alice", "Draft the release notes", duration_ms=120000)
    stack.wait(shown)
    time.sleep(1.5)  # its webhook (bob's first run ended long ago: its slot is free again)
    stack.start_as("bob", "Index the archive", duration_ms=120000)  # bob at its cap
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalStack("screenshots", env=SCREENSHOT_ENV) as local, sync_playwright() as playwright:
        stack = Stack(local)
        shown = seed(stack)
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport={"width": 1200, "height": 760}, color_scheme=scheme)
            page = context.new_page()
            console = Console(page, stack.host.base_url).open()
            console.shown("sign-in")
            page.screenshot(path=args.out / f"console-sign-in-{scheme}.png")
            console.sign_in(FACADE_KEYS["ops"])
            page.get_by_role("link", name="Runs").click()
            console.row(shown).wait_for()
            time.sleep(0.5)
            page.screenshot(path=args.out / f"console-runs-{scheme}.png")
            console.open_run(shown)
            page.wait_for_selector("#timeline .mark-webhook_attempt")
            page.hover("#timeline .mark-provider_ended")
            page.screenshot(path=args.out / f"console-run-{scheme}.png", full_page=True)
            page.get_by_role("link", name="Operator").click()
            page.wait_for_selector("#in-flight tr[data-caller='alice']")
            page.wait_for_selector("#capacity tr[data-caller='bob'][data-at-cap='true']")
            page.screenshot(path=args.out / f"console-operator-{scheme}.png", full_page=True)
            context.close()
        browser.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
