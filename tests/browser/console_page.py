"""The console page (/api/console) as a person uses it, for the browser tests and the README's screenshots."""

from __future__ import annotations

import json
from pathlib import Path

from playwright.sync_api import Page

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"  # package.json devDependencies (npm ci)
SERIOUS = ("serious", "critical")


class Console:
    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")

    def open(self, route: str = "") -> Console:
        self.page.goto(f"{self.base_url}/api/console{route}")
        return self

    def sign_in(self, key: str) -> Console:
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_label("API key").press("Enter")
        self.page.wait_for_selector("#sign-out", state="visible")
        return self

    def shown(self, view: str) -> None:
        self.page.wait_for_selector(f"#view-{view}", state="visible")

    def row(self, run_id: str):
        return self.page.locator(f"#runs-body tr[data-id='{run_id}']")

    def open_run(self, run_id: str) -> None:
        self.page.goto(f"{self.base_url}/api/console#/runs/{run_id}")
        self.shown("run")
        self.page.wait_for_function(
            f"() => document.getElementById('run-id').textContent === {json.dumps(run_id)} && "
            "document.getElementById('run-status').textContent !== 'loading'"
        )

    def wait_for_status(self, status: str, timeout: float = 30_000) -> None:
        self.page.wait_for_function(
            f"() => document.getElementById('run-status').textContent === {json.dumps(status)}", timeout=timeout
        )

    def text(self, selector: str) -> str:
        return self.page.text_content(selector) or ""

    def accessibility_violations(self) -> list[dict]:
        """axe-core run inside the page (injected over the DevTools protocol, as the page's CSP allows no other
        script); the serious and critical violations, each with the nodes it found."""
        if not self.page.evaluate("typeof window.axe !== 'undefined'"):
            self.page.evaluate(AXE.read_text(encoding="utf-8"))
        results = self.page.evaluate("""async () => {
            const found = await axe.run(document, {resultTypes: ['violations']});
            return found.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                              nodes: v.nodes.map(n => n.target.join(' '))}));
        }""")
        return [v for v in results if v["impact"] in SERIOUS]
