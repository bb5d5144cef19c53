"""The console (/api/console) in headless Chromium on the local stack: signing in as a caller and as an operator,
runs appearing and ending in the list, live output through a dropped connection, cancel, redeliver, the timeline
picture, the operator's capacity panel, the Content-Security-Policy and text-only rendering, and axe-core's
accessibility checks in both colour schemes."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import Browser, Request

from ..stack import FACADE_KEYS
from .chromium import DroppingRelay, errors_while_loading
from .console_page import Console

pytestmark = pytest.mark.slow


@pytest.fixture
def context(browser: Browser):
    instance = browser.new_context(viewport={"width": 1280, "height": 900})
    yield instance
    instance.close()


def assert_accessible(console: Console, what: str) -> None:
    for scheme in ("light", "dark"):
        console.page.emulate_media(color_scheme=scheme)
        assert console.accessibility_violations() == [], f"{what} ({scheme})"


def test_a_caller_and_an_operator_each_see_what_they_should_and_nothing_more(context, stack) -> None:
    alices = stack.start_as("alice", "alice's question", duration_ms=300)
    bobs = stack.start_as("bob", "bob's private question", duration_ms=300)
    stack.wait(alices)
    stack.wait(bobs)

    page = context.new_page()
    console = Console(page, stack.host.base_url).open()
    console.shown("sign-in")
    assert_accessible(console, "sign-in")
    page.get_by_label("API key").fill("x" * 40)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_function("() => document.getElementById('sign-in-error').textContent.includes('not valid')")

    console.sign_in(FACADE_KEYS["alice"])
    console.row(alices).wait_for()
    assert console.row(bobs).count() == 0
    assert page.get_by_role("link", name="Operator").is_hidden()
    assert page.locator("th.owner-col").is_hidden()
    assert page.evaluate("sessionStorage.getItem('bgruns.console.key')") == FACADE_KEYS["alice"]
    assert context.cookies() == [] and FACADE_KEYS["alice"] not in page.url
    assert_accessible(console, "runs list, caller")

    console.open_run(bobs)  # another caller's run: as if it did not exist
    assert "no run" in console.text("#run-message") and "bob" not in page.content()
    page.goto(f"{stack.host.base_url}/api/console#/operator")  # not an operator: the list instead
    console.shown("runs")

    page.get_by_role("button", name="Sign out").click()
    console.shown("sign-in")
    assert page.evaluate("sessionStorage.length") == 0

    console.sign_in(FACADE_KEYS["ops"])
    console.shown("operator")  # where the address said to go, now that the key may see it
    page.get_by_role("link", name="Runs").click()
    console.row(bobs).wait_for()
    console.row(alices).wait_for()
    assert console.row(bobs).locator("[data-cell=owner]").text_content() == "bob"
    page.get_by_label("Caller").select_option("bob")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_function(f"() => !document.querySelector(\"#runs-body tr[data-id='{alices}']\")")
    console.row(bobs).wait_for()
    assert "owner=bob" in page.url and console.row(alices).count() == 0
    assert_accessible(console, "runs list, operator")

    page.get_by_role("link", name="Operator").click()
    console.shown("operator")
    page.wait_for_selector("#in-flight tr[data-caller='alice']")
    health = console.text("#health")
    assert "emulator" in health and "background mode" in health and "poll" in health
    assert console.text("#health-status") == "healthy" and "this process only" in console.text("#metrics")
    assert_accessible(console, "operator view")


def test_a_run_appears_and_ends_in_the_list_and_its_live_output_survives_a_dropped_connection(context, stack) -> None:
    relay = DroppingRelay(stack.host.base_url)  # the page and its API calls go through it: the test can cut them
    try:
        page = context.new_page()
        streams: list[Request] = []
        page.on("request", lambda request: streams.append(request) if request.url.endswith("/stream") else None)
        console = Console(page, relay.url).open().sign_in(FACADE_KEYS["alice"])
        page.wait_for_function("() => document.getElementById('runs-body') !== null")

        short = stack.start_as("alice", "a short one", duration_ms=2500)
        row = console.row(short)
        row.wait_for(timeout=10_000)  # appeared without a reload
        page.evaluate(f"document.querySelector(\"tr[data-id='{short}']\").dataset.mark = 'same row'")
        page.wait_for_function(
            f"() => document.querySelector(\"tr[data-id='{short}']\").dataset.status === 'completed'", timeout=20_000
        )
        assert row.get_attribute("data-mark") == "same row"  # updated in place, never redrawn
        assert row.locator("td").nth(1).text_content() == "completed"

        long = stack.start_as("alice", "stream me", duration_ms=8000, chars=600)
        console.row(long).wait_for(timeout=10_000)
        console.row(long).get_by_role("link").click()
        console.shown("run")
        page.wait_for_function("() => document.getElementById('output-text').textContent.length >= 60", timeout=15_000)
        context.set_offline(True)
        assert relay.drop() >= 2  # the open stream is reset...
        page.wait_for_function(
            "() => document.getElementById('live-state').textContent.includes('reconnecting')", timeout=5_000
        )
        cut_at = len(console.text("#output-text"))
        time.sleep(1.0)  # ...and the retries fail for a while
        context.set_offline(False)

        console.wait_for_status("completed", timeout=30_000)
        page.wait_for_selector("#output-text[data-ended='true']", state="attached")
        run = stack.get(f"/api/runs/{long}").json()
        output = page.locator("#output-text")
        assert cut_at < 600 and len(run["output_text"]) == 600
        assert output.text_content() == run["output_text"]  # nothing repeated, nothing missing
        assert output.get_attribute("data-source") == "stream"  # from the streamed deltas, not the stored run
        assert int(output.get_attribute("data-connections")) >= 2
        sent = [r for r in streams if r.failure is None or "DISCONNECTED" not in r.failure]
        assert "last-event-id" not in sent[0].all_headers()
        resumes = [int(r.all_headers()["last-event-id"]) for r in sent[1:]]
        assert resumes and all(0 < n < 2**31 - 1 for n in resumes)
        assert all(FACADE_KEYS["alice"] not in r.url for r in streams)

        page.get_by_role("link", name="All runs").click()
        page.wait_for_function(
            f"() => document.querySelector(\"tr[data-id='{long}']\")?.dataset.status === 'completed'"
        )
    finally:
        relay.close()


def test_cancel_a_run_with_the_keyboard_after_a_confirmation(context, stack) -> None:
    run_id = stack.start_as("alice", "cancel me", duration_ms=60_000)
    page = context.new_page()
    console = Console(page, stack.host.base_url).open().sign_in(FACADE_KEYS["alice"])
    console.open_run(run_id)
    page.focus("#cancel-run")
    page.keyboard.press("Enter")
    page.wait_for_selector("#confirm[open]")
    page.keyboard.press("Enter")  # the focused choice is "Keep the run"
    page.wait_for_selector("#confirm", state="hidden")
    time.sleep(0.5)
    assert stack.get(f"/api/runs/{run_id}").json()["status"] in ("queued", "in_progress")

    page.focus("#cancel-run")
    page.keyboard.press("Enter")
    page.wait_for_selector("#confirm[open]")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # "Cancel the run"
    console.wait_for_status("cancelled")
    assert stack.get(f"/api/runs/{run_id}").json()["status"] == "cancelled"
    assert page.locator("#cancel-run").is_disabled()


def test_redeliver_a_webhook_to_a_receiver_that_was_down(context, stack) -> None:
    name = "console-redeliver"
    receiver = stack.local.receiver
    receiver.down()
    try:
        run_id = stack.start_as("alice", "hook me", duration_ms=300, webhook_url=stack.hook_url(name))
        page = context.new_page()
        console = Console(page, stack.host.base_url).open().sign_in(FACADE_KEYS["alice"])
        console.open_run(run_id)
        page.wait_for_function(
            "() => document.querySelector('#webhook .badge')?.textContent === 'failed'", timeout=30_000
        )  # 4 attempts (WEBHOOK_RETRY_SCHEDULE 0,1,1,1), each refused
        assert page.locator("#attempts tbody tr").count() == 4
    finally:
        receiver.up()
    page.get_by_role("button", name="Redeliver webhook").click()
    page.wait_for_function(
        "() => document.querySelector('#webhook .badge')?.textContent === 'delivered'", timeout=20_000
    )
    last = page.locator("#attempts tbody tr").last
    assert page.locator("#attempts tbody tr").count() == 5 and "delivered (HTTP 204)" in last.text_content()
    [delivery] = stack.received(name)
    assert delivery["headers"]["webhook-id"] == page.locator("#webhook dd").nth(2).text_content()


def test_read_a_timeline_by_hover_and_by_keyboard(context, stack) -> None:
    run_id = stack.start_as("alice", "time me", duration_ms=4000, webhook_url=stack.hook_url("console-timeline"))
    page = context.new_page()
    console = Console(page, stack.host.base_url).open().sign_in(FACADE_KEYS["alice"])
    console.open_run(run_id)
    page.wait_for_function(
        "() => document.querySelector('#webhook .badge')?.textContent === 'delivered'", timeout=30_000
    )
    page.wait_for_selector("#timeline .mark-webhook_attempt")

    kinds = page.eval_on_selector_all("#timeline .mark", "marks => marks.map(m => m.dataset.type)")
    assert kinds[0] == "created" and kinds[-1] == "webhook_attempt"
    for kind in ("provider_accepted", "poll", "provider_ended", "finished"):
        assert kind in kinds
    assert kinds.index("provider_accepted") < kinds.index("provider_ended") <= kinds.index("finished")
    assert page.locator("#timeline-table tbody tr").count() == len(kinds)

    page.hover("#timeline .mark-webhook_attempt")
    assert console.text("#timeline-details").startswith("webhook delivered, HTTP 204")

    page.focus("#delete-run")  # from there, Tab reaches the picture: one stop, then the arrow keys
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.closest('#timeline') !== null"):
            break

    def focused() -> list:
        return page.evaluate("[document.activeElement.dataset.type, document.activeElement.getAttribute('aria-label')]")

    assert focused()[0] == "created" and console.text("#timeline-details") == focused()[1]
    assert focused()[1].startswith("accepted, at ")
    page.keyboard.press("ArrowRight")
    assert focused()[0] == "provider_accepted" and console.text("#timeline-details").startswith("provider accepted")
    page.keyboard.press("End")
    assert focused()[0] == "webhook_attempt" and "took" in console.text("#timeline-details")
    assert_accessible(console, "run view")

    # The slot for waiting on capacity: once the service records it, it is drawn as a band with its marks.
    slot = page.evaluate("""async () => {
        const {drawTimeline} = await import('./console/assets/timeline.js');
        const t = 1_800_000_000;
        drawTimeline({created_at: t, status: 'completed', timeline: {polls: {omitted: 0}, events_omitted: 0, entries: [
            {at: t, type: 'created'}, {at: t + 1, type: 'capacity_queued'}, {at: t + 5, type: 'capacity_granted'},
            {at: t + 5.5, type: 'provider_accepted'}, {at: t + 9, type: 'finished', status: 'completed'}]}});
        const band = document.querySelector('#timeline .band-capacity');
        return [band !== null, document.querySelector('#timeline .mark-capacity_queued').getAttribute('aria-label')];
    }""")
    assert slot[0] and slot[1].startswith("queued for capacity, at ")


def test_an_operator_sees_a_caller_at_its_active_cap_in_the_capacity_panel(context, stack) -> None:
    # A host of its own with quotas (the session host has none), on the same storage: alice may hold 2 runs.
    host = stack.start_host("console-capacity", CALLER_MAX_ACTIVE_RUNS="2", CALLER_QUOTAS="bob:0:30 ops:0:0")
    started: list[str] = []
    try:

        def start(caller: str) -> httpx.Response:
            response = httpx.post(
                f"{host.base_url}/api/v1/responses",
                timeout=30,
                headers={"Authorization": f"Bearer {FACADE_KEYS[caller]}"},
                json={
                    "model": "gpt-4.1-mini",
                    "input": "hold a slot",
                    "background": True,
                    "metadata": {"emulator_duration_ms": "60000"},
                },
            )
            if response.status_code == 200:
                started.append(response.json()["id"])
            return response

        assert start("alice").status_code == 200 and start("alice").status_code == 200
        refused = start("alice")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert start("bob").status_code == 200

        page = context.new_page()
        console = Console(page, host.base_url).open().sign_in(FACADE_KEYS["alice"])
        console.shown("runs")  # a caller: no operator view, and its key cannot read the operations
        assert page.get_by_role("link", name="Operator").is_hidden()
        status = page.evaluate("""() => fetch('console/api/operations', {headers: {Authorization:
            'Bearer ' + sessionStorage.getItem('bgruns.console.key')}}).then(r => r.status)""")
        assert status == 403 and page.locator("#capacity tbody tr").count() == 0
        page.get_by_role("button", name="Sign out").click()

        console.sign_in(FACADE_KEYS["ops"])
        page.get_by_role("link", name="Operator").click()
        console.shown("operator")
        alice = page.locator("#capacity tr[data-caller='alice']")
        alice.and_(page.locator("[data-at-cap='true']")).wait_for()
        assert alice.locator("[data-count=active_slots]").text_content() == "2 of 2 at the cap"
        assert alice.locator("[data-limit=starts_per_minute]").text_content() == "unlimited"
        assert int(alice.locator("[data-count=active_runs]").text_content()) >= 2  # every host's, from the index
        bob = page.locator("#capacity tr[data-caller='bob']")
        limits = [bob.locator(f"[data-limit={n}]").text_content() for n in ("max_active_runs", "starts_per_minute")]
        assert limits == ["unlimited", "30"]
        assert bob.locator("[data-count=active_slots]").text_content() == "not capped"
        assert bob.get_attribute("data-at-cap") is None
        native = page.locator("#capacity tr[data-caller='@native']")
        assert native.locator("[data-count=active_slots]").text_content().startswith("0 of 2")
        assert native.locator("a").count() == 0  # no caller to filter the runs by
        assert "gpt-4.1-mini (emulator, the default model)" in console.text("#deployments")
        assert_accessible(console, "operator view with the capacity panel")

        alice.get_by_role("link", name="alice").focus()  # from a caller's row to its runs, by keyboard
        page.keyboard.press("Enter")
        console.shown("runs")
        console.row(started[0]).wait_for()
        assert "owner=alice" in page.url
    finally:
        for run_id in started:
            stack.post(f"/api/runs/{run_id}/cancel")
        host.stop()


def test_the_page_sends_a_strict_csp_and_shows_model_output_only_as_text(context, stack) -> None:
    payload = "<img src=x onerror=\"document.title='pwned'\">"
    run_id = stack.start_as("alice", payload, duration_ms=300)
    stack.wait(run_id)
    page = context.new_page()
    response = page.goto(f"{stack.host.base_url}/api/console")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "trusted-types 'none'" in policy
    console = Console(page, stack.host.base_url).sign_in(FACADE_KEYS["alice"])
    console.open_run(run_id)
    console.wait_for_status("completed")
    assert payload in console.text("#output-text")  # the characters, as text
    assert page.locator("img").count() == 0 and "pwned" not in page.title()
    # Trusted Types with no policy: the page cannot turn a string into HTML even if a script tried.
    refused = page.evaluate("""() => { try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return false; }
                                      catch (e) { return e instanceof TypeError; } }""")
    assert refused


def test_the_console_loads_without_a_failed_request_or_a_console_error(context, stack) -> None:
    # The browser asked for /favicon.ico, which the app does not serve: a 404 in the host's log and the console.
    assert errors_while_loading(context.new_page(), f"{stack.host.base_url}/api/console") == []
