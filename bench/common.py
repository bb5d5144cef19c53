"""The local stack for benchmarks and chaos runs (local.stack.LocalStack with the bench's defaults) and the
helpers the benchmarks share: percentiles, metrics deltas, JSON output, bounded concurrency.

The webhook receiver is local/webhook_receiver.py: it records every request in the bench process, so the
chaos run's receiver outage (`stack.receiver.down()` closes the port, `up()` opens it again) loses nothing.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from local import stack as local_stack
from local.azurite import free_port  # noqa: F401 - part of this module's surface for the bench scripts

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TMP = RESULTS / "tmp"
new_secrets = local_stack.new_webhook_secrets


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def spread_seconds(seconds: float, index: int, n: int) -> float:
    """Run i of n lasts T x (0.9 .. 1.1), evenly spread, so completions fall at every phase of a poll interval
    (identical durations would make a poll chain's or a polling client's lag a single sample)."""
    return seconds * (0.9 + 0.2 * (index / max(1, n - 1)))


async def start_runs(
    client: httpx.AsyncClient, n: int, hook: str, metadata: Callable[[int], dict[str, str]]
) -> list[str]:
    """Start n runs at once (run i with `metadata(i)`), each sending its webhook to `hook`; their ids in order."""

    async def start(i: int) -> str:
        r = await client.post("/api/runs", json={"input": f"bench {i}", "webhook_url": hook, "metadata": metadata(i)})
        r.raise_for_status()
        return r.json()["id"]

    return list(await asyncio.gather(*(start(i) for i in range(n))))


# -- the stack ------------------------------------------------------------------------------------------------------
class LocalStack(local_stack.LocalStack):
    """local.stack.LocalStack as the benchmarks and chaos runs use it: the emulator in a subprocess (its CPU
    does not share the load generator's GIL), the counting storage proxy always started (`use_proxy` puts the
    host behind it; `switch_storage` moves it), logs in bench/results/tmp, a 3 s host grace period."""

    def __init__(
        self,
        name: str,
        host_env: dict[str, str] | None = None,
        emulator_config: dict[str, Any] | None = None,
        use_proxy: bool = False,
        secrets: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(
            name,
            env=host_env,
            emulator_in_thread=False,
            emulator_config=emulator_config,
            storage_proxy=True,
            through_proxy=use_proxy,
            webhook_secrets=secrets or new_secrets(),
            log_dir=TMP,
            host_grace_seconds=3,
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.webhook_secrets

    @property
    def api(self) -> str:
        return self.host.base_url

    def metrics(self) -> dict[str, Any]:
        return httpx.get(f"{self.api}/api/metrics", timeout=30).json()


wait_healthy = local_stack.wait_until_healthy


def metrics_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = set(before["storage_requests"]) | set(after["storage_requests"])
    by = {k: after["storage_requests"].get(k, 0) - before["storage_requests"].get(k, 0) for k in sorted(keys)}
    return {
        "storage_requests": {k: v for k, v in by.items() if v},
        "storage_total": sum(by.values()),
        "cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
        "max_rss_kib": after["max_rss_kib"],
    }


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


async def gather_limited(limit: int, coros) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
