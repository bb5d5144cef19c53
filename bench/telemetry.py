"""What telemetry costs on the hot paths: CPU per start and per poll step, in process, with the composition root,
the real storage clients (Azurite) and the real `openai` client (the emulator), as bench/hot_paths.py measures,
through the same telemetry steps the entry points open. Three modes, each in a fresh child process:

- `off`: no telemetry setting (what the hooks cost when there is nothing to do);
- `noop`: the OpenTelemetry SDK records every span and metric and hands them to an exporter that drops them;
- `distro`: shared.telemetry's own setup with APPLICATIONINSIGHTS_CONNECTION_STRING pointing at a local sink
  (the Azure Monitor distro's exporters serialize and POST everything; every trace sampled: worst case).

The child's CPU (`getrusage`, all threads: the exporters' background threads included) is read around N starts
plus a flush, then N poll steps plus a flush. The sink runs in this (parent) process, so its CPU is not counted.
The machine is shared: modes are interleaved and repeated, and medians with their ranges are reported.
The `bgruns` step log lines are on (INFO, a NullHandler; with the distro, its log exporter): production logs them.

    .venv/bin/python -m bench.telemetry [--runs 150] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import timeit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.hot_paths import in_process_services, start_emulator
from local.azurite import start_for_tests

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("off", "noop", "distro")
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- the parent: stack, sink, repeats -----------------------------------------------------------------------------
class Sink:
    """A local Application Insights ingestion endpoint: accepts every envelope (counts them)."""

    def __init__(self) -> None:
        self.items = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                count = 1
                sink.items += count
                reply = json.dumps({"itemsReceived": count, "itemsAccepted": count, "errors": []}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


def _child_env(mode: str, sink: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_", "TELEMETRY_"))}
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"  # spans are exported when a phase flushes, inside its measurement
    if mode == "distro":
        env.update(
            {
                "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                f"IngestionEndpoint={sink}",
                "OTEL_TRACES_SAMPLER": "always_on",  # the distro's default keeps 5 traces/s: measure the worst case
                # Loopback only: no statsbeat, control plane or SDK stats calls to Microsoft endpoints.
                "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
                "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
                "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
            }
        )
    return env


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--connection")
    parser.add_argument("--emulator")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.connection, args.emulator, args.runs))))
        return
    azurite = start_for_tests(f"telemetry-bench-{time.time_ns()}")
    emulator, url = start_emulator()
    sink = Sink()
    samples: dict[str, dict[str, list[float]]] = {
        m: {"start": [], "poll": [], "hooks_us": [], "paired_on": [], "paired_off": []} for m in MODES
    }
    try:
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else tuple(reversed(MODES)):  # spread the machine's drift
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.telemetry",
                        "--child",
                        mode,
                        "--runs",
                        str(args.runs),
                        "--connection",
                        azurite.connection_string,
                        "--emulator",
                        url,
                    ],
                    env=_child_env(mode, sink.url),
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"{mode}: {out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                for phase, value in result.items():
                    samples[mode][phase].append(value)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {mode:6} start {result['start']:.2f} ms  "
                    f"poll {result['poll']:.2f} ms  telemetry of a poll alone {result['hooks_us']:.0f} us",
                    flush=True,
                )
    finally:
        sink.stop()
        emulator.terminate()
        azurite.stop()
    report = {
        "runs": args.runs,
        "repeats": args.repeats,
        "cpu_ms": {m: {p: _summary(v) for p, v in phases.items() if v} for m, phases in samples.items()},
        "sink_requests": sink.items,
        "timeline_us_per_poll": timeline_cost_us(),
    }
    off = report["cpu_ms"]["off"]["poll"]["median"]
    report["poll_overhead_pct"] = {
        m: round((report["cpu_ms"][m]["poll"]["median"] - off) / off * 100, 1) for m in ("noop", "distro")
    }
    # The steadier figure: what telemetry adds to a poll step, measured alone, against the median poll with it off.
    report["poll_hooks_pct_of_poll"] = {
        m: round(
            (report["cpu_ms"][m]["hooks_us"]["median"] - report["cpu_ms"]["off"]["hooks_us"]["median"])
            / 1000
            / off
            * 100,
            1,
        )
        for m in ("noop", "distro")
    }
    # Paired in one process: on vs off batches of the same real poll steps, per repeat, then the median.
    report["poll_paired_overhead_pct"] = {
        m: _summary([(a - b) / b * 100 for a, b in zip(samples[m]["paired_on"], samples[m]["paired_off"], strict=True)])
        for m in ("noop", "distro")
    }
    report["start_overhead_pct"] = {
        m: round(
            (report["cpu_ms"][m]["start"]["median"] - report["cpu_ms"]["off"]["start"]["median"])
            / report["cpu_ms"]["off"]["start"]["median"]
            * 100,
            1,
        )
        for m in ("noop", "distro")
    }
    print(json.dumps(report, indent=2))
    (RESULTS / "telemetry.json").write_text(json.dumps(report, indent=2) + "\n")


def timeline_cost_us() -> float:
    """CPU of one poll's timeline entry on a run with a full history: parse, record, serialize."""
    from shared.telemetry import Timeline

    full = Timeline()
    full.record("created", 1.0)
    full.record("provider_accepted", 1.1, provider_status="queued", next_poll_in=1.0)
    for i in range(40):
        full.record("poll", 2.0 + i, provider_status="in_progress", next_poll_in=9.87)
    stored = full.dumps()

    def one_step() -> None:
        timeline = Timeline(stored)
        timeline.record("poll", 100.0, provider_status="in_progress", next_poll_in=9.87)
        timeline.dumps()

    return round(min(timeit.repeat(one_step, number=2000, repeat=5)) / 2000 * 1e6, 1)


# -- the child: one mode ------------------------------------------------------------------------------------------
def _noop_providers():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Spans(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    class Metrics(MetricExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):
            return True

        def shutdown(self, timeout_millis=30_000, **kwargs):
            pass

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Spans()))
    return tracer_provider, MeterProvider(metric_readers=[PeriodicExportingMetricReader(Metrics())])


async def child(mode: str, connection: str, emulator_url: str, runs: int) -> dict[str, float]:
    import logging

    from shared import telemetry
    from shared.runs.requests import RunRequest

    logging.getLogger("bgruns").setLevel(logging.INFO)
    logging.getLogger("bgruns").addHandler(logging.NullHandler())
    if mode == "noop":
        telemetry.use(*_noop_providers(), mode="noop")
    elif mode == "distro":
        assert telemetry.configure() == "azure_monitor", "the distro did not start"
    assert telemetry.enabled() == (mode != "off")
    services = await in_process_services(connection, emulator_url)
    request = RunRequest(input="measure me", metadata={"emulator_duration_ms": "3600000"})

    async def start_one():
        with telemetry.incoming_request("POST /api/runs", {"traceparent": CALLER}, logger="bgruns.starting"):
            return (await services.starter.start(request)).run

    async def poll_one(message):
        with telemetry.consumed(
            "poll run", message, queue="runs-poll", logger="bgruns.polling", counter="poll_steps"
        ) as step:
            step.set(outcome=await services.poll_step.handle(message, 5))
        return step.fields["outcome"]

    async def message_of(run_id):
        run = await services.reader.get(run_id)
        return {"run_id": run.id, "seq": run.poll_seq, "nonce": run.poll_nonce, **telemetry.message_fields(run)}

    for _ in range(5):  # warm up clients, pools and the exporters
        await poll_one(await message_of((await start_one()).id))
    telemetry.flush()

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    before = cpu()
    started = [await start_one() for _ in range(runs)]
    telemetry.flush()
    start_ms = (cpu() - before) / runs * 1000
    messages = [await message_of(run.id) for run in started]
    before = cpu()
    outcomes = [await poll_one(message) for message in messages]
    telemetry.flush()
    poll_ms = (cpu() - before) / runs * 1000
    assert set(outcomes) == {"pending"}, set(outcomes)
    paired = (
        await paired_polls(telemetry, [run.id for run in started], message_of, poll_one, cpu) if mode != "off" else {}
    )
    await services.close()
    return {"start": round(start_ms, 3), "poll": round(poll_ms, 3), "hooks_us": await hooks_cost_us(cpu), **paired}


async def paired_polls(telemetry, run_ids, message_of, poll_one, cpu, rounds: int = 6, batch: int = 40) -> dict:
    """In this one process, batches of real poll steps with the service's telemetry on and off in turn (the
    exporters stay installed), so the machine's drift falls on both alike: the steadiest end-to-end figure. An
    "on" batch ends by exporting its spans (so their export is counted in it, in one request per batch, as the
    batch processor sends them); metrics are exported once a minute whatever the load, so not per batch."""
    from shared.telemetry.state import STATE

    on, off, cursor = [], [], 0
    for round_ in range(rounds):
        for enabled in (True, False) if round_ % 2 == 0 else (False, True):
            ids = [run_ids[(cursor + i) % len(run_ids)] for i in range(batch)]
            cursor += batch
            messages = [await message_of(run_id) for run_id in ids]
            STATE.enabled = enabled
            before = cpu()
            for message in messages:
                await poll_one(message)
            if enabled:
                STATE.tracer_provider.force_flush()
            (on if enabled else off).append((cpu() - before) / batch * 1000)
    STATE.enabled = True
    return {"paired_on": round(statistics.median(on), 3), "paired_off": round(statistics.median(off), 3)}


async def hooks_cost_us(cpu, steps: int = 3000) -> float:
    """The telemetry of one poll step alone, without storage or network (steadier than the difference of two
    noisy end-to-end figures on a shared machine): the consumer step, binding the run, the provider call's span
    through TracedBackend, the timeline entry with its annotation, the outcome, the log line, and the export
    (flushed, so its CPU is counted)."""
    from types import SimpleNamespace

    from shared import telemetry
    from shared.telemetry import Timeline

    class Backend:
        async def observe(self, response_id):
            return SimpleNamespace(response_id=response_id, status="in_progress", is_active=True, response={})

    backend = telemetry.traced_backend(Backend())
    run = SimpleNamespace(
        id="run_0123456789abcdef01234567",
        session_id=None,
        response_id="resp_x",
        traceparent=CALLER,
        tracestate="",
        next_poll_at=time.time(),
        timeline=Timeline(),
    )
    message = {"run_id": run.id, "seq": 1, "nonce": "n", "traceparent": CALLER}

    async def step():
        with telemetry.consumed(
            "poll run", message, queue="runs-poll", logger="bgruns.polling", counter="poll_steps"
        ) as current:
            telemetry.bind_run(run)
            await backend.observe(run.response_id)
            telemetry.record(run, "poll", provider_status="in_progress", next_poll_in=1.5)
            current.set(outcome="pending")
        run.timeline = Timeline()  # the real step reads the run afresh; keep the history short and equal

    for _ in range(200):
        await step()
    telemetry.flush()
    before = cpu()
    for _ in range(steps):
        await step()
    telemetry.flush()
    return round((cpu() - before) / steps * 1e6, 1)


if __name__ == "__main__":
    main()
