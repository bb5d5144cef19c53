"""The run's timeline (bounded, riding on the saves the run makes anyway), the metrics, what spans and log lines
may hold (ids and statuses, never a secret or model content), W3C parsing, and how telemetry is chosen."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from shared import telemetry
from shared.runs.requests import RunRequest
from shared.telemetry import Timeline
from shared.telemetry.context import from_headers, from_message, valid_traceparent
from shared.telemetry.local_export import attributes, read_spans
from shared.telemetry.timeline import MAX_EVENTS, MAX_RECENT_POLLS
from tests.unit.fakes import ENV, world

from .test_traces import CALLER, deliver, poll, start

ROOT = Path(__file__).resolve().parents[2]


# -- the timeline ---------------------------------------------------------------------------------------------------
def test_the_timeline_keeps_the_recent_polls_and_counts_the_rest():
    timeline = Timeline()
    timeline.record("created", 1.0)
    for i in range(100):
        timeline.record("poll", 2.0 + i, provider_status="in_progress", next_poll_in=1.5)
    for i in range(MAX_EVENTS + 10):
        timeline.record("cancel_requested", 200.0 + i)
    stored = timeline.dumps()
    view = Timeline(stored).view()
    assert view["polls"] == {"total": 100, "shown": MAX_RECENT_POLLS, "omitted": 100 - MAX_RECENT_POLLS}
    polls = [e for e in view["entries"] if e["type"] == "poll"]
    assert [p["at"] for p in polls] == [2.0 + i for i in range(100 - MAX_RECENT_POLLS, 100)]  # the most recent
    events = [e for e in view["entries"] if e["type"] != "poll"]
    assert len(events) == MAX_EVENTS and events[0]["type"] == "created" and view["events_omitted"] == 11
    assert [e["at"] for e in view["entries"]] == sorted(e["at"] for e in view["entries"])
    assert len(stored) < 6000  # well inside a Table property, whatever the run's length


def test_an_unchanged_timeline_is_stored_as_read_and_a_broken_one_never_fails_a_run():
    assert Timeline('{"events":[],"polls":[],"poll_total":0}').dumps() == '{"events":[],"polls":[],"poll_total":0}'
    broken = Timeline("{not json")
    broken.record("poll", 1.0, provider_status="queued")
    assert Timeline(broken.dumps()).view()["polls"]["total"] == 1


async def test_the_timeline_rides_on_the_poll_chains_save_no_extra_storage_request(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    w.backend.responses[run.response_id].status = "in_progress"
    before = w.runs.requests
    assert await poll(w) == ["pending"]
    assert w.runs.requests - before == 2  # read the run, save the chain: as before the timeline existed
    view = w.services.views.render(await w.run(run.id), timeline=True)["timeline"]
    assert [e["type"] for e in view["entries"]] == ["created", "provider_accepted", "poll"]
    assert view["entries"][-1]["provider_status"] == "in_progress" and view["entries"][-1]["next_poll_in"] > 0
    assert view["provider_calls"] == 2 and view["polls"]["total"] == 1


async def test_the_timeline_tells_a_runs_whole_story(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    w.clock.advance(1)
    await poll(w)
    w.clock.advance(2)
    w.backend.responses[run.response_id].complete()
    await poll(w)
    await deliver(w)
    view = w.services.views.render(await w.run(run.id), timeline=True)["timeline"]
    kinds = [e["type"] for e in view["entries"] if e["type"] != "webhook_attempt"]
    assert kinds == ["created", "provider_accepted", "poll", "finished"]
    finished = next(e for e in view["entries"] if e["type"] == "finished")
    assert finished["status"] == "completed" and finished["via"] == "poll run"
    assert [e["ok"] for e in view["entries"] if e["type"] == "webhook_attempt"] == [True]
    assert view["trace_id"] == CALLER[3:35]


# -- metrics --------------------------------------------------------------------------------------------------------
async def test_metrics_of_a_run(monkeypatch, recorded):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    await poll(w)
    response = w.backend.responses[run.response_id]
    response.complete()
    response.completed_at = w.clock.now - 3  # the provider finished 3 s before the poll saw it
    w.clock.advance(1)
    await poll(w)
    assert [p.value for p in recorded.metric_points("bgruns.runs.started")] == [1]
    (finished,) = recorded.metric_points("bgruns.runs.finished")
    assert finished.value == 1 and dict(finished.attributes) == {"bgruns.status": "completed", "bgruns.via": "poll run"}
    (lag,) = recorded.metric_points("bgruns.run.detection_lag")
    assert lag.count == 1 and lag.sum == 4.0
    (calls,) = recorded.metric_points("bgruns.run.provider_calls")
    assert calls.sum == 3  # create, two retrieves
    steps = {p.attributes["bgruns.outcome"]: p.value for p in recorded.metric_points("bgruns.poll.steps")}
    assert steps == {"pending": 1, "completed": 1}
    (attempts,) = recorded.metric_points("bgruns.webhook.attempts")
    assert attempts.value == 1 and attempts.attributes["bgruns.outcome"] == "ok"
    (delivery,) = recorded.metric_points("bgruns.webhook.delivery_lag")
    assert delivery.count == 1
    assert {p.attributes["bgruns.operation"] for p in recorded.metric_points("bgruns.provider.calls")} == set()
    assert [s.name for s in recorded.spans() if s.name.startswith("provider ")].count("provider retrieve") == 2


def test_storage_errors_are_counted_but_not_the_answers_the_stores_expect(recorded):
    hook = telemetry.storage_response_hook("table")
    for status in (200, 204, 404, 409, 412, 429, 503, 503, 403):
        hook(SimpleNamespace(http_response=SimpleNamespace(status_code=status)))
    counts = {
        p.attributes["http.response.status_code"]: p.value for p in recorded.metric_points("bgruns.storage.errors")
    }
    assert counts == {429: 1, 503: 2, 403: 1}


# -- no secrets, no model content -----------------------------------------------------------------------------------
async def test_no_span_attribute_or_log_line_holds_a_secret_or_model_content(monkeypatch, recorded, caplog):
    secrets = {
        "input": "INPUT-e7d1",
        "instructions": "INSTRUCTIONS-4c2a",
        "metadata": "META-91bb",
        "url_token": "URLTOKEN-55aa",
        "output": "OUTPUT-0f3c",
    }
    w = world(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="bgruns")
    with telemetry.incoming_request("POST /api/runs", {"traceparent": CALLER}, logger="bgruns.starting"):
        started = await w.services.starter.start(
            RunRequest(
                input=secrets["input"],
                instructions=secrets["instructions"],
                metadata={"note": secrets["metadata"]},
                webhook_url=f"http://127.0.0.1:9/hook/{secrets['url_token']}?token={secrets['url_token']}",
            )
        )
    run = started.run
    await poll(w)
    w.backend.responses[run.response_id].complete(secrets["output"])
    await poll(w)
    await deliver(w)
    token = w.services.views.token(run.id)
    forbidden = [*secrets.values(), ENV["RUN_TOKEN_KEY"], ENV["WEBHOOK_SIGNING_SECRETS"], token]
    spans = recorded.spans()
    assert len(spans) >= 6
    texts = []
    for span in spans:
        texts += [span.name, str(span.status.description or "")]
        texts += [str(v) for v in span.attributes.values()]
        texts += [str(v) for event in span.events for v in event.attributes.values()]
        texts += [str(v) for link in span.links for v in (link.attributes or {}).values()]
        texts += [str(v) for v in span.resource.attributes.values()]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(v) for record in caplog.records for v in record.__dict__.values()]
    leaks = [(secret, text) for text in texts for secret in forbidden if secret in text]
    assert not leaks, leaks
    # what the spans do carry: the ids that find the run
    assert any(s.attributes.get("bgruns.run_id") == run.id for s in spans)
    assert any(s.attributes.get("gen_ai.response.id") == run.response_id for s in spans)
    step_lines = [r for r in caplog.records if getattr(r, "trace_id", None) == CALLER[3:35] and r.run_id == run.id]
    assert {r.step for r in step_lines} >= {"POST /api/runs", "poll run", "deliver webhook"}


# -- W3C -------------------------------------------------------------------------------------------------------------
def test_traceparent_parsing():
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert valid_traceparent(good.upper()) == good
    assert (
        valid_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future")
        == good[:0] + "00" + good[2:]
    )
    for bad in (
        "",
        None,
        42,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-xyz",
    ):
        assert valid_traceparent(bad) == ""
    assert from_headers({"Traceparent": good, "tracestate": "congo=t61rcWkgMzE"}) == (good, "congo=t61rcWkgMzE")
    assert from_headers({"tracestate": "congo=1"}) == ("", "")  # no tracestate without a traceparent
    assert from_message({"run_id": "r", "traceparent": "garbage"}) == ("", "")


# -- how telemetry is chosen ----------------------------------------------------------------------------------------
def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_", "TELEMETRY_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_with_no_setting_telemetry_is_off_and_the_sdk_is_never_imported():
    out = _python(
        "import sys, shared.functions, shared.telemetry as t; "
        "print(t.enabled(), any(m.startswith(('opentelemetry.sdk', 'azure.monitor')) for m in sys.modules))"
    )
    assert out == "False False"


def test_telemetry_file_writes_otlp_json_lines_a_developer_can_read(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    out = _python(
        "import shared.telemetry as t\n"
        "print(t.configure())\n"
        "with t.incoming_request('POST /api/runs', {'traceparent': '" + CALLER + "'}, logger='bgruns.x') as s:\n"
        "    s.set(outcome='ok')\n"
        "t.flush()\n",
        TELEMETRY_FILE=str(path),
    )
    assert out == "file"
    (span,) = read_spans(path)
    assert (
        span["name"] == "POST /api/runs" and span["traceId"] == CALLER[3:35] and span["parentSpanId"] == CALLER[36:52]
    )
    assert attributes(span)["bgruns.outcome"] == "ok"
    assert json.loads(path.read_text().splitlines()[0])["resourceSpans"][0]["resource"]["attributes"]


def test_local_traces_prints_a_runs_trace_as_a_tree(tmp_path, capsys):
    from local.traces import print_traces

    path = tmp_path / "telemetry.jsonl"
    _python(
        "import shared.telemetry as t\n"
        "from types import SimpleNamespace\n"
        "t.configure()\n"
        "run = SimpleNamespace(id='run_abc', session_id=None, response_id='resp_1', traceparent='', tracestate='',"
        " next_poll_at=None)\n"
        "with t.incoming_request('POST /api/runs', {}, logger='bgruns.x') as s:\n"
        "    t.bind_run(run)\n"
        "    run.traceparent, run.tracestate = s.trace_context()\n"
        "with t.consumed('poll run', {'run_id': 'run_abc', 'traceparent': run.traceparent}, queue='runs-poll',"
        " logger='bgruns.y') as s:\n"
        "    s.set(outcome='pending')\n"
        "t.flush()\n",
        TELEMETRY_FILE=str(path),
    )
    assert print_traces(str(path), "run_abc") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trace ") and "run_abc" in lines[0]
    assert "POST /api/runs" in lines[1] and "    poll run" in lines[2] and "outcome=pending" in lines[2]
    assert print_traces(str(path), "run_other") == 0


def test_the_distro_is_configured_with_every_automatic_instrumentation_off():
    """A span per storage request or a second span per provider call would be most of the cost (bench)."""
    out = _python(
        "import shared.telemetry as t\n"
        "from opentelemetry.util._importlib_metadata import entry_points\n"
        "print(t.configure())\n"
        "on, checked = [], []\n"
        "for ep in entry_points(group='opentelemetry_instrumentor'):\n"
        "    try:\n"
        "        instrumentor = ep.load()()\n"
        "    except ImportError:\n"
        "        continue  # its library is not installed: nothing to instrument\n"
        "    checked.append(ep.name)\n"
        "    if instrumentor.is_instrumented_by_opentelemetry:\n"
        "        on.append(ep.name)\n"
        "print(on)\n"
        "print('httpx2' in checked or 'httpx' in checked)\n",
        APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/",
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true",
        APPLICATIONINSIGHTS_SDKSTATS_DISABLED="true",
    )
    assert out.splitlines() == ["azure_monitor", "[]", "True"]
