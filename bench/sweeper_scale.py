"""What one sweeper pass costs as the runs table grows (issue 12, "The sweeper at scale").

    .venv/bin/python -m bench.sweeper_scale [--sizes 1000,10000,100000] [--active 100] [--sweeps 5]
                                            [--label after]

On a fresh Azurite (free ports, its folder removed at the end) the storage is seeded the way the service
leaves it (shared.runs.store.RunStore, one entity per run; shared.runs.index.RunIndex for the open-work index)
with `--active` runs in progress and terminal runs up to each size in turn; after each size the sweeper runs
`--sweeps` times (after one warm-up pass) and every pass is measured: wall seconds, storage requests made by the
service's clients (shared.storage.STORAGE_REQUESTS), CPU seconds of this process and of the Azurite process.
Results: bench/results/sweeper_scale.json, under `--label` ("after"; a "before" figure already there is kept).

What is seeded: an active run is a run entity plus its row in the open-work index (a start writes the row
before the run); a terminal run whose webhook is settled is the run entity alone (its row is removed when
nothing is left to do). The active runs are healthy (next poll due in an hour), so a pass finds nothing to
repair: the figure is the pure cost of looking, which is what every pass pays.

Three functions are the seams to the service code, so a restructured shared/ only needs them adapted:
`build_context` (the service objects the sweeper gets), `run_one_sweep` (one pass) and `seed_run` (one run
written as the service leaves it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from local.azurite import Azurite, start_for_tests
from shared.composition import Services, build
from shared.provider import ResponsesBackend, open_provider
from shared.runs.index import RunIndex
from shared.runs.model import Run
from shared.runs.store import RunStore
from shared.runs.webhook_state import WebhookState
from shared.settings import Settings
from shared.storage import STORAGE_REQUESTS, open_storage

from .common import RESULTS, dump_json, new_secrets, summary

SWEEP_GRACE_SECONDS = 60  # the production default; nothing seeded is overdue by it


# -- the seams to the service code ---------------------------------------------------------------------------
@dataclass
class Context:
    services: Services
    store: RunStore
    index: RunIndex


def build_context(connection_string: str) -> Context:
    """The service's objects as the Functions entry points get them (shared.composition.build), plus the run
    store and open-work index to seed through."""
    env = {
        "AzureWebJobsStorage": connection_string,
        "MODEL_PROVIDER": "emulator",
        "EMULATOR_BASE_URL": "http://127.0.0.1:9/v1",  # never called: nothing is overdue
        "RUN_TOKEN_KEY": secrets.token_urlsafe(48),
        "WEBHOOK_SIGNING_SECRETS": " ".join(new_secrets()),
        "SWEEP_GRACE_SECONDS": str(SWEEP_GRACE_SECONDS),
    }
    settings = Settings.from_env(env)
    storage = open_storage(settings.storage)
    provider = open_provider(settings.provider)
    services = build(settings, storage, ResponsesBackend(provider), closers=(provider.close, storage.close))
    return Context(services, RunStore(storage.runs, storage.payloads), RunIndex(storage.index))


async def run_one_sweep(ctx: Context) -> dict[str, int]:
    """One pass of the `sweep_runs` timer."""
    return await ctx.services.sweeper.sweep()


async def seed_run(ctx: Context, run: Run) -> None:
    """The run as the service leaves it: an active run is in the open-work index (written before the run), a
    terminal one with its webhook settled is not."""
    if run.is_active:
        await ctx.index.mark_open(run.id)
    await ctx.store.create(run)


# -- what is seeded ----------------------------------------------------------------------------------------
OUTPUT_TEXT = ('Emulated reply to "summarise the quarterly report". ' + "lorem ipsum dolor sit amet " * 7)[:200]


def _request(run_id: str, index: int) -> dict[str, Any]:
    return {
        "model": "gpt-4.1-mini",
        "input": f"summarise the quarterly report #{index}",
        "metadata": {"customer": f"c{index % 97}", "bg_run_id": run_id},
        "store": True,
    }


def terminal_run(index: int, at: float) -> Run:
    """A run as `RunLifecycle.finish` and one delivered webhook leave it (half of them have a webhook)."""
    run_id = "run_" + secrets.token_hex(12)
    created = at - 3600 - index % 86400
    run = Run(
        id=run_id,
        status="completed",
        created_at=created,
        model="gpt-4.1-mini",
        request=_request(run_id, index),
        metadata={"customer": f"c{index % 97}"},
        response_id="resp_" + secrets.token_hex(24),
        completed_at=created + 42.0,
        poll_seq=9,
        poll_nonce=secrets.token_hex(6),
        poll_count=8,
        next_poll_at=None,
        deadline_at=created + 7200,
        result={
            "output": [
                {
                    "type": "message",
                    "id": "msg_" + secrets.token_hex(24),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": OUTPUT_TEXT, "annotations": []}],
                }
            ],
            "output_text": OUTPUT_TEXT,
            "error": None,
            "incomplete_details": None,
            "usage": {"input_tokens": 12, "output_tokens": 50, "total_tokens": 62},
            "required_action": None,
        },
    )
    if index % 2 == 0:
        run.webhook_url = "https://hooks.example.com/runs"
        run.webhook = WebhookState(
            id="msg_" + secrets.token_hex(12),
            state="delivered",
            seq=0,
            round_attempts=1,
            due_at=created + 43.0,
            attempts=[
                {
                    "at": "2025-01-01T00:00:00Z",
                    "ok": True,
                    "status_code": 204,
                    "error": None,
                    "duration_ms": 35,
                    "retry_after_seconds": None,
                    "gone": False,
                    "refused": False,
                }
            ],
        )
    return run


def active_run(index: int, at: float) -> Run:
    """A healthy run in progress: its next poll is due in an hour, so the sweeper has nothing to repair."""
    run_id = "run_" + secrets.token_hex(12)
    return Run(
        id=run_id,
        status="in_progress",
        created_at=at - 60,
        model="gpt-4.1-mini",
        request=_request(run_id, index),
        response_id="resp_" + secrets.token_hex(24),
        poll_seq=5,
        poll_nonce=secrets.token_hex(6),
        poll_count=5,
        next_poll_at=at + 3600,
        deadline_at=at + 7200,
        webhook_url="https://hooks.example.com/runs",
    )


async def seed(ctx: Context, make, count: int, start_index: int, concurrency: int) -> float:
    """Insert `count` runs with `concurrency` requests in flight; returns the seconds it took.

    Every run is its own partition (PartitionKey = run id), so entity group transactions (one partition
    per batch) cannot bundle them: many concurrent single inserts it is."""
    started, at = time.perf_counter(), time.time()
    queue: asyncio.Queue = asyncio.Queue()
    for index in range(start_index, start_index + count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            for attempt in range(5):
                try:
                    await seed_run(ctx, make(index, at))
                    break
                except Exception:  # Azurite busy: a short pause and again
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


# -- measuring ---------------------------------------------------------------------------------------------
def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _requests() -> Counter:
    """Storage requests so far by "service.METHOD" (STORAGE_REQUESTS also keys them by the counting function)."""
    by_method: Counter = Counter()
    for key, count in STORAGE_REQUESTS.items():
        by_method[key[-1] if isinstance(key, tuple) else key] += count
    return by_method


async def measure_sweeps(ctx: Context, azurite: psutil.Process, sweeps: int) -> dict[str, Any]:
    await run_one_sweep(ctx)  # warm-up: connections, first-query costs
    passes = []
    for _ in range(sweeps):
        before_requests, before_cpu, before_azurite = _requests(), _own_cpu(), _cpu_of(azurite)
        started = time.perf_counter()
        repaired = await run_one_sweep(ctx)
        seconds = time.perf_counter() - started
        requests = _requests()
        requests.subtract(before_requests)
        passes.append(
            {
                "seconds": seconds,
                "storage_requests": {k: v for k, v in requests.items() if v},
                "storage_requests_total": sum(requests.values()),
                "cpu_seconds": _own_cpu() - before_cpu,
                "azurite_cpu_seconds": _cpu_of(azurite) - before_azurite,
                "repaired": repaired,
            }
        )
    return {
        "passes": passes,
        "seconds": summary([p["seconds"] for p in passes]),
        "storage_requests": summary([p["storage_requests_total"] for p in passes]),
        "cpu_seconds": summary([p["cpu_seconds"] for p in passes]),
        "azurite_cpu_seconds": summary([p["azurite_cpu_seconds"] for p in passes]),
        "repaired_anything": any(v for p in passes for k, v in p["repaired"].items() if k != "open"),
        "open_runs_seen": sorted({p["repaired"].get("open") for p in passes}, key=str),
    }


async def run(sizes: list[int], active: int, sweeps: int, concurrency: int) -> dict[str, Any]:
    azurite: Azurite = start_for_tests(f"sweeper-scale-{os.getpid()}")
    ctx = None
    try:
        ctx = build_context(azurite.connection_string)
        await ctx.services.storage.ensure_resources()
        node = psutil.Process(azurite.process.pid)
        results: dict[str, Any] = {"active_runs": active, "sizes": []}
        results["active_seed_seconds"] = round(await seed(ctx, active_run, active, 0, concurrency), 2)
        seeded = 0
        for size in sorted(sizes):
            added = size - seeded
            seconds = await seed(ctx, terminal_run, added, seeded, concurrency)
            print(
                f"seeded {added} terminal runs in {seconds:.1f} s ({added / seconds:.0f}/s); "
                f"{size} terminal + {active} active",
                flush=True,
            )
            seeded = size
            figures = await measure_sweeps(ctx, node, sweeps)
            figures.update(
                terminal_runs=size,
                seeded_now=added,
                seed_seconds=round(seconds, 1),
                seed_rate_per_s=round(added / seconds),
                azurite_rss_mib=round(node.memory_info().rss / 2**20),
            )
            print(
                f"  sweep: {figures['seconds']['p50']:.3f} s p50 / {figures['seconds']['max']:.3f} s max, "
                f"{figures['storage_requests']['p50']:.0f} storage requests, "
                f"{figures['cpu_seconds']['p50']:.3f} s CPU here, "
                f"{figures['azurite_cpu_seconds']['p50']:.2f} s CPU in Azurite",
                flush=True,
            )
            results["sizes"].append(figures)
        return results
    finally:
        if ctx is not None:
            await ctx.services.close()
        azurite.stop()
        shutil.rmtree(azurite.data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="terminal runs, comma-separated")
    parser.add_argument("--active", type=int, default=100)
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64, help="inserts in flight while seeding")
    parser.add_argument("--out", default=str(RESULTS / "sweeper_scale.json"))
    parser.add_argument(
        "--label", default="after", help="the key the figures go under in --out (other keys already there are kept)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = time.perf_counter()
    results = asyncio.run(run(sizes, args.active, args.sweeps, args.concurrency))
    results.update(
        command=f"python -m bench.sweeper_scale --sizes {args.sizes} --active {args.active} --sweeps {args.sweeps}",
        machine={"cpus": os.cpu_count(), "python": platform.python_version()},
        wall_seconds=round(time.perf_counter() - started, 1),
        code="Sweeper.sweep() in shared/runs/sweeping.py: one query of the open-work index "
        "(runindex, partition `open`) and a point read per open run",
    )
    out = Path(args.out)
    dump_json(out, {**_kept(out), args.label: results})
    print(f"wrote {args.out} under {args.label!r} ({results['wall_seconds']} s)")


def _kept(path: Path) -> dict[str, Any]:
    """What the results file already holds, by label. The first figures (two full-table scans per pass, before
    the open-work index) were written without a label: they are the "before"."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {"before": data} if "sizes" in data else data


if __name__ == "__main__":
    main()
