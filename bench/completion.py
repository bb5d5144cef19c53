"""Completion without the wait (issue 16): lag, provider calls, storage, CPU and cost per run for each completion
strategy, side by side with the 2-second client loop of Agent Framework's background-responses sample.

    .venv/bin/python -m bench.completion [--durations 10,60,300] [--runs 20,12,10] [--quick]

For each run length T, four stacks run at once, each its own Azurite (through the counting storage proxy),
emulator, webhook receiver and Functions host with the production defaults, the sweeper off:
- `poll`: the poll chain (backoff 1 s x1.5 to 10 s);
- `push`: the emulator sends signed provider webhooks to /api/provider/webhooks; the chain is the safety net
  (30 s x1.5 to 120 s);
- `push_drop10`: the same with 10 % of the provider's webhooks dropped;
- `watch`: each poll step holds the provider's stream (window 240 s).
Beside them, one client per run does what the sample does: create with background=True, retrieve every 2 s.

Per run: lag from the provider's end (`finished_at`) to the run's end in storage and to the caller's webhook
(and, for push, to the provider's webhook reaching the app), provider calls (create + retrieve + stream + cancel,
the emulator's counters), storage transactions (proxy counts / runs; the trigger's idle polling included, and
net of it), function-seconds (the host log's invocation durations / runs), host CPU (/api/metrics / runs), and
an estimated cost per 1,000 runs at list prices (below). Results: bench/results/completion.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx

from shared.settings import SETTINGS

from .common import RESULTS, LocalStack, dump_json, metrics_delta, start_runs, summary
from .run_all import baseline_client, spread

# Pay-as-you-go list prices, USD, US regions, late 2025 (check the Azure pricing calculator for yours).
PRICE_PER_GB_SECOND = 0.000026  # Flex Consumption, on demand, while executing
INSTANCE_GB = 2.0  # instanceMemoryMB 2048 (infra default)
PRICE_PER_EXECUTION = 0.40 / 1_000_000
PRICE_PER_STORAGE_TRANSACTION = 0.004 / 10_000  # Table and Queue, LRS, per operation

HOST_ENV = {
    **{s.name: s.default for s in SETTINGS if s.name.startswith("POLL_") or s.name == "RUN_DEADLINE_SECONDS"},
    "AzureWebJobs.sweep_runs.Disabled": "true",
    "AzureWebJobs.purge_expired.Disabled": "true",
}
EXECUTED = re.compile(
    r"^\[(?P<at>[^\]]+)\] Executed 'Functions\.(?P<fn>\w+)' \((?P<outcome>\w+), "
    r"Id=[^,]+, Duration=(?P<ms>\d+)ms\)"
)
QUEUE_HOST_OPS = ("queue.receive", "queue.delete_message", "queue.update_message", "queue.peek")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def build_stacks() -> dict[str, LocalStack]:
    stacks: dict[str, LocalStack] = {}
    for name in ("poll", "push", "push_drop10", "watch"):
        env = dict(HOST_ENV)
        emulator_config: dict[str, Any] = {}
        if name.startswith("push"):
            secret = new_secret()
            env["PROVIDER_WEBHOOK_SECRETS"] = secret
            emulator_config["webhook_secret"] = secret
            if name == "push_drop10":
                emulator_config["webhook_drop_rate"] = 0.1
        if name == "watch":
            env.update(COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="240")
        stack = LocalStack(f"completion-{name}", host_env=env, emulator_config=emulator_config, use_proxy=True)
        if name.startswith("push"):
            stack.emulator_config["webhook_url"] = f"http://127.0.0.1:{stack.ports.host}/api/provider/webhooks"
        stacks[name] = stack
    return stacks


def function_seconds(log_path: Path, since: float, until: float) -> dict[str, float]:
    """Seconds of invocations per function that ended in [since, until] (the host log's Duration)."""
    from datetime import datetime

    totals: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = EXECUTED.match(line)
        if not match:
            continue
        at = datetime.fromisoformat(match["at"].replace("Z", "+00:00")).timestamp()
        if since <= at <= until:
            totals[match["fn"]] = totals.get(match["fn"], 0.0) + int(match["ms"]) / 1000
    return totals


async def window(name: str, stack: LocalStack, duration_s: float, n: int, idle_rate: float) -> dict[str, Any]:
    tag = f"{name}-{int(duration_s)}-{int(time.time())}"
    hook = stack.hook_url(tag)
    before, counts0, t_begin = stack.metrics(), stack.storage_counts(), time.time()
    async with httpx.AsyncClient(base_url=stack.api, timeout=60) as client:
        run_ids = await start_runs(
            client, n, hook, lambda i: {"emulator_duration_ms": str(spread(duration_s, i, n)), "bench": tag}
        )
        deadline = time.monotonic() + duration_s * 1.1 + 200  # push with a lost webhook waits for the safety net
        while time.monotonic() < deadline:
            if len({r["run_id"] for r in stack.received(tag) if r["verified"]}) >= n:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # the last delivery's bookkeeping lands
        after, counts1, t_end = stack.metrics(), stack.storage_counts(), time.time()
        runs = [r.json() for r in await asyncio.gather(*(client.get(f"/api/runs/{rid}") for rid in run_ids))]
    provider = {p["metadata"]["bg_run_id"]: p for p in stack.emulator.responses(bench=tag)}
    first_hook: dict[str, float] = {}
    for rec in stack.received(tag):
        if rec["verified"] and rec["run_id"] and rec["run_id"] not in first_hook:
            first_hook[rec["run_id"]] = rec["at"]
    lag_storage, lag_hook, lag_event, calls = [], [], [], []
    for run in runs:
        p = provider.get(run["id"])
        if p is None or run["completed_at"] is None or p["finished_at"] is None:
            continue
        lag_storage.append(run["completed_at"] - p["finished_at"])
        if run["id"] in first_hook:
            lag_hook.append(first_hook[run["id"]] - p["finished_at"])
        deliveries = (p.get("webhook") or {}).get("deliveries") or []
        attempts = [
            a for d in deliveries for a in d.get("attempts", []) if a.get("status") and 200 <= a["status"] < 300
        ]
        if attempts:
            lag_event.append(min(a["at"] for a in attempts) - p["finished_at"])
        c = p["counters"]
        calls.append(1 + c["retrieve"] + c["stream"] + c["cancel"])
    counted = {k: counts1.get(k, 0) - counts0.get(k, 0) for k in set(counts1) | set(counts0)}
    total_ops = sum(v for v in counted.values() if v > 0)
    host_ops = sum(v for k, v in counted.items() if k.startswith(QUEUE_HOST_OPS))
    elapsed = t_end - t_begin
    idle = idle_rate * elapsed
    seconds = function_seconds(stack.host.log_path, t_begin, t_end)
    executions = sum(
        1
        for line in stack.host.log_path.read_text(errors="replace").splitlines()
        if (m := EXECUTED.match(line)) and t_begin <= _ts(m["at"]) <= t_end
    )
    storage_per_run = max(0.0, total_ops - idle) / n
    fn_seconds_per_run = sum(seconds.values()) / n
    cost = 1000 * (
        fn_seconds_per_run * INSTANCE_GB * PRICE_PER_GB_SECOND
        + executions / n * PRICE_PER_EXECUTION
        + storage_per_run * PRICE_PER_STORAGE_TRANSACTION
    )
    return {
        "strategy": name,
        "duration_s": duration_s,
        "runs": n,
        "finished": len(lag_storage),
        "lag_to_storage_s": summary(lag_storage),
        "lag_to_webhook_s": summary(lag_hook),
        "lag_to_provider_event_s": summary(lag_event),
        "provider_calls": summary(calls),
        "storage_per_run": total_ops / n,
        "storage_per_run_net_of_idle_polling": storage_per_run,
        "storage_trigger_ops_per_run": host_ops / n,
        "function_seconds_per_run": fn_seconds_per_run,
        "function_seconds_by_function": seconds,
        "executions_per_run": executions / n,
        "host_cpu_ms_per_run": metrics_delta(before, after)["cpu_seconds"] / n * 1000,
        "cost_per_1000_runs_usd": cost,
    }


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def baseline(emulator_url: str, duration_s: float, n: int, tag: str, stack: LocalStack) -> dict[str, Any]:
    results = await asyncio.gather(*(baseline_client(emulator_url, tag, spread(duration_s, i, n), i) for i in range(n)))
    provider = {p["id"]: p for p in stack.emulator.responses(bench_baseline=tag)}
    lag, calls = [], []
    for b in results:
        p = provider.get(b["response_id"])
        if p and p["finished_at"]:
            lag.append(b["detected_at"] - p["finished_at"])
            calls.append(b["calls"])
    return {
        "strategy": "client_loop_2s",
        "duration_s": duration_s,
        "runs": n,
        "lag_s": summary(lag),
        "provider_calls": summary(calls),
    }


def idle_receive_rate(stack: LocalStack, seconds: float = 20.0) -> float:
    """The trigger's idle polling of its queues (storage operations per second with nothing to do)."""
    c0 = stack.storage_counts()
    time.sleep(seconds)
    c1 = stack.storage_counts()
    return sum(max(0, c1.get(k, 0) - c0.get(k, 0)) for k in c1) / seconds


def markdown(results: list[dict[str, Any]]) -> str:
    rows = [
        "| T | strategy | lag p50 / p95 / max (s) | provider calls (p50) | storage ops/run (net) | fn-s/run | "
        "host CPU ms/run | $/1,000 runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["strategy"] == "client_loop_2s":
            lag = r["lag_s"]
            rows.append(
                f"| {r['duration_s']:.0f} s | 2-s client loop | {lag['p50']:.2f} / {lag['p95']:.2f} / "
                f"{lag['max']:.2f} | {r['provider_calls']['p50']:.1f} | - | - | - | - |"
            )
            continue
        lag = r["lag_to_webhook_s"]
        rows.append(
            f"| {r['duration_s']:.0f} s | {r['strategy']} | {lag['p50']:.2f} / {lag['p95']:.2f} / "
            f"{lag['max']:.2f} | {r['provider_calls']['p50']:.1f} | "
            f"{r['storage_per_run_net_of_idle_polling']:.1f} | {r['function_seconds_per_run']:.2f} | "
            f"{r['host_cpu_ms_per_run']:.0f} | {r['cost_per_1000_runs_usd']:.4f} |"
        )
    return "\n".join(rows)


async def run(durations: list[float], counts: list[int], out: Path) -> list[dict[str, Any]]:
    stacks = build_stacks()
    results: list[dict[str, Any]] = []
    try:
        for stack in stacks.values():
            stack.start()
        idle = {name: idle_receive_rate(stack) for name, stack in stacks.items()}
        log(f"stacks up; idle storage ops/s: {idle}")
        for duration_s, n in zip(durations, counts, strict=True):
            log(f"T = {duration_s:.0f} s, {n} runs per strategy, all strategies and the 2-s loop at once")
            tag = f"baseline-{int(duration_s)}-{int(time.time())}"
            done = await asyncio.gather(
                *(window(name, stack, duration_s, n, idle[name]) for name, stack in stacks.items()),
                baseline(stacks["poll"].emulator.base_url, duration_s, n, tag, stacks["poll"]),
            )
            results.extend(done)
            for r in done:
                lag = r.get("lag_to_webhook_s") or r.get("lag_s")
                log(
                    f"  {r['strategy']}: lag p50 {lag['p50']}, p95 {lag['p95']}; calls p50 {r['provider_calls']['p50']}"
                )
            dump_json(
                out / "completion.json",
                {
                    "results": results,
                    "idle_storage_ops_per_s": idle,
                    "prices": {
                        "gb_second": PRICE_PER_GB_SECOND,
                        "execution": PRICE_PER_EXECUTION,
                        "storage_transaction": PRICE_PER_STORAGE_TRANSACTION,
                        "instance_gb": INSTANCE_GB,
                    },
                },
            )
    finally:
        for stack in stacks.values():
            stack.stop()
    (out / "completion.md").write_text(markdown(results) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durations", default="10,60,300")
    parser.add_argument("--runs", default="20,12,10")
    parser.add_argument("--quick", action="store_true", help="T = 10 s only, 6 runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    durations = [10.0] if args.quick else [float(d) for d in args.durations.split(",")]
    counts = [6] if args.quick else [int(c) for c in args.runs.split(",")]
    if len(durations) != len(counts):
        parser.error(f"--durations names {len(durations)} durations but --runs {len(counts)} run counts")
    results = asyncio.run(run(durations, counts, args.out))
    print(markdown(results))
    print(json.dumps({"results": len(results)}))


if __name__ == "__main__":
    main()
