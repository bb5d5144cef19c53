"""CPU per start and per poll step of the service's own code, in process (issue 16: <= 4 ms per start,
<= 3 ms per poll).

Azurite and the emulator run as separate processes, so this process's CPU time (`time.process_time`) is the
service's alone: the composition root's collaborators with the real storage clients and the real `openai`
client, exactly what a Functions worker runs, minus the host.

    .venv/bin/python -m bench.hot_paths [--runs 200] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx

from local.azurite import free_port, start_for_tests
from shared.composition import build
from shared.provider import ResponsesBackend, open_provider
from shared.runs.requests import RunRequest
from shared.settings import Settings
from shared.storage import open_storage

RESULTS = Path(__file__).resolve().parent / "results"


def start_emulator() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "local.emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            httpx.get(f"{url}/_emulator/stats", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("emulator did not start")


async def in_process_services(connection: str, emulator_url: str):
    """The composition root's collaborators as a worker builds them: real storage and `openai` clients."""
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": connection,
            "EMULATOR_BASE_URL": emulator_url,
            "RUN_TOKEN_KEY": "k" * 48,
            "WEBHOOK_SIGNING_SECRETS": "",
        }
    )
    storage = open_storage(settings.storage)
    await storage.ensure_resources()
    provider = open_provider(settings.provider)
    return build(settings, storage, ResponsesBackend(provider), closers=(provider.close, storage.close))


async def measure(runs: int, connection: str, emulator_url: str, profile: bool, output_chars: int) -> dict:
    services = await in_process_services(connection, emulator_url)
    request = RunRequest(
        input="measure me", metadata={"emulator_duration_ms": "3600000", "emulator_output_chars": str(output_chars)}
    )
    # Warm up the clients and connection pools (a worker's steady state).
    for _ in range(5):
        await services.starter.start(request)
    messages = []
    profiler = cProfile.Profile(time.process_time) if profile else None

    async def timed(coro_factory, count):
        usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if profiler:
            profiler.enable()
        results = [await coro_factory(i) for i in range(count)]
        if profiler:
            profiler.disable()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        per = lambda seconds: round(seconds / count * 1000, 2)  # noqa: E731
        return results, {
            "cpu_ms": per(usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime),
            "user_ms": per(usage1.ru_utime - usage0.ru_utime),
            "system_ms": per(usage1.ru_stime - usage0.ru_stime),
            "wall_ms": per(time.perf_counter() - wall0),
        }

    started, start_cost = await timed(lambda i: services.starter.start(request), runs)
    # One poll message per run, as the queue would deliver it (sequentially: CPU per step, not throughput).
    for result in started:
        run = await services.reader.get(result.run.id)
        messages.append({"run_id": run.id, "seq": run.poll_seq, "nonce": run.poll_nonce})
    outcomes, poll_cost = await timed(lambda i: services.poll_step.handle(messages[i], 5), runs)
    assert set(outcomes) == {"pending"}, set(outcomes)
    await services.close()
    report = {"runs": runs, "output_chars": output_chars, "start": start_cost, "poll": poll_cost}
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(os.environ.get("PROFILE_FILTER", ""), 45)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--output-chars", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    azurite = start_for_tests(f"hot-paths-{time.time_ns()}")
    emulator, url = start_emulator()
    try:
        report = asyncio.run(measure(args.runs, azurite.connection_string, url, args.profile, args.output_chars))
    finally:
        emulator.terminate()
        azurite.stop()
    print(json.dumps(report, indent=2))
    if not args.profile:
        (RESULTS / "hot_paths.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
