"""End to end on the local stack (real Azurite, the emulator, the local Functions host running function_app.py,
a webhook receiver) with the service's real OTLP exporter sending to a collector this test runs: a run with a
webhook is one trace from the caller's span to the webhook POST, across a host SIGKILL and restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from local.azurite import start_for_tests
from tests.stack import TEST_ENV

from .collector import Collector

ROOT = Path(__file__).resolve().parents[2]
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SERVER, CONSUMER, CLIENT = 2, 5, 3  # OTLP SpanKind


def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def traced_host(stack):
    """A host of its own on an Azurite of its own: the session's stack (tests/service) would otherwise take
    messages from the same queues."""
    collector = Collector().start()
    azurite = start_for_tests(f"telemetry-{os.getpid()}")
    host = stack.start_host(
        "host-telemetry",
        AzureWebJobsStorage=azurite.connection_string,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_RESOURCE_ATTRIBUTES="bgruns.test.host_life=1",
    )
    yield host, collector
    host.stop()
    collector.stop()
    azurite.stop()


@pytest.mark.slow
def test_a_run_is_one_trace_across_polls_a_host_kill_and_restart_and_its_webhook(traced_host, stack):
    host, collector = traced_host
    api = httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    name = f"traced-{time.time_ns()}"
    hook = stack.hook_url(name)
    secret_input = "INPUT-c0ffee-never-in-a-span"
    run = api.post(
        "/api/runs",
        headers={"traceparent": CALLER},
        json={
            "input": secret_input,
            "webhook_url": hook,
            "metadata": {"emulator_duration_ms": "15000", "note": "META-never-in-a-span"},
        },
    ).json()
    run_id = run["id"]
    eventually(lambda: [s for s in collector.spans_of(run_id) if s["name"] == "poll run"], 30, "a first poll span")

    host.kill()  # SIGKILL mid-run: the poll message in flight is redelivered or the sweeper restarts the chain
    host.env["OTEL_RESOURCE_ATTRIBUTES"] = "bgruns.test.host_life=2"
    host.start(timeout=60)

    def finished():
        current = api.get(f"/api/runs/{run_id}").json()
        return current if current["continuation_token"] is None else None

    final = eventually(finished, 90, "the run to finish")
    assert final["status"] == "completed"
    deliveries = eventually(lambda: stack.received(name), 30, "the webhook")
    spans = eventually(
        lambda: (lambda s: s if any(x["name"] == "webhook POST" for x in s) else None)(collector.spans_of(run_id)),
        30,
        "the webhook span",
    )

    # One trace: the caller's, with the start as the caller span's child and every step a child of the start.
    assert {s["trace_id"] for s in spans} == {CALLER_TRACE}
    (start,) = [s for s in spans if s["name"] == "POST /api/runs"]
    assert start["parent_span_id"] == CALLER_SPAN and start["kind"] == SERVER
    polls = [s for s in spans if s["name"] == "poll run"]
    assert all(p["parent_span_id"] == start["span_id"] and p["kind"] == CONSUMER for p in polls)
    lives = {p["resource"]["bgruns.test.host_life"] for p in polls}
    assert lives == {1, 2} or lives == {"1", "2"}, f"polls before and after the restart: {lives}"
    every = {s["span_id"]: s for s in collector.snapshot()}
    for retrieve in (
        s
        for s in collector.snapshot()
        if s["name"] == "provider retrieve"
        and s["attributes"].get("gen_ai.response.id") == final["provider_response_id"]
    ):
        assert retrieve["trace_id"] == CALLER_TRACE
        parent = every.get(retrieve["parent_span_id"])
        if parent is None:  # only a step the SIGKILL cut: its retrieve was exported, the step's own span never ended
            assert str(retrieve["resource"]["bgruns.test.host_life"]) == "1", retrieve
            continue
        assert parent["name"] in ("poll run", "POST /api/runs", "repair run")
    attempts = [s for s in spans if s["name"] == "webhook POST"]  # more than one if a loaded machine timed one out
    assert all(a["kind"] == CLIENT and every[a["parent_span_id"]]["trace_id"] == CALLER_TRACE for a in attempts)
    assert any(a["attributes"]["http.response.status_code"] == 204 for a in attempts)
    # Each POST carried its attempt's own context.
    assert {d["headers"]["traceparent"] for d in deliveries} <= {
        f"00-{CALLER_TRACE}-{a['span_id']}-01" for a in attempts
    }
    # Metrics reached the collector too.
    eventually(lambda: {"bgruns.runs.started", "bgruns.poll.steps"} <= collector.metric_names, 20, "metrics")

    # No span of the whole test holds the input, the metadata, the output or a secret.
    texts = [
        str(v)
        for s in collector.snapshot()
        for v in [s["name"], s["status"], *s["attributes"].values(), *[x for e in s["events"] for x in e.values()]]
    ]
    forbidden = [
        secret_input,
        "META-never-in-a-span",
        final["output_text"][:40],
        host.env["RUN_TOKEN_KEY"],
        *host.env["WEBHOOK_SIGNING_SECRETS"].split(),
    ]
    assert not [(f, t) for t in texts for f in forbidden if f and f in t]

    # One log line per step, with the run id and the trace id, in the host's log (before and after the kill).
    lines = [line for line in host.logs().splitlines() if f"poll run {run_id}:" in line and " trace=" in line]
    assert len(lines) >= 2 and all(line.endswith(f"trace={CALLER_TRACE}") for line in lines)
    assert secret_input not in host.logs()

    # The run's own timeline over the API tells the same story.
    timeline = api.get(f"/api/runs/{run_id}", params={"include": "timeline"}).json()["timeline"]
    kinds = [e["type"] for e in timeline["entries"]]
    assert kinds[:2] == ["created", "provider_accepted"] and "finished" in kinds and "webhook_attempt" in kinds
    assert timeline["polls"]["total"] >= 2 and timeline["trace_id"] == CALLER_TRACE
    bad = api.get(f"/api/runs/{run_id}", params={"include": "everything"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "include"
    api.close()

    # ... and `bgruns status` shows it (this checkout's client).
    cli = subprocess.run(
        [sys.executable, "-m", "bgruns", "status", run_id, "--url", host.base_url, "--key", stack.function_key],
        env={**os.environ, "PYTHONPATH": str(ROOT / "client")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"trace {CALLER_TRACE}" in cli.stdout and "provider_accepted" in cli.stdout
    assert "finished" in cli.stdout and "webhook_attempt" in cli.stdout and "next_poll_in=" in cli.stdout


def test_the_test_stack_has_no_telemetry_by_default():
    assert not any(k.startswith(("OTEL_", "APPLICATIONINSIGHTS_", "TELEMETRY_")) for k in TEST_ENV)
