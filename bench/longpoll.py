"""Polling callers (issue 26): how soon a caller that polls learns that its run ended, and at what cost, for a
caller that honours Retry-After, one that long-polls (`Prefer: wait=60`) and the 2-second loop of Agent
Framework's background-responses sample.

    .venv/bin/python -m bench.longpoll [--durations 10,60,300] [--runs 8,6,4] [--completion push|poll] [--quick]

One stack (Azurite, emulator, webhook receiver, Functions host) with the production defaults and the sweeper
off; `push` (the default: what `make run` and a deployment with provider webhooks use) has the emulator send
signed provider webhooks. For each run length T the three callers take turns (one window each, so the host's CPU
and storage requests are theirs alone), n runs each, every run's caller a task of its own doing over HTTP what
a real caller does:
- `retry_after`: sleep the answer's Retry-After, GET /api/runs/{id}, again until the run has ended;
- `long_poll`: GET /api/runs/{id} with `Prefer: wait=60`, again at once until the run has ended;
- `loop_2s`: sleep 2 s, GET, again until the run has ended.
Per run: lag from the provider's end (the emulator's `finished_at`) to the caller holding the ended run, and its
GETs (after the start). Per window: the host's CPU and its storage requests by the reads (`get_run`), per run.
Results: bench/results/longpoll.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from .common import (
    RESULTS,
    LocalStack,
    dump_json,
    metrics_delta,
    spread_seconds,
    summary,
)
from .completion import HOST_ENV, new_secret

CALLERS = ("retry_after", "long_poll", "loop_2s")
LONG_POLL_SECONDS = 60
GOALS = "long_poll p95 <= 0.5 s at <= T/60 + 2 GETs; retry_after p95 <= 1 s"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_stack(completion: str) -> LocalStack:
    env, emulator_config = dict(HOST_ENV), {}
    if completion == "push":
        secret = new_secret()
        env["PROVIDER_WEBHOOK_SECRETS"] = secret
        emulator_config["webhook_secret"] = secret
    stack = LocalStack(f"longpoll-{completion}", host_env=env, emulator_config=emulator_config)
    if completion == "push":
        stack.emulator_config["webhook_url"] = f"http://127.0.0.1:{stack.ports.host}/api/provider/webhooks"
    return stack


async def follow(kind: str, client: httpx.AsyncClient, started: httpx.Response) -> tuple[str, float, int]:
    """One caller: poll its run its way until it has ended; (run id, when it saw the end, GETs)."""
    run, headers, gets = started.json(), started.headers, 0
    while run["continuation_token"] is not None:
        request_headers = {}
        if kind == "retry_after":
            await asyncio.sleep(float(headers["retry-after"]))
        elif kind == "loop_2s":
            await asyncio.sleep(2.0)
        else:
            request_headers["Prefer"] = f"wait={LONG_POLL_SECONDS}"
        answer = await client.get(f"/api/runs/{run['id']}", headers=request_headers, timeout=LONG_POLL_SECONDS + 30)
        answer.raise_for_status()
        run, headers, gets = answer.json(), answer.headers, gets + 1
    return run["id"], time.time(), gets


async def window(stack: LocalStack, kind: str, duration_s: float, n: int) -> dict[str, Any]:
    tag = f"{kind}-{int(duration_s)}-{time.time_ns()}"
    before = stack.metrics()
    reads_before = _read_requests(before)
    async with httpx.AsyncClient(base_url=stack.api, timeout=60) as client:

        async def one(i: int) -> tuple[str, float, int]:
            ms = int(spread_seconds(duration_s, i, n) * 1000)
            started = await client.post(
                "/api/runs", json={"input": f"bench {i}", "metadata": {"emulator_duration_ms": str(ms), "bench": tag}}
            )
            started.raise_for_status()
            return await follow(kind, client, started)

        seen = await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(1.0)  # the host's bookkeeping of the last answers lands before the snapshot
    after = stack.metrics()
    delta, reads = metrics_delta(before, after), _read_requests(after) - reads_before
    finished = {p["metadata"]["bg_run_id"]: p["finished_at"] for p in stack.emulator.responses(bench=tag)}
    lags = [at - finished[run_id] for run_id, at, _ in seen if finished.get(run_id) is not None]
    return {
        "caller": kind,
        "duration_s": duration_s,
        "runs": n,
        "lag_s": summary(lags),
        "gets_per_run": summary([float(gets) for _, _, gets in seen]),
        "get_budget": duration_s / 60 + 2,
        "read_storage_requests_per_run": reads / n,
        "storage_requests_per_run": delta["storage_total"] / n,
        "host_cpu_ms_per_run": delta["cpu_seconds"] / n * 1000,
    }


def _read_requests(metrics: dict[str, Any]) -> int:
    """The storage requests the host made serving GET /api/runs/{id} so far (its re-reads while it holds one)."""
    return sum(metrics.get("storage_requests_by_function", {}).get("get_run", {}).values())


def markdown(results: list[dict[str, Any]], completion: str) -> str:
    header = (
        "| T | caller | lag p50 / p95 / max (s) | GETs per run p50 / max | storage requests of the reads per run "
        "| host CPU ms per run |"
    )
    rows = [f"Completion `{completion}`. Goals: {GOALS}.", "", header, "|---|---|---|---|---|---|"]
    for r in results:
        lag, gets = r["lag_s"], r["gets_per_run"]
        rows.append(
            f"| {r['duration_s']:.0f} s | {r['caller']} | {lag['p50']:.2f} / {lag['p95']:.2f} / "
            f"{lag['max']:.2f} | {gets['p50']:.1f} / {gets['max']:.0f} | "
            f"{r['read_storage_requests_per_run']:.1f} | {r['host_cpu_ms_per_run']:.0f} |"
        )
    return "\n".join(rows)


async def run(durations: list[float], counts: list[int], completion: str, out: Path) -> list[dict[str, Any]]:
    stack = build_stack(completion)
    results: list[dict[str, Any]] = []
    try:
        stack.start()
        for duration_s, n in zip(durations, counts, strict=True):
            for kind in CALLERS:
                log(f"T = {duration_s:.0f} s, {n} runs, {kind}")
                result = await window(stack, kind, duration_s, n)
                results.append(result)
                log(
                    f"  lag p50 {result['lag_s']['p50']:.2f} p95 {result['lag_s']['p95']:.2f}; GETs p50 "
                    f"{result['gets_per_run']['p50']}; read storage/run {result['read_storage_requests_per_run']:.1f}"
                )
                dump_json(out / "longpoll.json", {"completion": completion, "goals": GOALS, "results": results})
    finally:
        stack.stop()
    (out / "longpoll.md").write_text(markdown(results, completion) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durations", default="10,60,300")
    parser.add_argument("--runs", default="8,6,4")
    parser.add_argument("--completion", choices=("push", "poll"), default="push")
    parser.add_argument("--quick", action="store_true", help="T = 10 and 30 s, 5 runs each")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    durations = [10.0, 30.0] if args.quick else [float(d) for d in args.durations.split(",")]
    counts = [5, 5] if args.quick else [int(c) for c in args.runs.split(",")]
    if len(durations) != len(counts):
        parser.error(f"--durations names {len(durations)} lengths, --runs {len(counts)} counts: one count per length")
    out = args.out if not args.quick or args.out != RESULTS else RESULTS / "tmp"
    results = asyncio.run(run(durations, counts, args.completion, out))
    print(markdown(results, args.completion))
    print(json.dumps({"results": len(results)}))


if __name__ == "__main__":
    main()
