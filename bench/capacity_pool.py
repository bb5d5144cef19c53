"""Capacity II (issue 24): a pool of two deployments, a "PTU" before a "PAYG", and an outage of the first mid-run.

`python -m bench.capacity --deployments [--quick]`. One stack (Azurite, the emulator serving "ptu" and "payg" on
two ports in a subprocess, the host) with PROVIDER_DEPLOYMENTS naming both: ptu priority 0 with a budget of `ptu`
creates a minute, payg priority 1 with `payg` a minute (each the emulator's quota for that deployment, a rolling
minute; the host paces each deployment at its budget). At t0 `runs` runs are submitted at once through the native
API (each lasting `run_seconds` at the provider), and `sessions` sessions, whose first turns completed on ptu
before t0, wait; at t0 + `down_at` ptu goes down (its port refuses connections) and each session submits its next
turn; at t0 + `down_at` + `down_for` ptu comes back.

Measured (the provider's own records: every response of both deployments, by `created_at`):
- creates per minute by deployment before the outage, during it and after it, against the budgets' sum;
- whether ptu was used before payg (the first creates) and how soon after the outage began payg took every start
  (the last ptu create, the first payg create after it);
- the runs in flight on ptu when it went down: all completed, after it came back (or at their deadline);
- the sessions' next turns: created on ptu only, after it came back;
- nothing lost (every run completed) and exactly one provider response per run (across both deployments).

Results: bench/results/capacity-deployments.json (or `--out`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.settings import declared_settings

from .common import RESULTS, LocalStack, dump_json, free_port, gather_limited


@dataclass(frozen=True)
class PoolProfile:
    ptu: int  # creates a minute
    payg: int
    runs: int
    sessions: int
    run_seconds: float
    down_at: float  # seconds after t0
    down_for: float


PROFILES = {
    "full": PoolProfile(ptu=60, payg=120, runs=480, sessions=6, run_seconds=20, down_at=60, down_for=120),
    "quick": PoolProfile(ptu=30, payg=60, runs=60, sessions=3, run_seconds=5, down_at=20, down_for=40),
}


def deployments_setting(p: PoolProfile, urls: dict[str, str]) -> str:
    return json.dumps(
        [
            {"name": "ptu", "endpoint": urls["ptu"], "provider": "emulator", "requests_per_minute": p.ptu},
            {
                "name": "payg",
                "endpoint": urls["payg"],
                "provider": "emulator",
                "priority": 1,
                "requests_per_minute": p.payg,
            },
        ]
    )


def make_stack(p: PoolProfile) -> LocalStack:
    ptu_port, payg_port = free_port(), free_port()
    quota = {"quota_window_s": 60.0}
    stack = LocalStack(
        f"capacity-pool-{time.time_ns()}",
        host_env={
            "POLL_MAX_DELAY_SECONDS": "5",
            "RUN_DEADLINE_SECONDS": "1800",
            "SWEEP_SCHEDULE": next(s.default for s in declared_settings() if s.name == "SWEEP_SCHEDULE"),
        },
        emulator_config={
            "deployments": {
                "ptu": {"port": ptu_port, "rpm_limit": p.ptu, **quota},
                "payg": {"port": payg_port, "rpm_limit": p.payg, **quota},
            }
        },
    )
    urls = {"ptu": f"http://127.0.0.1:{ptu_port}/v1", "payg": f"http://127.0.0.1:{payg_port}/v1"}
    stack.env_overrides["PROVIDER_DEPLOYMENTS"] = deployments_setting(p, urls)
    return stack


class PoolBench:
    def __init__(self, profile: PoolProfile) -> None:
        self.p = profile
        self.tag = f"pool-{time.time_ns()}"
        self.session_homes: list[str | None] = []  # where each session's first turn ran

    async def run(self) -> dict[str, Any]:
        stack = make_stack(self.p)
        await asyncio.to_thread(stack.start)
        try:
            async with httpx.AsyncClient(base_url=stack.api, timeout=60) as client:
                return await self._measure(stack, client)
        finally:
            await asyncio.to_thread(stack.stop)

    async def _start(self, client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
        metadata = {"emulator_duration_ms": str(int(self.p.run_seconds * 1000)), "bench": self.tag}
        body = {"input": "pool bench", "metadata": metadata, **fields}
        for _ in range(30):  # a start the host cannot take now (a 503 while a deployment is failing) is retried
            answer = await client.post("/api/runs", json=body)
            if answer.status_code in (200, 202):
                return answer.json()
            await asyncio.sleep(1)
        answer.raise_for_status()
        raise AssertionError("unreachable")

    @staticmethod
    async def _get(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = (await client.get(f"/api/runs/{run_id}")).json()
        return answer

    async def _wait(self, client: httpx.AsyncClient, run_ids: list[str], timeout: float) -> dict[str, dict]:
        """Each run once it ended (or, past `timeout`, as it stands)."""
        finals: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while True:
            going = [r for r in run_ids if r not in finals]
            for run in await gather_limited(16, [self._get(client, r) for r in going]):
                if isinstance(run, BaseException):  # a read cut on a loaded machine: read again next round
                    continue
                if run["status"] not in ("queued", "in_progress") or time.monotonic() >= deadline:
                    finals[run["id"]] = run
            if len(finals) == len(run_ids):
                return finals
            await asyncio.sleep(2)

    async def _measure(self, stack: LocalStack, client: httpx.AsyncClient) -> dict[str, Any]:
        p = self.p
        sessions = [(await client.post("/api/sessions")).json()["id"] for _ in range(p.sessions)]
        firsts = []
        for session in sessions:  # one per ptu slot, so that each starts on ptu
            firsts.append(await self._start(client, session_id=session))
            await asyncio.sleep(60 / p.ptu + 0.5)
        first_finals = await self._wait(client, [f["id"] for f in firsts], timeout=120)
        self.session_homes = [first_finals[f["id"]].get("deployment") for f in firsts]
        t0 = time.time()
        burst = await gather_limited(32, [self._start(client) for _ in range(p.runs)])
        submitted_s = time.time() - t0
        await asyncio.sleep(max(0.0, t0 + p.down_at - time.time()))
        down_at = time.time()
        await asyncio.to_thread(stack.emulator.take_down, "ptu", "refuse")
        in_flight_on_ptu = [
            r["id"]
            for r in await gather_limited(32, [self._get(client, b["id"]) for b in burst])
            if r["status"] in ("queued", "in_progress") and r.get("deployment") == "ptu" and r["provider_response_id"]
        ]
        turns = [await self._start(client, session_id=s) for s in sessions]
        await asyncio.sleep(max(0.0, down_at + p.down_for - time.time()))
        await asyncio.to_thread(stack.emulator.bring_up, "ptu")
        up_at = time.time()
        ids = [b["id"] for b in burst] + [t["id"] for t in turns]
        finals = await self._wait(client, ids, timeout=1800)
        records = {name: await asyncio.to_thread(stack.emulator.responses, name) for name in ("ptu", "payg")}
        return self._report(t0, down_at, up_at, submitted_s, burst, turns, in_flight_on_ptu, finals, records)

    def _report(
        self,
        t0: float,
        down_at: float,
        up_at: float,
        submitted_s: float,
        burst: list[dict],
        turns: list[dict],
        in_flight_on_ptu: list[str],
        finals: dict[str, dict],
        records: dict[str, list[dict]],
    ) -> dict[str, Any]:
        p = self.p
        ours = {r["id"] for r in burst} | {t["id"] for t in turns}
        creates = {
            name: sorted(
                (r["created_at"], r["metadata"].get("bg_run_id"))
                for r in recs
                if r["metadata"].get("bg_run_id") in ours
            )
            for name, recs in records.items()
        }
        per_run = Counter(run_id for recs in creates.values() for _, run_id in recs)
        burst_ids = {r["id"] for r in burst}
        last_create = max((at for recs in creates.values() for at, run_id in recs if run_id in burst_ids), default=t0)

        def rate(name: str, start: float, end: float) -> float | None:
            n = sum(1 for at, run_id in creates[name] if start <= at < end and run_id in burst_ids)
            return round(60 * n / (end - start), 1) if end > start else None

        before_end = min(down_at, last_create)
        after_start = up_at
        ptu_during = [at for at, _ in creates["ptu"] if down_at <= at < up_at]
        ptu_back = [at for at, run_id in creates["ptu"] if at >= up_at and run_id in burst_ids]
        payg_after_down = [at for at, _ in creates["payg"] if at >= down_at]
        turn_ids = {t["id"] for t in turns}
        turn_creates = {name: [at for at, run_id in recs if run_id in turn_ids] for name, recs in creates.items()}
        turn_homes = [finals[t["id"]].get("deployment") for t in turns]
        statuses = Counter(f["status"] for f in finals.values())
        return {
            "profile": asdict(p),
            "submitted_in_s": round(submitted_s, 1),
            "creates_per_minute": {
                "budget_sum": p.ptu + p.payg,
                "before_outage": {n: rate(n, t0, before_end) for n in creates},
                "during_outage": {n: rate(n, down_at, min(up_at, last_create)) for n in creates},
                "after_outage": {n: rate(n, after_start, last_create) for n in creates}
                if last_create > up_at
                else None,
            },
            # from ptu's first create of the backlog after it came back (its breaker's probe closed it) to the end
            "after_ptu_took_starts_again": {n: rate(n, ptu_back[0], last_create) for n in creates}
            if ptu_back and last_create > ptu_back[0]
            else None,
            "first_ptu_create_after_it_came_back_s": round(ptu_back[0] - up_at, 1) if ptu_back else None,
            "backlog_drained_after_it_came_back_s": round(last_create - up_at, 1),
            "first_create": {n: round(recs[0][0] - t0, 1) if recs else None for n, recs in creates.items()},
            "ptu_creates_during_outage": len(ptu_during),
            "first_payg_create_after_outage_began_s": round(payg_after_down[0] - down_at, 1)
            if payg_after_down
            else None,
            "in_flight_on_ptu_at_outage": len(in_flight_on_ptu),
            "of_those_completed_after_it_came_back": sum(
                1
                for run_id in in_flight_on_ptu
                if finals[run_id]["status"] == "completed" and (finals[run_id]["completed_at"] or 0) >= up_at - 1
            ),
            "session_turns": {
                "count": len(turns),
                "first_turns_on": dict(Counter(self.session_homes)),
                "next_turn_on_the_first_turns_deployment": sum(
                    1 for home, turn in zip(self.session_homes, turn_homes, strict=True) if home == turn
                ),
                "created_on_ptu": len(turn_creates["ptu"]),
                "created_on_payg": len(turn_creates["payg"]),
                "earliest_after_ptu_came_back_s": round(min(turn_creates["ptu"]) - up_at, 1)
                if turn_creates["ptu"]
                else None,
            },
            "runs": len(ours),
            "statuses": dict(statuses),
            "lost": sum(1 for run_id in ours if finals.get(run_id, {}).get("status") != "completed"),
            "errors": dict(Counter((f.get("error") or {}).get("code") for f in finals.values() if f.get("error"))),
            "provider_responses_per_run": dict(Counter(per_run[run_id] for run_id in ours)),
            "machine": {"cpus": psutil.cpu_count(), "load1_at_end": psutil.getloadavg()[0]},
        }


def lines(result: dict[str, Any]) -> list[str]:
    c = result["creates_per_minute"]
    return [
        f"creates/min before the outage {c['before_outage']} (budgets {c['budget_sum']}), during {c['during_outage']}, "
        f"after {c['after_outage']} (from ptu's first create after it came back, "
        f"{result['first_ptu_create_after_it_came_back_s']} s after: {result['after_ptu_took_starts_again']}; "
        f"backlog drained {result['backlog_drained_after_it_came_back_s']} s after it came back)",
        f"first creates (s after t0) {result['first_create']}; ptu creates during the outage "
        f"{result['ptu_creates_during_outage']}; first payg create after it began "
        f"{result['first_payg_create_after_outage_began_s']} s",
        f"in flight on ptu at the outage {result['in_flight_on_ptu_at_outage']}, completed after it came back "
        f"{result['of_those_completed_after_it_came_back']}; session turns {result['session_turns']}",
        f"runs {result['runs']}: {result['statuses']} {result['errors']}, lost {result['lost']}, "
        f"provider responses per run {result['provider_responses_per_run']}",
    ]


async def main(quick: bool, out: Path | None) -> None:
    profile = PROFILES["quick" if quick else "full"]
    out = out or RESULTS / ("capacity-deployments-quick.json" if quick else "capacity-deployments.json")
    started = time.monotonic()
    result = await PoolBench(profile).run()
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    for line in lines(result):
        print(line, flush=True)
    dump_json(out, result)
    print(f"wrote {out}")
