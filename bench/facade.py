"""Benchmark of the Responses API facade (standalone: `python -m bench.facade [--seconds 15]`).

1. `GET /api/v1/responses/{id}` of ended runs, served from Table Storage (Azurite): latency p50/p99 and requests/s,
   one client at a time and 8 at a time, beside the native `GET /api/runs/{id}` on the same runs.
2. Stream relay overhead: the replay of one ended run's stream (about 2,000 events), read with the `openai` SDK
   straight from the emulator and through the facade (which relays it from the emulator).

CPU per request is the Functions host's own (user + system, from /proc via psutil), so it carries over to other
machines better than the absolute rates: every process here (Azurite, emulator, host, this load generator)
shares the machine's cores. Results: bench/results/facade.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import time
from typing import Any

import httpx
import openai
import psutil

from bench.common import RESULTS, LocalStack, dump_json, pct

MODEL = "gpt-4.1-mini"
KEY = secrets.token_urlsafe(32)


def host_cpu(stack: LocalStack) -> float:
    process = psutil.Process(stack.host.pid)
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


async def timed_gets(base: str, paths: list[str], headers: dict[str, str], seconds: float, concurrency: int):
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker(n: int) -> None:
            i = n
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.get(paths[i % len(paths)])
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                i += concurrency

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.monotonic() - started
    return latencies, elapsed


def measure_gets(
    stack: LocalStack, label: str, paths: list[str], headers: dict[str, str], seconds: float, concurrency: int
) -> dict[str, Any]:
    cpu_before = host_cpu(stack)
    latencies, elapsed = asyncio.run(timed_gets(stack.api, paths, headers, seconds, concurrency))
    cpu = host_cpu(stack) - cpu_before
    result = {
        "what": label,
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": 1000 * pct(latencies, 0.5),
        "p99_ms": 1000 * pct(latencies, 0.99),
        "requests_per_s": len(latencies) / elapsed,
        "host_cpu_ms_per_request": 1000 * cpu / len(latencies),
    }
    print(
        f"  {label:<34} c={concurrency}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"{result['requests_per_s']:.0f} req/s, host CPU {result['host_cpu_ms_per_request']:.2f} ms/req",
        flush=True,
    )
    return result


def read_stream(client: openai.OpenAI, response_id: str) -> tuple[int, float, float]:
    started = time.perf_counter()
    first = None
    count = 0
    for _ in client.responses.retrieve(response_id, stream=True):
        count += 1
        if first is None:
            first = time.perf_counter() - started
    return count, first, time.perf_counter() - started


def measure_streams(stack: LocalStack, repeats: int) -> dict[str, Any]:
    facade = openai.OpenAI(base_url=f"{stack.api}/api/v1", api_key=KEY, max_retries=0)
    direct = openai.OpenAI(base_url=stack.emulator.base_url, api_key="x", max_retries=0)
    knobs = {"emulator_duration_ms": "3000", "emulator_output_chars": "40000", "emulator_deltas": "2000"}
    run = facade.responses.create(model=MODEL, input="a long stream", background=True, stream=False, metadata=knobs)
    while run.status in ("queued", "in_progress"):
        time.sleep(0.5)
        run = facade.responses.retrieve(run.id)
    provider_id = stack.emulator.responses(bg_run_id=run.id)[0]["id"]
    out: dict[str, Any] = {}
    for label, client, ident in (("emulator directly", direct, provider_id), ("through the facade", facade, run.id)):
        read_stream(client, ident)  # warm-up
        cpu_before = host_cpu(stack)
        rows = [read_stream(client, ident) for _ in range(repeats)]
        cpu = host_cpu(stack) - cpu_before
        events = rows[0][0]
        totals = [total for _, _, total in rows]
        out[label] = {
            "events": events,
            "first_event_ms_p50": 1000 * pct([f for _, f, _ in rows], 0.5),
            "stream_ms_p50": 1000 * pct(totals, 0.5),
            "events_per_s": events / pct(totals, 0.5),
            "host_cpu_ms_per_stream": 1000 * cpu / repeats,
            "host_cpu_us_per_event": 1e6 * cpu / (repeats * events),
        }
        print(
            f"  {label:<20}: {events} events in {out[label]['stream_ms_p50']:.0f} ms (p50), first event "
            f"{out[label]['first_event_ms_p50']:.1f} ms, host CPU {out[label]['host_cpu_us_per_event']:.0f} us/event",
            flush=True,
        )
    direct_ms, facade_ms = out["emulator directly"]["stream_ms_p50"], out["through the facade"]["stream_ms_p50"]
    out["overhead"] = {
        "added_ms_per_stream": facade_ms - direct_ms,
        "added_us_per_event": 1000 * (facade_ms - direct_ms) / out["through the facade"]["events"],
        "ratio": facade_ms / direct_ms,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="length of each GET measurement")
    parser.add_argument("--runs", type=int, default=20, help="ended runs the GETs cycle through")
    parser.add_argument("--stream-repeats", type=int, default=5)
    args = parser.parse_args()
    stack = LocalStack(
        "facade-bench",
        host_env={
            "RESPONSES_API_KEYS": f"bench:{KEY}:operator",
            # only HTTP on this host: the sweeper's timer would add noise
            "AzureWebJobs.sweep_runs.Disabled": "true",
        },
    ).start()
    try:
        client = openai.OpenAI(base_url=f"{stack.api}/api/v1", api_key=KEY, max_retries=0)
        print(f"ending {args.runs} runs of 2,000 characters ...", flush=True)
        ids = [
            client.responses.create(
                model=MODEL, input=f"run {n}", metadata={"emulator_duration_ms": "100", "emulator_output_chars": "2000"}
            ).id
            for n in range(args.runs)
        ]
        assert all(client.responses.retrieve(i).status == "completed" for i in ids)
        bearer = {"Authorization": f"Bearer {KEY}"}
        gets = []
        for concurrency in (1, 8):
            gets.append(
                measure_gets(
                    stack,
                    "GET /api/v1/responses/{id}",
                    [f"/api/v1/responses/{i}" for i in ids],
                    bearer,
                    args.seconds,
                    concurrency,
                )
            )
            gets.append(
                measure_gets(
                    stack, "GET /api/runs/{id} (native)", [f"/api/runs/{i}" for i in ids], {}, args.seconds, concurrency
                )
            )
        print("stream replay (one ended run):", flush=True)
        streams = measure_streams(stack, args.stream_repeats)
    finally:
        stack.stop()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}
    dump_json(RESULTS / "facade.json", {"machine": machine, "gets": gets, "streams": streams})
    lines = ["| what | clients | p50 ms | p99 ms | requests/s | host CPU ms/request |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {g['what']} | {g['concurrency']} | {g['p50_ms']:.1f} | {g['p99_ms']:.1f} | {g['requests_per_s']:.0f} "
        f"| {g['host_cpu_ms_per_request']:.2f} |"
        for g in gets
    ]
    lines += [
        "",
        "| stream replay | events | stream ms (p50) | first event ms | events/s | host CPU us/event |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {s['events']} | {s['stream_ms_p50']:.0f} | {s['first_event_ms_p50']:.1f} | "
        f"{s['events_per_s']:.0f} | {s['host_cpu_us_per_event']:.0f} |"
        for label, s in streams.items()
        if label != "overhead"
    ]
    o = streams["overhead"]
    lines += [
        "",
        f"Relay overhead: +{o['added_ms_per_stream']:.0f} ms per stream, +{o['added_us_per_event']:.0f} us "
        f"per event ({o['ratio']:.2f}x). Machine: {machine}.",
    ]
    (RESULTS / "facade.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
