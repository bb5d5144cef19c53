"""Executor vs provider-background (issue 17): the same runs through RUN_BACKEND=background (the emulator's
Responses API in background mode, polled) and RUN_BACKEND=executor (the function app streams Chat Completions
itself and keeps the events in Table Storage).

For T = 10 and 60 s (output paced like a model at 50 tokens/s, 4 characters a token), per backend:
- lag: the model finished -> the run terminal in storage -> the webhook received;
- storage transactions per run (every billable request, counted by a proxy in front of Azurite: the service's
  own and the Functions trigger's, the latter also net of its idle polling), host CPU per run;
- the event log's rows and bytes per run (Azure's entity size formula) and its cost per 1,000 runs;
then, on live and finished runs: resume-to-first-event, the lag of a live follower at the end of a run, events/s
relayed by a replay, host CPU per relayed event, the log reads a live follower makes per second, and how long a
cancel takes to stop the model (while it streams, and while it is silent before its first token).

    .venv/bin/python -m bench.executor [--runs 10] [--durations 10,60] [--quick]

Writes bench/results/executor.json and executor.md. Standalone: uses bench.common's stack, changes nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
from azure.data.tables import TableClient

from .common import RESULTS, LocalStack, dump_json, metrics_delta, spread_seconds, start_runs, summary

TOKENS_PER_S, CHARS_PER_TOKEN = 50, 4
HOST_OPS = {"receive", "delete_message", "update_message", "peek"}
# Pay-as-you-go list prices, USD, Standard LRS, US regions (as published late 2025; check the Azure calculator):
TABLE_PER_10K_TRANSACTIONS = 0.00036
TABLE_PER_GB_MONTH = 0.045
QUEUE_PER_10K_OPERATIONS = 0.004
RETENTION_DAYS = 30


def metadata(tag: str, index: int, seconds: float) -> dict[str, str]:
    tokens = int(seconds * TOKENS_PER_S)
    return {
        "emulator_duration_ms": str(int(seconds * 1000)),
        "emulator_output_chars": str(tokens * CHARS_PER_TOKEN),
        "emulator_deltas": str(tokens),
        "emulator_bench": tag,
        "emulator_bench_i": str(index),
    }


def host_env(backend: str) -> dict[str, str]:
    # Production defaults for everything that shapes lag and cost; the sweeper off so the counts are per run.
    return {"RUN_BACKEND": backend, "AzureWebJobs.sweep_runs.Disabled": "true", "WEBHOOK_RETRY_SCHEDULE": "0,5,300"}


def entity_bytes(entity: dict[str, Any]) -> int:
    """Azure's size of a stored entity: 4 + 2*len(PK + RK) + per property 8 + 2*len(name) + value size
    (strings 4 + 2*UTF-16 units, numbers 8, booleans 1)."""
    size = 4 + 2 * (len(entity["PartitionKey"]) + len(entity["RowKey"]))
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        if isinstance(value, str):
            value_size = 4 + len(value.encode("utf-16-le"))
        elif isinstance(value, bool):
            value_size = 1
        else:
            value_size = 8
        size += 8 + 2 * len(name) + value_size
    return size


class Bench:
    def __init__(self, backend: str, runs: int, quick: bool) -> None:
        self.backend = backend
        self.runs = runs
        self.quick = quick
        self.stack = LocalStack(f"bench-exec-{backend}", host_env=host_env(backend), use_proxy=True)
        self.idle: dict[str, float] = {}

    def log(self, message: str) -> None:
        print(f"[{self.backend}] {message}", flush=True)

    # -- the model's finish times ---------------------------------------------------------------------------------
    def model_finished(self, tag: str, run_ids: list[str]) -> dict[str, float]:
        """run id -> when the model finished (the emulator's own record)."""
        if self.backend == "background":
            return {
                p["metadata"]["bg_run_id"]: p["finished_at"]
                for p in self.stack.emulator.responses(emulator_bench=tag)
                if p.get("finished_at")
            }
        rows = httpx.get(
            f"{self.stack.emulator.base_url}/_emulator/chat_completions",
            params={"knob.emulator_bench": tag},
            timeout=30,
        ).json()["data"]
        return {run_ids[int(r["knobs"]["emulator_bench_i"])]: r["finished_at"] for r in rows if not r["cut"]}

    # -- idle -----------------------------------------------------------------------------------------------------
    async def measure_idle(self) -> None:
        seconds = 10 if self.quick else 20
        c0, m0 = self.stack.storage_counts(), self.stack.metrics()
        await asyncio.sleep(seconds)
        c1, m1 = self.stack.storage_counts(), self.stack.metrics()
        self.idle = {
            "seconds": seconds,
            "receives_per_s": (c1.get("queue.receive", 0) - c0.get("queue.receive", 0)) / seconds,
            "cpu_per_s": (m1["cpu_seconds"] - m0["cpu_seconds"]) / seconds,
            "storage_per_minute": {
                k: 60 * (c1.get(k, 0) - c0.get(k, 0)) / seconds for k in c1 if c1.get(k, 0) != c0.get(k, 0)
            },
        }
        self.log(f"idle: {self.idle}")

    # -- lag, storage, CPU -------------------------------------------------------------------------------------------
    async def window(self, seconds: float) -> dict[str, Any]:
        n = self.runs
        tag = f"{self.backend}{int(seconds)}x{time.time_ns() % 10**9}"
        hook = f"{self.stack.receiver.url}/{tag}"
        counts0, metrics0, t_begin = self.stack.storage_counts(), self.stack.metrics(), time.time()
        async with httpx.AsyncClient(base_url=self.stack.api, timeout=60) as client:
            run_ids = await start_runs(client, n, hook, lambda i: metadata(tag, i, spread_seconds(seconds, i, n)))
            deadline = time.monotonic() + seconds + 120
            while time.monotonic() < deadline:
                if len({r["run_id"] for r in self.stack.receiver.for_path(f"/{tag}") if r["verified"]}) >= n:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # the last delivery's bookkeeping
            counts1, metrics1, t_end = self.stack.storage_counts(), self.stack.metrics(), time.time()
            runs = [r.json() for r in await asyncio.gather(*(client.get(f"/api/runs/{rid}") for rid in run_ids))]
        finished = self.model_finished(tag, run_ids)
        first_hook: dict[str, float] = {}
        for rec in self.stack.receiver.for_path(f"/{tag}"):
            if rec["verified"] and rec["run_id"] and rec["run_id"] not in first_hook:
                first_hook[rec["run_id"]] = rec["at"]
        to_terminal, to_webhook = [], []
        for run in runs:
            done = finished.get(run["id"])
            if done and run["completed_at"]:
                to_terminal.append(run["completed_at"] - done)
                if run["id"] in first_hook:
                    to_webhook.append(first_hook[run["id"]] - done)
        counted = {k: counts1.get(k, 0) - counts0.get(k, 0) for k in set(counts1) | set(counts0)}
        counted = {k: v for k, v in sorted(counted.items()) if v}
        trigger = sum(v for k, v in counted.items() if k.startswith("queue.") and k.split(".")[1] in HOST_OPS)
        window = t_end - t_begin
        delta = metrics_delta(metrics0, metrics1)
        result = {
            "duration_s": seconds,
            "runs": n,
            "statuses": sorted({r["status"] for r in runs}),
            "lag_model_to_terminal_s": summary(to_terminal),
            "lag_model_to_webhook_s": summary(to_webhook),
            "storage_per_run": {k: round(v / n, 2) for k, v in counted.items()},
            "storage_per_run_total": sum(counted.values()) / n,
            "storage_per_run_service": (sum(counted.values()) - trigger) / n,
            "storage_per_run_trigger": trigger / n,
            "storage_per_run_trigger_net_of_idle": max(0.0, trigger - self.idle["receives_per_s"] * window) / n,
            "host_cpu_s_per_run": delta["cpu_seconds"] / n,
            "host_cpu_s_per_run_net_of_idle": (delta["cpu_seconds"] - self.idle["cpu_per_s"] * window) / n,
            "window_s": window,
        }
        if self.backend == "executor":
            result["event_log"] = self.log_size(run_ids)
        self.log(
            f"T={seconds:g}s: terminal lag p50 {result['lag_model_to_terminal_s']['p50']}, webhook lag p50 "
            f"{result['lag_model_to_webhook_s']['p50']}, storage/run {result['storage_per_run_total']:.1f}, "
            f"cpu/run {result['host_cpu_s_per_run']:.3f}s"
        )
        return result

    def log_size(self, run_ids: list[str]) -> dict[str, Any]:
        table = TableClient.from_connection_string(self.stack.azurite.connection_string, "runevents")
        rows, sizes, events = [], [], []
        try:
            for run_id in run_ids:
                entities = list(table.query_entities("PartitionKey eq @pk", parameters={"pk": run_id}))
                rows.append(len(entities))
                sizes.append(sum(entity_bytes(dict(e)) for e in entities))
                events.append(sum(len(json.loads(e["events"])) for e in entities if e["RowKey"] != "head"))
        finally:
            table.close()
        return {"rows_per_run": summary(rows), "bytes_per_run": summary(sizes), "events_per_run": summary(events)}

    # -- streams ----------------------------------------------------------------------------------------------------
    async def first_event(self, client: httpx.AsyncClient, url: str, **params) -> tuple[float, int]:
        """Seconds from the request to the first event with an id; and that id."""
        t0 = time.perf_counter()
        async with client.stream("GET", url, params=params) as r:
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    return time.perf_counter() - t0, int(line[3:])
        raise AssertionError(f"no event from {url}")

    async def read_all(
        self, client: httpx.AsyncClient, method: str, url: str, **kwargs
    ) -> tuple[list[float], int, str | None]:
        """Arrival times (time.time) of every event with an id, their count, and the run id."""
        arrivals, run_id = [], None
        async with client.stream(method, url, **kwargs) as r:
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    arrivals.append(time.time())
                elif run_id is None and line.startswith("data:"):
                    run_id = json.loads(line[5:]).get("run_id")
        return arrivals, len(arrivals), run_id

    async def streams(self) -> dict[str, Any]:
        seconds, k = 10.0, 4 if self.quick else 6
        tag = f"{self.backend}s{time.time_ns() % 10**9}"
        out: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=self.stack.api, timeout=httpx.Timeout(60, read=120)) as client:
            # A live follower from the start: its reads per second (proxy) and its lag at the end of the run.
            counts0, t0 = self.stack.storage_counts(), time.time()
            followed = await asyncio.gather(
                *(
                    self.read_all(
                        client,
                        "POST",
                        "/api/runs",
                        json={"input": "follow", "stream": True, "metadata": metadata(tag, i, seconds)},
                    )
                    for i in range(k)
                )
            )
            counts1, t1 = self.stack.storage_counts(), time.time()
            run_ids = [run_id for _, _, run_id in followed]
            finished = self.model_finished(tag, run_ids)
            out["live_end_lag_s"] = summary(
                [arrivals[-1] - finished[run_id] for arrivals, _, run_id in followed if run_id in finished]
            )
            counted = {key: counts1.get(key, 0) - counts0.get(key, 0) for key in counts1}
            out["table_queries_per_follower_s"] = counted.get("table.query", 0) / k / (t1 - t0)
            out["events_per_run"] = summary([n for _, n, _ in followed])
            # Resume-to-first-event on live runs (from a position well behind the head) and on finished ones.
            live_ids = []
            for i in range(k):
                r = await client.post(
                    "/api/runs", json={"input": "resume", "metadata": metadata(tag + "r", i, seconds)}
                )
                live_ids.append(r.json()["id"])
            await asyncio.sleep(4.0)
            live = [await self.first_event(client, f"/api/runs/{rid}/stream", starting_after=5) for rid in live_ids]
            out["resume_to_first_event_live_s"] = summary([t for t, _ in live])
            done = [await self.first_event(client, f"/api/runs/{rid}/stream", starting_after=100) for rid in run_ids]
            for rid in live_ids:  # nothing else runs while the replays are measured
                while (await client.get(f"/api/runs/{rid}")).json()["continuation_token"] is not None:
                    await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)
            out["resume_to_first_event_finished_s"] = summary([t for t, _ in done])
            # Replays of finished runs: events/s relayed and host CPU per relayed event.
            metrics0 = self.stack.metrics()
            rates, total = [], 0
            for rid in run_ids:
                t = time.perf_counter()
                _, n, _ = await self.read_all(client, "GET", f"/api/runs/{rid}/stream")
                rates.append(n / (time.perf_counter() - t))
                total += n
            delta = metrics_delta(metrics0, self.stack.metrics())
            out["replay_events_per_s"] = summary(rates)
            out["host_cpu_ms_per_relayed_event"] = 1000 * delta["cpu_seconds"] / max(1, total)
            out["replay_storage_per_run"] = {key: v / len(run_ids) for key, v in delta["storage_requests"].items()}
        self.log(f"streams: {out}")
        return out

    async def cancels(self) -> dict[str, Any]:
        """Cancel request -> the model stopped: the emulator's cancelled_at (background) or the moment the chat
        call's connection is seen closed (executor; looked at every 20 ms)."""
        out: dict[str, list[float]] = {"streaming": [], "silent": []}
        async with httpx.AsyncClient(base_url=self.stack.api, timeout=30) as client:
            for i in range(4 if self.quick else 8):
                kind = "silent" if i % 2 else "streaming"
                tag = f"{self.backend}c{i}x{time.time_ns() % 10**9}"
                meta = {**metadata(tag, 0, 30.0), **({"emulator_queue_ms": "25000"} if kind == "silent" else {})}
                run = (await client.post("/api/runs", json={"input": "cancel me", "metadata": meta})).json()
                await asyncio.sleep(3.0)
                asked = time.time()
                await client.post(f"/api/runs/{run['id']}/cancel")
                out[kind].append(await self.stopped_at(tag, run["id"]) - asked)
        result = {kind: summary(values) for kind, values in out.items()}
        self.log(f"cancel -> model stopped: {result}")
        return result

    async def stopped_at(self, tag: str, run_id: str) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.backend == "background":
                rows = self.stack.emulator.responses(bg_run_id=run_id)
                if rows and rows[0].get("cancelled_at"):
                    return rows[0]["cancelled_at"]
            else:
                answer = await asyncio.to_thread(
                    httpx.get,
                    f"{self.stack.emulator.base_url}/_emulator/chat_completions",
                    params={"knob.emulator_bench": tag},
                    timeout=10,
                )
                rows = answer.json()["data"]
                if rows and rows[0]["disconnected"]:
                    return time.time()
            await asyncio.sleep(0.02)
        raise AssertionError(f"the model of {run_id} was not stopped")

    async def run(self, durations: list[float]) -> dict[str, Any]:
        await asyncio.to_thread(self.stack.start)
        try:
            await self.measure_idle()
            result: dict[str, Any] = {"idle": self.idle, "windows": []}
            for seconds in durations:
                result["windows"].append(await self.window(seconds))
            result["streams"] = await self.streams()
            result["cancel_to_model_stopped_s"] = await self.cancels()
            return result
        finally:
            await asyncio.to_thread(self.stack.stop)


def log_cost(windows_executor: list[dict], windows_background: list[dict]) -> list[dict[str, Any]]:
    """The event log's cost per 1,000 runs: the table transactions the executor adds over background mode,
    and the log's bytes kept for the retention period."""
    out = []
    for ex, bg in zip(windows_executor, windows_background, strict=True):
        table_ops = lambda w: sum(v for key, v in w["storage_per_run"].items() if key.startswith("table."))  # noqa: E731
        queue_ops = lambda w: sum(v for key, v in w["storage_per_run"].items() if key.startswith("queue."))  # noqa: E731
        added_table = table_ops(ex) - table_ops(bg)
        gb_month = ex["event_log"]["bytes_per_run"]["mean"] * 1000 / 1e9 * RETENTION_DAYS / 30.4
        out.append(
            {
                "duration_s": ex["duration_s"],
                "table_transactions_added_per_run": added_table,
                "queue_operations_added_per_run": queue_ops(ex) - queue_ops(bg),
                "transactions_usd_per_1000_runs": added_table * 1000 / 10_000 * TABLE_PER_10K_TRANSACTIONS,
                "capacity_gb_month_per_1000_runs": gb_month,
                "capacity_usd_per_1000_runs": gb_month * TABLE_PER_GB_MONTH,
            }
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Executor vs provider-background",
        "",
        f"{results['runs']} runs per backend and length, output paced at {TOKENS_PER_S} tokens/s "
        f"({CHARS_PER_TOKEN} chars/token), lengths spread over T x 0.9..1.1; production defaults, sweeper off. "
        "p50 (p95).",
        "",
        "| backend | T | model -> terminal | model -> webhook | storage/run (service + trigger net of idle) "
        "| host CPU/run (net of idle) |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda s: f"{s['p50']:.2f} s ({s['p95']:.2f})" if s["p50"] is not None else "-"  # noqa: E731
    for backend in ("background", "executor"):
        for w in results[backend]["windows"]:
            lines.append(
                f"| {backend} | {w['duration_s']:g} s | {fmt(w['lag_model_to_terminal_s'])} | "
                f"{fmt(w['lag_model_to_webhook_s'])} | {w['storage_per_run_service']:.0f} + "
                f"{w['storage_per_run_trigger_net_of_idle']:.0f} | {w['host_cpu_s_per_run']:.3f} s "
                f"({w['host_cpu_s_per_run_net_of_idle']:.3f}) |"
            )
    lines += [
        "",
        "| backend | resume->first event, live | finished | live follower lag at the end | replay events/s "
        "| host CPU per relayed event | table queries per live follower per s |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in ("background", "executor"):
        s = results[backend]["streams"]
        lines.append(
            f"| {backend} | {fmt(s['resume_to_first_event_live_s'])} | "
            f"{fmt(s['resume_to_first_event_finished_s'])} | {fmt(s['live_end_lag_s'])} | "
            f"{s['replay_events_per_s']['p50']:.0f} | {s['host_cpu_ms_per_relayed_event']:.2f} ms | "
            f"{s['table_queries_per_follower_s']:.2f} |"
        )
    lines += ["", "| backend | cancel -> model stopped, streaming | silent (before its first token) |", "|---|---|---|"]
    for backend in ("background", "executor"):
        c = results[backend]["cancel_to_model_stopped_s"]
        lines.append(f"| {backend} | {fmt(c['streaming'])} | {fmt(c['silent'])} |")
    lines += [
        "",
        "Event log (executor), per run and per 1,000 runs (Table LRS list prices: "
        f"${TABLE_PER_10K_TRANSACTIONS} per 10,000 transactions, ${TABLE_PER_GB_MONTH} per GB-month, "
        f"kept {RETENTION_DAYS} days):",
        "",
        "| T | rows/run | bytes/run | table transactions added/run | $ transactions /1000 runs "
        "| GB-month /1000 runs | $ capacity /1000 runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for w, c in zip(results["executor"]["windows"], results["log_cost"], strict=True):
        lines.append(
            f"| {w['duration_s']:g} s | {w['event_log']['rows_per_run']['mean']:.0f} | "
            f"{w['event_log']['bytes_per_run']['mean']:.0f} | {c['table_transactions_added_per_run']:.0f} | "
            f"{c['transactions_usd_per_1000_runs']:.4f} | {c['capacity_gb_month_per_1000_runs']:.4f} | "
            f"{c['capacity_usd_per_1000_runs']:.5f} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(runs: int, durations: list[float], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": runs, "durations": durations}
    for backend in ("background", "executor"):
        results[backend] = await Bench(backend, runs, quick).run(durations)
    results["log_cost"] = log_cost(results["executor"]["windows"], results["background"]["windows"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--durations", default="10,60")
    parser.add_argument("--quick", action="store_true", help="4 runs, T=10 only, shorter idle measurement")
    args = parser.parse_args(argv)
    durations = [10.0] if args.quick else [float(d) for d in args.durations.split(",")]
    runs = 4 if args.quick else args.runs
    started = time.monotonic()
    results = asyncio.run(main_async(runs, durations, args.quick))
    results["wall_s"] = round(time.monotonic() - started, 1)
    name = "executor-quick" if args.quick else "executor"
    dump_json((RESULTS / "tmp" if args.quick else RESULTS) / f"{name}.json", results)
    text = markdown(results)
    ((RESULTS / "tmp" if args.quick else RESULTS) / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
