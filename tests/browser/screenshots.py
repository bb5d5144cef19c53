"""The README's screenshots of the console: each view in the light and the dark scheme, on a local stack of its own.

    .venv/bin/python -m tests.browser.screenshots [--out docs/images]

Starts the stack (Azurite, the emulator, the webhook receiver, the host) on free ports with three callers, starts
a few runs (one still going, one with a webhook that failed, one cancelled), and writes
console-<view>-<scheme>.png.
"""
from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from local.stack import LocalStack

from ..stack import TEST_ENV, wait_for_run
from .chromium import CHROMIUM_ARGS, chromium_path
from .console_page import REPO, Console

KEYS = {name: secrets.token_urlsafe(32) for name in ("alice", "bob", "ops")}


def seed(stack: LocalStack) -> str:
    """A few runs of two callers; the id of the one to show (ended, with a delivered webhook)."""
    import httpx

    def start(caller: str, text: str, duration_ms: int, **body) -> str:
        response = httpx.post(f"{stack.host.base_url}/api/v1/responses", headers={"Authorization": f"Bearer {KEYS[caller]}"},
                              json={"model": "gpt-4.1-mini", "input": text, "background": True, **body,
                                    "metadata": {"emulator_duration_ms": str(duration_ms), "emulator_output_chars": "420"}})
        response.raise_for_status()
        return response.json()["id"]

    api = httpx.Client(base_url=stack.host.base_url, headers=stack.key_headers)
    start("bob", "Summarise the quarterly report", 2000, webhook_url=stack.hook_url("bob", fail=10))
    cancelled = start("alice", "Plan the migration", 60000)
    api.post(f"/api/runs/{cancelled}/cancel")
    shown = start("alice", "Write a haiku about queues", 4000, webhook_url=stack.hook_url("alice"))
    start("alice", "Draft the release notes", 120000)
    wait_for_run(api, shown)
    time.sleep(1.5)  # its webhook
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**TEST_ENV, "RESPONSES_API_KEYS": f"alice:{KEYS['alice']} bob:{KEYS['bob']} ops:{KEYS['ops']}:operator"}
    with LocalStack("screenshots", env=env) as stack, sync_playwright() as playwright:
        shown = seed(stack)
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport={"width": 1200, "height": 760}, color_scheme=scheme)
            page = context.new_page()
            console = Console(page, stack.host.base_url).open()
            console.shown("sign-in")
            page.screenshot(path=args.out / f"console-sign-in-{scheme}.png")
            console.sign_in(KEYS["ops"])
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
            page.screenshot(path=args.out / f"console-operator-{scheme}.png", full_page=True)
            context.close()
        browser.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
