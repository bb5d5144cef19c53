"""What ONE instance's HTTP functions sustain, at the per-instance concurrency limit infra/ deploys and at 1.

Flex Consumption runs a Python app's HTTP functions at a per-instance concurrency of 1 unless
`functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency` is set (infra: the
`httpPerInstanceConcurrency` parameter). This measures, on the local Functions host with the same limit
(FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY):

- concurrent SSE streams (`POST /api/runs` with `stream: true`): time to the first event, how much longer than
  the provider's own duration a stream takes (stretch), the longest gap between two events;
- starts per second (`POST /api/runs`, background, 202): throughput and latency under a fixed number of clients;

each with the host process's CPU per request beside the absolute figures. Only the HTTP functions run on the host
(the queue and timer functions are disabled), as on Flex where they get instances of their own; the runs are not
polled, so nothing but the HTTP path is measured.

    .venv/bin/python -m bench.http_concurrency [--quick] [--limit N]    # N: default from infra/main.bicep

Results: bench/results/http_concurrency.{json,md}. Starts Azurite (free ports), the emulator (in a thread of this
process) and the host itself, and stops all of them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psutil

from local.azurite import Azurite, start_for_tests
from local.emulator.server import EmulatorServer
from local.functions_host.process import HostProcess

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
LOGS = RESULTS / "tmp"
NON_HTTP_FUNCTIONS = ("poll_run", "deliver_webhook", "sweep_runs")


def deployed_default_limit() -> int:
    """httpPerInstanceConcurrency's default in infra/main.bicep: the figure the benchmark is about."""
    text = (REPO / "infra" / "main.bicep").read_text(encoding="utf-8")
    return int(re.search(r"^param httpPerInstanceConcurrency int = (\d+)", text, re.M).group(1))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process and its children (Azurite's node may fork)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class CpuMeter:
    def __init__(self, **processes: int) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.start = {name: cpu_seconds(p) for name, p in self.procs.items()}
        self.t0 = time.monotonic()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        used = {name: cpu_seconds(p) - self.start[name] for name, p in self.procs.items()}
        return {
            "wall_s": wall,
            **{f"{name}_cpu_s": v for name, v in used.items()},
            **{f"{name}_cpu_util": v / wall for name, v in used.items()},
        }


# ---- the stack --------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    azurite: Azurite
    emulator: EmulatorServer

    def host(self, limit: int | None, tag: str) -> HostProcess:
        env = {
            "AzureWebJobsStorage": self.azurite.connection_string,
            "MODEL_PROVIDER": "emulator",
            "EMULATOR_BASE_URL": self.emulator.base_url,
            "RUN_TOKEN_KEY": secrets.token_urlsafe(48),
            "WEBHOOK_SIGNING_SECRETS": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
            "PYTHON_ENABLE_INIT_INDEXING": "1",
            "FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY": "" if limit is None else str(limit),
            **{f"AzureWebJobs.{name}.Disabled": "true" for name in NON_HTTP_FUNCTIONS},
        }
        LOGS.mkdir(parents=True, exist_ok=True)
        return HostProcess(
            REPO, env=env, log_path=LOGS / f"http-concurrency-{tag}-{os.getpid()}.log", grace_seconds=3
        ).start(timeout=60)


def start_stack() -> Stack:
    azurite = start_for_tests(f"http-concurrency-{os.getpid()}")
    try:
        # max_deltas lifted so a stream can carry a real model's token rate (tens of deltas a second).
        emulator = EmulatorServer(port=0, time_scale=1.0, max_deltas=5000).start_in_thread()
    except BaseException:
        azurite.stop()
        raise
    return Stack(azurite, emulator)


def stop_stack(stack: Stack) -> None:
    stack.emulator.stop()
    stack.azurite.stop()
    shutil.rmtree(stack.azurite.data_dir, ignore_errors=True)


# ---- streams ----------------------------------------------------------------------------------------------------


async def one_stream(client: httpx.AsyncClient, duration_ms: int, deltas: int) -> dict[str, Any]:
    body = {
        "input": "stream",
        "stream": True,  # 4 characters a delta, about one token
        "metadata": {
            "emulator_duration_ms": str(duration_ms),
            "emulator_deltas": str(deltas),
            "emulator_output_chars": str(4 * deltas),
        },
    }
    t0 = time.monotonic()
    first, stamps, last_event = None, [], ""
    try:
        async with client.stream("POST", "/api/runs", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"ok": False, "status": response.status_code}
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    now = time.monotonic()
                    first = first if first is not None else now - t0
                    stamps.append(now)
                    last_event = line[6:].strip()
    except httpx.TransportError as error:
        return {"ok": False, "status": type(error).__name__}
    end = time.monotonic() - t0
    gaps = [b - a for a, b in pairwise(stamps)]
    return {
        "ok": last_event == "run.completed",
        "first_event_s": first,
        "total_s": end,
        "stretch": end / (duration_ms / 1000),
        "events": len(stamps),
        "max_gap_s": max(gaps, default=0.0),
    }


async def streams(host: HostProcess, azurite_pid: int, n: int, duration_ms: int, deltas: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=host.base_url, timeout=httpx.Timeout(120), limits=limits) as client:
        meter = CpuMeter(host=host.pid, azurite=azurite_pid, bench=os.getpid())
        outs = await asyncio.gather(*(one_stream(client, duration_ms, deltas) for _ in range(n)))
        cpu = meter.read()
    ok = [o for o in outs if o["ok"]]
    firsts = [o["first_event_s"] for o in ok]
    return {
        "streams": n,
        "duration_s": duration_ms / 1000,
        "deltas": deltas,
        "completed": len(ok),
        "first_event_p50_s": pct(firsts, 0.5),
        "first_event_max_s": max(firsts, default=None),
        "stretch_p50": pct([o["stretch"] for o in ok], 0.5),
        "stretch_max": max((o["stretch"] for o in ok), default=None),
        "max_gap_p95_s": pct([o["max_gap_s"] for o in ok], 0.95),
        "events_per_stream": statistics.mean(o["events"] for o in ok) if ok else None,
        "host_cpu_ms_per_stream": 1000 * cpu["host_cpu_s"] / n,
        "host_cpu_ms_per_stream_second": 1000 * cpu["host_cpu_s"] / (n * duration_ms / 1000),
        "host_cpu_ms_per_event": 1000 * cpu["host_cpu_s"] / max(sum(o["events"] for o in ok), 1),
        "host_cpu_util": cpu["host_cpu_util"],
        "azurite_cpu_util": cpu["azurite_cpu_util"],
        "bench_cpu_util": cpu["bench_cpu_util"],
        "wall_s": cpu["wall_s"],
    }


# ---- starts -----------------------------------------------------------------------------------------------------


async def starts(host: HostProcess, azurite_pid: int, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[int | str, int] = {}
    body = {"input": "start", "metadata": {"emulator_duration_ms": "600000"}}  # stays queued: a pure start
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                status = (await client.post("/api/runs", json=body)).status_code
            except httpx.TransportError as error:  # counted, not fatal: the figure says how often
                status = type(error).__name__
            if status == 202:
                latencies.append(time.monotonic() - t0)
            else:
                errors[status] = errors.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=host.base_url, timeout=httpx.Timeout(120), limits=limits) as client:
        meter = CpuMeter(host=host.pid, azurite=azurite_pid, bench=os.getpid())
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        cpu = meter.read()
    n = len(latencies)
    return {
        "clients": clients,
        "seconds": cpu["wall_s"],
        "starts": n,
        "errors": errors,
        "starts_per_s": n / cpu["wall_s"],
        "latency_p50_ms": 1000 * pct(latencies, 0.5),
        "latency_p95_ms": 1000 * pct(latencies, 0.95),
        "latency_max_ms": 1000 * max(latencies),
        "host_cpu_ms_per_start": 1000 * cpu["host_cpu_s"] / max(n, 1),
        "azurite_cpu_ms_per_start": 1000 * cpu["azurite_cpu_s"] / max(n, 1),
        "host_cpu_util": cpu["host_cpu_util"],
        "azurite_cpu_util": cpu["azurite_cpu_util"],
        "bench_cpu_util": cpu["bench_cpu_util"],
    }


# ---- plan -------------------------------------------------------------------------------------------------------


def plan(limit: int, quick: bool) -> list[tuple[str, int | None, str, dict[str, Any]]]:
    """(label, host limit, kind, arguments).

    At the limit and at 1; then without a limit, to show where one instance tops out (streams) and how start
    throughput grows with concurrency (starts).
    """
    d = 8_000 if quick else 20_000
    ceiling = [2 * limit, 4 * limit] if quick else [2 * limit, 4 * limit, 8 * limit]
    secs = 6.0 if quick else 15.0
    curve = [1, 4, limit, 4 * limit] if not quick else [4, 4 * limit]
    fast = d // 20  # deltas for 50 a second: a fast model streaming one token per delta
    return [
        (f"limit {limit}", limit, "streams", {"n": limit, "duration_ms": d, "deltas": 40}),
        (f"limit {limit}", limit, "streams", {"n": 2 * limit, "duration_ms": d, "deltas": 40}),
        (f"limit {limit}", limit, "streams", {"n": limit, "duration_ms": d, "deltas": fast}),
        (f"limit {limit}", limit, "starts", {"clients": 2 * limit, "seconds": secs}),
        ("limit 1", 1, "streams", {"n": 4, "duration_ms": d // 4, "deltas": 10}),
        ("limit 1", 1, "starts", {"clients": 8, "seconds": secs}),
        *[("unlimited", None, "streams", {"n": n, "duration_ms": d, "deltas": 40}) for n in ceiling],
        ("unlimited", None, "streams", {"n": 2 * limit, "duration_ms": d, "deltas": fast}),
        *[("unlimited", None, "starts", {"clients": c, "seconds": secs}) for c in curve],
    ]


async def run(limit: int, quick: bool) -> dict[str, Any]:
    stack = start_stack()
    results: dict[str, Any] = {"limit": limit, "quick": quick, "machine": machine(), "runs": []}
    host: HostProcess | None = None
    host_limit: Any = object()
    try:
        for label, wanted, kind, args in plan(limit, quick):
            if host is None or wanted != host_limit:
                if host is not None:
                    host.stop()
                host, host_limit = None, wanted
                host = stack.host(wanted, label.replace(" ", "-"))
                await warm_up(host)
            measure = streams if kind == "streams" else starts
            out = await measure(host, stack.azurite.process.pid, **args)
            row = {"config": label, "kind": kind, **out}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        if host is not None:
            host.stop()
        stop_stack(stack)
    return results


async def warm_up(host: HostProcess) -> None:
    async with httpx.AsyncClient(base_url=host.base_url, timeout=60) as client:
        for _ in range(3):
            (await client.post("/api/runs", json={"input": "warm"})).raise_for_status()


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "python": sys.version.split()[0]}


# ---- report -----------------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = [
        f"Per-instance HTTP figures (deployed default limit {results['limit']}; machine: "
        f"{results['machine']['cpus']} shared cores, load average at start "
        f"{', '.join(f'{x:.1f}' for x in results['machine']['loadavg_at_start'])})",
        "",
        "Streams (`POST /api/runs`, `stream: true`):",
        "",
        "| host limit | streams | provider duration, deltas | completed | first event p50 / max | stretch p50 / max | "
        "max gap p95 | host CPU per stream (per stream-second, per event) | CPU util host / Azurite / bench |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if r["kind"] == "streams":
            lines.append(
                f"| {r['config']} | {r['streams']} | {r['duration_s']:g} s, {r['deltas']} | "
                f"{r['completed']}/{r['streams']} | "
                f"{f(r['first_event_p50_s'])} / {f(r['first_event_max_s'])} s | {f(r['stretch_p50'])} / "
                f"{f(r['stretch_max'])} | {f(r['max_gap_p95_s'])} s | {f(r['host_cpu_ms_per_stream'], '.0f')} ms "
                f"({f(r['host_cpu_ms_per_stream_second'], '.1f')}, {f(r['host_cpu_ms_per_event'], '.2f')} ms) | "
                f"{100 * r['host_cpu_util']:.0f} / "
                f"{100 * r['azurite_cpu_util']:.0f} / {100 * r['bench_cpu_util']:.0f} % |"
            )
    lines += [
        "",
        "Starts (`POST /api/runs`, background, 202; closed loop):",
        "",
        "| host limit | clients | starts/s | latency p50 / p95 | host CPU per start | Azurite CPU per start | "
        "CPU util host / Azurite / bench | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if r["kind"] == "starts":
            lines.append(
                f"| {r['config']} | {r['clients']} | {r['starts_per_s']:.1f} | {r['latency_p50_ms']:.0f} / "
                f"{r['latency_p95_ms']:.0f} ms | {r['host_cpu_ms_per_start']:.1f} ms | "
                f"{r['azurite_cpu_ms_per_start']:.1f} ms | {100 * r['host_cpu_util']:.0f} / "
                f"{100 * r['azurite_cpu_util']:.0f} / {100 * r['bench_cpu_util']:.0f} % | {r['errors'] or '-'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_concurrency", description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="default: httpPerInstanceConcurrency in infra")
    parser.add_argument("--quick", action="store_true", help="shorter streams and runs (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for http_concurrency.{json,md}")
    args = parser.parse_args(argv)
    limit = args.limit or deployed_default_limit()
    results = asyncio.run(run(limit, args.quick))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_concurrency.json").write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    (args.out / "http_concurrency.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
