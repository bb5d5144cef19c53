"""`make bench`: completion lag, provider calls, storage transactions, start throughput, poller capacity
and streaming, against the local stack, with the 2 s polling client as the baseline.

    .venv/bin/python -m bench.run_all [--quick] [--out bench/results]

Writes results.json, results.md and fig*.png under --out. See bench/README.md for what each figure
means and how it is measured. No time scaling: every run lasts its nominal duration in wall time
(the service's poll delays are whole-second queue visibility timeouts and the host's idle queue
polling is 2 s; neither can be scaled, so a scaled run would misstate the lag).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI

from shared.settings import SETTINGS

from .common import RESULTS, LocalStack, dump_json, metrics_delta, spread_seconds, start_runs, summary

HOST_OPS = {"receive", "delete_message", "update_message", "peek"}
TERMINAL = {"completed", "failed", "cancelled", "incomplete", "expired", "requires_action"}

# The service's production defaults for everything that shapes the lag (shared/settings/table.py), except the
# sweeper, which is switched off so the per-run storage figure holds only per-run work.
BENCH_HOST_ENV = {
    **{s.name: s.default for s in SETTINGS if s.name.startswith("POLL_") or s.name == "RUN_DEADLINE_SECONDS"},
    "AzureWebJobs.sweep_runs.Disabled": "true",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------
# 1-3: completion-detection lag, provider calls, storage transactions (+ the 2 s polling baseline)
# ------------------------------------------------------------------------------------------------------
def spread(duration_s: float, i: int, n: int) -> int:
    """Run i of n's duration in ms (common.spread_seconds): the 2 s baseline's lag must not be a constant."""
    return int(spread_seconds(duration_s, i, n) * 1000)


async def baseline_client(emu_url: str, tag: str, duration_ms: int, index: int) -> dict[str, Any]:
    """Agent Framework's documented loop: create with background=True, then retrieve every 2 s."""
    client = AsyncOpenAI(base_url=emu_url, api_key="bench", max_retries=0)
    try:
        response = await client.responses.create(
            model="gpt-4.1-mini",
            input="baseline",
            background=True,
            metadata={"emulator_duration_ms": str(duration_ms), "bench_baseline": tag, "bench_i": str(index)},
        )
        calls = 1
        deadline = time.monotonic() + duration_ms / 1000 + 120
        while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            response = await client.responses.retrieve(response.id)
            calls += 1
        return {"response_id": response.id, "detected_at": time.time(), "calls": calls, "status": response.status}
    finally:
        await client.close()


async def lag_window(stack: LocalStack, duration_s: float, n: int) -> dict[str, Any]:
    tag = f"lag{int(duration_s)}-{int(time.time())}"
    hook = f"{stack.receiver.url}/{tag}"
    before, counts0, t_begin = stack.metrics(), stack.storage_counts(), time.time()
    async with httpx.AsyncClient(base_url=stack.api, timeout=60) as client:
        baseline_tasks = [
            asyncio.create_task(baseline_client(stack.emulator.base_url, tag, spread(duration_s, i, n), i))
            for i in range(n)
        ]
        run_ids = await start_runs(
            client, n, hook, lambda i: {"emulator_duration_ms": str(spread(duration_s, i, n)), "bench": tag}
        )
        deadline = time.monotonic() + duration_s + 90
        while time.monotonic() < deadline:
            if len({r["run_id"] for r in stack.receiver.for_path(f"/{tag}") if r["verified"]}) >= n:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # let the last delivery's bookkeeping (save) land before the snapshot
        after, counts1, t_end = stack.metrics(), stack.storage_counts(), time.time()
        baseline = await asyncio.gather(*baseline_tasks)
        runs = await asyncio.gather(*(client.get(f"/api/runs/{rid}") for rid in run_ids))
    runs = [r.json() for r in runs]
    provider = {p["metadata"]["bg_run_id"]: p for p in stack.emulator.responses(bench=tag)}
    base_provider = {p["id"]: p for p in stack.emulator.responses(bench_baseline=tag)}
    first_hook: dict[str, float] = {}
    for rec in stack.receiver.for_path(f"/{tag}"):
        if rec["verified"] and rec["run_id"] and rec["run_id"] not in first_hook:
            first_hook[rec["run_id"]] = rec["at"]
    lag_storage, lag_hook, calls, unfinished = [], [], [], 0
    for run in runs:
        p = provider.get(run["id"])
        if p is None or run["completed_at"] is None or p["finished_at"] is None:
            unfinished += 1
            continue
        lag_storage.append(run["completed_at"] - p["finished_at"])
        if run["id"] in first_hook:
            lag_hook.append(first_hook[run["id"]] - p["finished_at"])
        c = p["counters"]
        calls.append(1 + c["retrieve"] + c["stream"] + c["cancel"])
    base_lag, base_calls = [], []
    for b in baseline:
        p = base_provider.get(b["response_id"])
        if p and p["finished_at"]:
            base_lag.append(b["detected_at"] - p["finished_at"])
            base_calls.append(b["calls"])
    delta = metrics_delta(before, after)
    counted = {k: counts1.get(k, 0) - counts0.get(k, 0) for k in set(counts1) | set(counts0)}
    counted = {k: v for k, v in sorted(counted.items()) if v}
    per_run = {k: v / n for k, v in counted.items()}
    window = t_end - t_begin
    idle = stack.idle_receive_rate * window  # the trigger's idle polling of its two queues in that window
    host_ops = sum(v for k, v in counted.items() if k.startswith("queue.") and k.split(".")[1] in HOST_OPS)
    service_ops = sum(counted.values()) - host_ops
    result = {
        "duration_s": duration_s,
        "runs": n,
        "unfinished": unfinished,
        "lag_to_storage_s": summary(lag_storage),
        "lag_to_webhook_s": summary(lag_hook),
        "provider_calls": summary(calls),
        "storage_per_run": per_run,
        "storage_per_run_total": sum(counted.values()) / n,
        "storage_per_run_service": service_ops / n,
        "storage_per_run_trigger": host_ops / n,
        "storage_per_run_trigger_net_of_idle": max(0.0, host_ops - idle) / n,
        "window_s": window,
        "metrics_endpoint_storage_total": delta["storage_total"],
        "host_cpu_s_per_run": delta["cpu_seconds"] / n,
        "baseline_lag_s": summary(base_lag),
        "baseline_provider_calls": summary(base_calls),
    }
    b50 = result["baseline_lag_s"]["p50"]
    result["ratio_lag_webhook_p50_vs_baseline"] = (result["lag_to_webhook_s"]["p50"] / b50) if b50 else None
    result["ratio_lag_storage_p50_vs_baseline"] = (result["lag_to_storage_s"]["p50"] / b50) if b50 else None
    bc = result["baseline_provider_calls"]["mean"]
    result["ratio_calls_vs_baseline"] = (result["provider_calls"]["mean"] / bc) if bc else None
    return result


# ------------------------------------------------------------------------------------------------------
# 4: POST /api/runs throughput and latency
# ------------------------------------------------------------------------------------------------------
async def throughput_level(stack: LocalStack, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=stack.api, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for _ in range(100_000):  # bounded; the clock ends it first
                if time.monotonic() >= stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/api/runs",
                        json={"input": "throughput", "metadata": {"emulator_duration_ms": "2000", "bench": "tput"}},
                    )
                    key = str(r.status_code)
                except httpx.HTTPError as error:
                    key = type(error).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[key] = statuses.get(key, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.monotonic() - started
    ok = statuses.get("202", 0) + statuses.get("200", 0)
    lat = summary([x * 1000 for x in latencies])
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "ok": ok,
        "statuses": statuses,
        "throughput_rps": ok / elapsed,
        "latency_ms": lat,
    }


# ------------------------------------------------------------------------------------------------------
# 5: poller capacity with many runs in flight
# ------------------------------------------------------------------------------------------------------


async def create_long_runs(
    stack: LocalStack, count: int, created_at: dict[str, float], time_limit: float, concurrency: int = 32
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors: dict[str, int] = {}
    started = time.monotonic()
    remaining = [count]
    async with httpx.AsyncClient(base_url=stack.api, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while remaining[0] > 0 and time.monotonic() - started < time_limit:
                remaining[0] -= 1
                try:
                    r = await client.post(
                        "/api/runs",
                        json={
                            "input": "capacity",
                            "metadata": {"emulator_duration_ms": "7000000", "bench": "cap"},
                            "deadline_seconds": 7200,
                        },
                    )
                    if r.status_code in (200, 202):
                        created_at[r.json()["id"]] = time.time()
                        continue
                    key = str(r.status_code)
                except httpx.HTTPError as error:
                    key = type(error).__name__
                errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"requested": count, "seconds": time.monotonic() - started, "errors": errors}


def overdue_count(stack: LocalStack, slack: float) -> int:
    """Runs in flight whose next poll is more than `slack` seconds overdue (read from the runs table)."""
    from azure.data.tables import TableClient

    table = TableClient.from_connection_string(stack.azurite.connection_string, "runs")
    cutoff = time.time() - slack
    n = 0
    for _ in table.query_entities(
        "(status eq 'queued' or status eq 'in_progress') and next_poll_at lt @c",
        parameters={"c": cutoff},
        select=["PartitionKey"],
    ):
        n += 1
        if n >= 100_000:
            break
    table.close()
    return n


def process_cpu(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of Azurite, the emulator and the host (each with its children)."""
    import psutil

    out = {}
    for name, pid in (
        ("azurite", stack.azurite.process.pid),
        ("emulator", stack.emulator.proc.pid),
        ("host", stack.host.pid),
    ):
        try:
            proc = psutil.Process(pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
            out[name] = total
        except psutil.Error:
            pass
    return out


async def capacity_window(stack: LocalStack, created_at: dict[str, float], window: float) -> dict[str, Any]:
    def cap_retrieves() -> int:
        return sum(p["counters"]["retrieve"] for p in stack.emulator.responses(bench="cap"))

    r0 = await asyncio.to_thread(cap_retrieves)
    procs = process_cpu(stack)
    m0, t0 = stack.metrics(), time.time()
    ages = [t0 + window / 2 - c for c in created_at.values()]
    await asyncio.sleep(window)
    m1, t1 = stack.metrics(), time.time()
    procs = {k: (v2 - procs.get(k, 0.0)) / (t1 - t0) for k, v2 in process_cpu(stack).items()}
    r1 = await asyncio.to_thread(cap_retrieves)
    overdue = await asyncio.to_thread(overdue_count, stack, 5.0)
    polls = r1 - r0
    d = metrics_delta(m0, m1)
    rate = polls / (t1 - t0)
    from .report import expected_polls_per_s

    expected = expected_polls_per_s(ages, t1 - t0)
    return {
        "in_flight": len(created_at),
        "window_s": t1 - t0,
        "ages_at_mid_window_s": sorted(round(a, 1) for a in ages),
        "polls": polls,
        "polls_per_s": rate,
        "expected_polls_per_s": expected,
        "keeping_up_ratio": rate / expected if expected else None,
        "overdue_runs_gt5s": overdue,
        "host_cpu_s": d["cpu_seconds"],
        "host_cpu_utilisation": d["cpu_seconds"] / (t1 - t0),
        "cpu_ms_per_poll": 1000 * d["cpu_seconds"] / polls if polls else None,
        "host_max_rss_mib": m1["max_rss_kib"] / 1024,
        "cpu_utilisation_by_process": procs,
    }


# ------------------------------------------------------------------------------------------------------
# 6: streaming
# ------------------------------------------------------------------------------------------------------
async def stream_direct(emu_url: str, meta: dict[str, str]) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=emu_url, api_key="bench", max_retries=0)
    t0 = time.time()
    first = last = None
    events = 0
    rid = None
    try:
        stream = await client.responses.create(
            model="gpt-4.1-mini", input="stream", background=True, stream=True, metadata=meta
        )
        async for event in stream:
            now = time.time()
            events += 1
            if rid is None and getattr(event, "response", None) is not None:
                rid = event.response.id
            if first is None and event.type == "response.output_text.delta":
                first = now
            last = now
    finally:
        await client.close()
    return {"t0": t0, "first_delta": first, "end": last, "events": events, "response_id": rid}


async def read_sse(response: httpx.Response, limit: int | None = None) -> dict[str, Any]:
    first = last = None
    events, last_id, name = 0, None, None
    async for line in response.aiter_lines():
        if line.startswith("id:"):
            last_id = int(line[3:].strip())
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            now = time.time()
            events += 1
            if first is None and name == "output_text.delta":
                first = now
            last = now
            if limit is not None and events >= limit:
                break
    return {"first_delta": first, "end": last, "events": events, "last_id": last_id}


async def stream_ours(
    stack: LocalStack, client: httpx.AsyncClient, meta: dict[str, str], limit: int | None = None
) -> dict[str, Any]:
    t0 = time.time()
    async with client.stream("POST", "/api/runs", json={"input": "stream", "stream": True, "metadata": meta}) as r:
        run_path = r.headers.get("location")
        out = await read_sse(r, limit)
    out.update(t0=t0, run_id=run_path.rsplit("/", 1)[-1] if run_path else None)
    return out


async def streaming(stack: LocalStack, quick: bool) -> dict[str, Any]:
    emu = stack.emulator
    samples = 3 if quick else 6
    result: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=stack.api, timeout=120) as client:
        # (a) unpaced: 2,000 deltas in 0.2 s of emulated time, so the emulator sends as fast as it can
        for label, conc in (("sequential", 1), ("concurrent8", 8)):
            for kind in ("direct", "ours"):
                rates, totals = [], []
                for i in range(samples if conc == 1 else 1):
                    tag = f"sx-{label}-{kind}-{i}-{int(time.time())}"
                    meta = {
                        "emulator_duration_ms": "200",
                        "emulator_output_chars": "16000",
                        "emulator_deltas": "2000",
                        "bench": tag,
                    }
                    t_start = time.time()
                    if kind == "direct":
                        outs = await asyncio.gather(*(stream_direct(emu.base_url, meta) for _ in range(conc)))
                    else:
                        outs = await asyncio.gather(*(stream_ours(stack, client, meta) for _ in range(conc)))
                    t_end = max(o["end"] for o in outs)
                    ev = sum(o["events"] for o in outs)
                    rates.append(ev / (t_end - t_start))
                    totals.append(ev)
                result[f"throughput_{label}_{kind}_events_per_s"] = summary(rates)
                result[f"events_per_stream_{label}_{kind}"] = totals[0] / conc
        # (b) paced: 100 deltas over 3 s; first-delta latency and terminal-event lag after finished_at
        for kind in ("direct", "ours"):
            first, term = [], []
            for i in range(samples):
                tag = f"sp-{kind}-{i}-{int(time.time())}"
                meta = {
                    "emulator_duration_ms": "3000",
                    "emulator_deltas": "100",
                    "emulator_output_chars": "800",
                    "bench": tag,
                }
                out = await (
                    stream_direct(emu.base_url, meta) if kind == "direct" else stream_ours(stack, client, meta)
                )
                p = emu.responses(bench=tag)[0]
                first.append((out["first_delta"] - p["started_at"]) * 1000 if p.get("started_at") else None)
                term.append((out["end"] - p["finished_at"]) * 1000)
            result[f"paced_first_delta_after_start_ms_{kind}"] = summary([x for x in first if x is not None])
            result[f"paced_terminal_after_finish_ms_{kind}"] = summary(term)
        # (c) resume: read 20 events, drop the connection, resume with starting_after
        live, done = [], []
        for i in range(samples):
            tag = f"sr-{i}-{int(time.time())}"
            meta = {
                "emulator_duration_ms": "6000",
                "emulator_deltas": "200",
                "emulator_output_chars": "1600",
                "bench": tag,
            }
            out = await stream_ours(stack, client, meta, limit=20)
            for bucket, wait in ((live, 0.0), (done, None)):
                if wait is None:  # after the run has finished: a replay from the provider
                    for _ in range(60):
                        if (await client.get(f"/api/runs/{out['run_id']}")).json()["status"] in TERMINAL:
                            break
                        await asyncio.sleep(0.5)
                t0 = time.perf_counter()
                async with client.stream(
                    "GET", f"/api/runs/{out['run_id']}/stream", params={"starting_after": out["last_id"]}
                ) as r:
                    got = await read_sse(r, limit=1)
                bucket.append((time.perf_counter() - t0) * 1000 if got["events"] else None)
        result["resume_first_event_ms_live"] = summary([x for x in live if x is not None])
        result["resume_first_event_ms_finished"] = summary([x for x in done if x is not None])
        d = result["paced_terminal_after_finish_ms_ours"]["p50"], result["paced_terminal_after_finish_ms_direct"]["p50"]
        result["relay_added_terminal_latency_ms_p50"] = d[0] - d[1]
    return result


# ------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import os

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def main_async(args) -> dict[str, Any]:
    quick = args.quick
    results: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": BENCH_HOST_ENV,
    }
    t_start = time.monotonic()
    phases = set(args.phases.split(","))
    stack = LocalStack("bench", host_env=dict(BENCH_HOST_ENV), use_proxy="lag" in phases).start()
    try:
        log(f"stack up: host {stack.api}, emulator {stack.emulator.base_url}")
        # warm-up (imports, first connections) outside every measurement
        async with httpx.AsyncClient(base_url=stack.api, timeout=60) as c:
            for _ in range(3):
                await c.post("/api/runs", json={"input": "warm", "metadata": {"emulator_duration_ms": "0"}})
        await asyncio.sleep(3)
    except BaseException:
        stack.stop()
        raise
    try:
        if "lag" in phases:
            c0 = stack.storage_counts()
            await asyncio.sleep(10 if quick else 20)
            c1 = stack.storage_counts()
            idle = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1 if c1.get(k, 0) != c0.get(k, 0)}
            idle_s = 10 if quick else 20
            stack.idle_receive_rate = sum(v for k, v in idle.items() if k == "queue.receive") / idle_s
            results["idle_storage_per_minute"] = {k: 60 * v / idle_s for k, v in idle.items()}
            log(f"idle storage requests/min: {results['idle_storage_per_minute']}")

            plan = [(1, 5), (10, 5)] if quick else [(1, 20), (10, 20), (60, 12), (300, 10)]
            results["lag"] = []
            for duration, n in plan:
                log(f"lag window: {n} runs of {duration} s (+{n} baseline clients)")
                res = await lag_window(stack, duration, n)
                results["lag"].append(res)
                log(
                    f"  lag->webhook p50 {res['lag_to_webhook_s']['p50']:.2f}s, baseline p50 "
                    f"{res['baseline_lag_s']['p50']:.2f}s, calls {res['provider_calls']['mean']:.1f} vs "
                    f"{res['baseline_provider_calls']['mean']:.1f}, storage/run {res['storage_per_run_total']:.1f}"
                )
                await asyncio.sleep(1)

            stack.switch_storage(proxied=False)  # the rest runs straight against Azurite (no proxy hop)
        if "streaming" in phases:
            log("streaming")
            results["streaming"] = await streaming(stack, quick)
            log(f"  {json.dumps({k: v for k, v in results['streaming'].items() if 'throughput' in k})[:400]}")

        if "throughput" in phases:
            results["throughput"] = []
            for clients in (1, 16, 64):
                res = await throughput_level(stack, clients, 4 if quick else 12)
                results["throughput"].append(res)
                log(
                    f"throughput {clients} clients: {res['throughput_rps']:.1f}/s, "
                    f"p50 {res['latency_ms']['p50']:.0f} ms p95 {res['latency_ms']['p95']:.0f} ms {res['statuses']}"
                )
                await asyncio.sleep(8)  # those 2 s runs finish and stop polling

        if "capacity" in phases:
            results["capacity"] = []
            created: dict[str, float] = {}
            targets = (100, 400) if quick else (1000, 10000)
            window = 15 if quick else 45
            for target in targets:
                log(f"capacity: creating runs up to {target} in flight")
                made = await create_long_runs(stack, target - len(created), created, time_limit=60 if quick else 330)
                await asyncio.sleep(5)
                res = await capacity_window(stack, created, window)
                res["creation"] = made
                results["capacity"].append(res)
                log(
                    f"  {res['in_flight']} in flight: {res['polls_per_s']:.1f} polls/s (backoff asks "
                    f"{res['expected_polls_per_s']:.1f}), cpu {res['cpu_ms_per_poll']} ms/poll, "
                    f"overdue {res['overdue_runs_gt5s']}, rss {res['host_max_rss_mib']:.0f} MiB"
                )
    finally:
        stack.stop()
    results["bench_wall_seconds"] = time.monotonic() - t_start
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmarks of the background-runs service (local stack).")
    parser.add_argument("--quick", action="store_true", help="a short version (~3 minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--phases",
        default="lag,streaming,throughput,capacity",
        help="comma list; a subset re-runs only those and merges into an existing results.json",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    wall = results["bench_wall_seconds"]
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "results.json"
    if set(args.phases.split(",")) != {"lag", "streaming", "throughput", "capacity"} and previous.exists():
        merged = json.loads(previous.read_text())
        for key in ("lag", "streaming", "throughput", "capacity"):
            if key in results:
                merged[key] = results[key]
        merged.setdefault("reruns", []).append(
            {"phases": args.phases, "started": results["started"], "wall_seconds": results["bench_wall_seconds"]}
        )
        results = merged
    dump_json(args.out / "results.json", results)
    from .report import write_markdown, write_plots

    (args.out / "results.md").write_text(write_markdown(results))
    write_plots(results, args.out)
    print((args.out / "results.md").read_text())
    log(f"done in {wall:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
