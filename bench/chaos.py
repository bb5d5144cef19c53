"""`make chaos`: about 1,000 runs of what users do (streams that hang up and resume, cancels racing
completions, multi-turn sessions with concurrent starts, deadlines, function calls, large outputs,
Idempotency-Key retries) while the host is SIGKILLed 10 times, the emulator injects ~10 % 429/5xx and
stream cuts, the webhook receiver is down for 2 minutes and Azurite restarts once; then every invariant is
checked and printed, ending with `N passed, N failed` (exit 1 if any failed).

    .venv/bin/python -m bench.chaos [--runs 1000] [--submit-seconds 300] [--host-kills 10]
                                    [--receiver-outage 120] [--azurite-down 5] [--seed 1] [--out DIR]

The scenarios are in bench/chaos_mix.py, the client in bench/chaos_client.py, the invariants in
bench/chaos_checks.py. Everything is loopback and bounded in time. Settings are scaled down like
tests/stack.py (sweeper every 2 s, grace 4 s, short poll backoff, 4 s queue lease) so a run converges
quickly; the webhook schedule spans 191 s so deliveries outlast the receiver outage.
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .chaos_checks import Check, Checker, Evidence
from .chaos_client import TERMINAL, ApiClient, sse_events
from .chaos_mix import Mix, plan
from .common import LocalStack

CHAOS_HOST_ENV = {
    "POLL_INITIAL_DELAY_SECONDS": "1",
    "POLL_MAX_DELAY_SECONDS": "2",
    "SWEEP_SCHEDULE": "*/2 * * * * *",
    "SWEEP_GRACE_SECONDS": "4",
    "RUN_DEADLINE_SECONDS": "300",
    "WEBHOOK_RETRY_SCHEDULE": "0,1,2,4,8,16,32,64,64",  # 191 s of retries: longer than the receiver outage
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "PROVIDER_TIMEOUT_SECONDS": "5",
    "MAX_PREFER_WAIT_SECONDS": "5",
    "STREAM_KEEPALIVE_SECONDS": "2",
    "FUNCTIONS_HOST_QUEUE_LEASE_SECONDS": "4",  # a killed host's messages come back after 4 s
}
# How late after its deadline a run may end before it counts as stuck: sweeper grace (4) + poll cap (2)
# + sweeper period (2) + a host restart or an Azurite restart in between.
STUCK_SLACK_SECONDS = 30.0


@dataclass
class ChaosConfig:
    runs: int = 1000
    submit_seconds: float = 300.0
    host_kills: int = 10
    receiver_outage_s: float = 120.0
    azurite_down_s: float = 5.0
    fault_429_rate: float = 0.05
    fault_500_rate: float = 0.03
    fault_503_rate: float = 0.02
    stream_cut_rate: float = 0.10
    fault_endpoints: str = "create,retrieve,stream,cancel"
    min_duration_ms: int = 1000
    max_duration_ms: int = 8000
    large_output_chars: int = 200_000
    huge_outputs: int = 1  # runs with a multi-MB output
    huge_output_chars: int = 3_000_000
    emoji_inputs: int = 1  # runs whose input is 29,000 emoji
    client_retry_s: float = 60.0  # how long a client keeps retrying one request through outages
    converge_timeout_s: float = 420.0
    seed: int = 1
    name: str = "chaos"
    verbose: bool = True


@dataclass
class ChaosResult:
    checks: list[Check]
    events: list[tuple[float, str]]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(c.ok for c in self.checks)

    @property
    def failed(self) -> int:
        return sum(not c.ok for c in self.checks)


class Chaos:
    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.t0 = 0.0
        self.events: list[tuple[float, str]] = []
        self.stack: LocalStack | None = None
        self.faults: Counter = Counter()
        self.stats: dict[str, Any] = {}

    def say(self, msg: str) -> None:
        t = time.monotonic() - self.t0
        self.events.append((round(t, 1), msg))
        if self.cfg.verbose:
            print(f"[chaos +{t:6.1f}s] {msg}", flush=True)

    # -- the disruptions ----------------------------------------------------------------------------------
    async def kill_host(self) -> None:
        self.say(f"SIGKILL host (pid {self.stack.host.pid})")
        await asyncio.to_thread(self.stack.host.kill)
        self.faults["host_kills"] += 1
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.stack.host.start, True, 60)
        self.say("host restarted")

    async def receiver_outage(self) -> None:
        self.say(f"webhook receiver DOWN for {self.cfg.receiver_outage_s:.0f}s")
        await asyncio.to_thread(self.stack.receiver.down)
        self.faults["receiver_outages"] += 1
        await asyncio.sleep(self.cfg.receiver_outage_s)
        await asyncio.to_thread(self.stack.receiver.up)
        self.say("webhook receiver up")

    async def azurite_restart(self) -> None:
        self.say(f"Azurite STOP (down {self.cfg.azurite_down_s:.0f}s)")
        await asyncio.to_thread(self.stack.azurite.stop)
        self.faults["azurite_restarts"] += 1
        await asyncio.sleep(self.cfg.azurite_down_s)
        await asyncio.to_thread(self.stack.azurite.start)
        self.say("Azurite started again (same ports and data)")

    async def disruptions(self) -> None:
        """Host kills spread over the window and one Azurite restart mid-way, one at a time (a host cannot
        start while Azurite is down); the receiver outage runs beside them from 20 % of the window."""
        T, k = self.cfg.submit_seconds, self.cfg.host_kills
        plan_: list[tuple[float, Any]] = [((i + 0.5) / k * T, self.kill_host) for i in range(k)]
        plan_.append((0.5 * T + 2.0, self.azurite_restart))
        plan_.sort(key=lambda p: p[0])
        outage = asyncio.create_task(self._at(0.2 * T, self.receiver_outage))
        for at, action in plan_:
            await self._at(at, action)
        await outage

    async def _at(self, at: float, action) -> None:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - self.t0)))
        await action()

    # -- convergence and evidence ---------------------------------------------------------------------------
    async def converge(self, api: ApiClient) -> dict[str, dict]:
        deadline = time.monotonic() + self.cfg.converge_timeout_s
        views: dict[str, dict] = {}
        pending = set(api.records)
        sem = asyncio.Semaphore(16)

        async def look(rid: str) -> None:
            async with sem:
                try:
                    r = await api.http.get(f"/api/runs/{rid}")
                except httpx.HTTPError:
                    return
                if r.status_code in (200, 404):
                    views[rid] = r.json() if r.status_code == 200 else {"missing": True}

        while pending and time.monotonic() < deadline:
            await asyncio.gather(*(look(rid) for rid in pending))
            pending = {rid for rid in api.records if not _settled(views.get(rid))}
            if pending:
                await asyncio.sleep(3.0)
        self.say(f"convergence: {len(api.records) - len(pending)}/{len(api.records)} runs settled")
        await asyncio.sleep(3.0)  # a last delivery's bookkeeping
        await asyncio.gather(*(look(rid) for rid in api.records))
        return views

    def poison(self) -> dict[str, list[dict]]:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy

        out: dict[str, list[dict]] = {}
        for name in ("runs-poll-poison", "runs-webhook-poison"):
            q = QueueClient.from_connection_string(self.stack.azurite.connection_string, name,
                                                   message_decode_policy=TextBase64DecodePolicy())
            items: list[dict] = []
            try:
                for msg in q.receive_messages(messages_per_page=32, visibility_timeout=600):
                    try:
                        items.append(json.loads(msg.content))
                    except ValueError:
                        items.append({"raw": msg.content})
                    if len(items) >= 10_000:
                        break
            except Exception as error:  # noqa: BLE001 - a queue never created means nothing was poisoned
                if type(error).__name__ != "ResourceNotFoundError":
                    items.append({"error": repr(error)})
            finally:
                q.close()
            out[name] = items
        return out

    async def reference_streams(self, api: ApiClient, views: dict[str, dict]) -> dict[str, dict[str, Any]]:
        """The provider's own full event list of every streamed run (faults are off by now)."""
        out: dict[str, dict[str, Any]] = {}
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=self.stack.emulator.base_url, timeout=60) as emulator:
            async def fetch(run_id: str, response_id: str) -> None:
                async with sem:
                    for _ in range(3):
                        ids, text, final = [], [], False
                        try:
                            async with emulator.stream("GET", f"/responses/{response_id}",
                                                       params={"stream": "true"}) as r:
                                if r.status_code != 200:
                                    await r.aread()
                                    continue
                                async for event in sse_events(r):
                                    ids.append(event.data.get("sequence_number"))
                                    if event.data.get("type") == "response.output_text.delta":
                                        text.append(event.data.get("delta", ""))
                                    final = final or event.data.get("type") in (
                                        "response.completed", "response.failed", "response.incomplete")
                        except httpx.HTTPError:
                            continue
                        out[run_id] = {"ids": ids, "text": "".join(text), "final": final}
                        return

            await asyncio.gather(*(fetch(rid, views[rid]["provider_response_id"]) for rid, rec in api.records.items()
                                   if rec.stream is not None and (views.get(rid) or {}).get("provider_response_id")))
        return out

    def evidence(self, api: ApiClient, mix: Mix, views: dict[str, dict], refs: dict[str, dict]) -> Evidence:
        provider: dict[str, list[dict]] = defaultdict(list)
        by_id = {}
        for p in self.stack.emulator.responses():
            provider[(p.get("metadata") or {}).get("bg_run_id")].append(p)
            by_id[p["id"]] = p
        return Evidence(records=api.records, views=views, provider=dict(provider), provider_by_id=by_id,
                        deliveries=self.stack.receiver.snapshot(), poison=self.poison(), reference_streams=refs,
                        sessions=mix.sessions, idempotency=mix.idempotency, key_runs=api.key_runs,
                        not_accepted=api.not_accepted, server_errors=api.server_errors, job_errors=mix.job_errors,
                        answers=sum(n for label, n in api.answers.items() if label.rsplit(" ", 1)[-1].isdigit()),
                        run_deadline=float(CHAOS_HOST_ENV["RUN_DEADLINE_SECONDS"]), stuck_slack=STUCK_SLACK_SECONDS)

    # -- the whole thing ----------------------------------------------------------------------------------
    async def run(self) -> ChaosResult:
        cfg = self.cfg
        self.t0 = time.monotonic()
        self.stack = LocalStack(cfg.name, host_env=dict(CHAOS_HOST_ENV), emulator_config={"seed": cfg.seed})
        await asyncio.to_thread(self.stack.start)
        try:
            jobs = plan(cfg.runs, cfg.submit_seconds, self.rng, huge_outputs=cfg.huge_outputs,
                        emoji_inputs=cfg.emoji_inputs)
            self.say(f"stack up: host {self.stack.api}; {len(jobs)} jobs ({dict(Counter(j.scenario for j in jobs))}) "
                     f"over {cfg.submit_seconds:.0f}s")
            self.stack.emulator.configure(fault_429_rate=cfg.fault_429_rate, fault_500_rate=cfg.fault_500_rate,
                                          fault_503_rate=cfg.fault_503_rate, stream_cut_rate=cfg.stream_cut_rate,
                                          fault_endpoints=cfg.fault_endpoints, resume_window_s=3600)
            self.say(f"emulator faults on: 429 {cfg.fault_429_rate}, 500 {cfg.fault_500_rate}, "
                     f"503 {cfg.fault_503_rate}, stream cuts {cfg.stream_cut_rate} on {cfg.fault_endpoints}")
            self.t0 = time.monotonic()
            limits = httpx.Limits(max_connections=128, max_keepalive_connections=32)
            async with httpx.AsyncClient(base_url=self.stack.api, timeout=httpx.Timeout(30, read=60),
                                         limits=limits) as http:
                api = ApiClient(http, self.rng, cfg.client_retry_s)
                mix = Mix(api, self.stack.receiver.url, self.rng, durations_ms=(cfg.min_duration_ms, cfg.max_duration_ms),
                          large_chars=cfg.large_output_chars, huge_chars=cfg.huge_output_chars,
                          wait_timeout=cfg.converge_timeout_s)
                work = [asyncio.create_task(mix.run(job, self.t0)) for job in jobs]
                await self.disruptions()
                await asyncio.gather(*work)
                self.say(f"clients done: {len(api.records)} runs accepted, {len(api.not_accepted)} not")
                self.stack.emulator.configure(fault_429_rate=0, fault_500_rate=0, fault_503_rate=0, stream_cut_rate=0)
                self.say("emulator faults off; waiting for convergence")
                views = await self.converge(api)
                refs = await self.reference_streams(api, views)
            ev = self.evidence(api, mix, views, refs)
            checks = Checker(ev).all()
            self.stats = self.figures(api, mix, ev)
        finally:
            await asyncio.to_thread(self.stack.stop)
        self.stats["seconds"] = round(time.monotonic() - self.t0, 1)
        return ChaosResult(checks, self.events, self.stats)

    def figures(self, api: ApiClient, mix: Mix, ev: Evidence) -> dict[str, Any]:
        views = ev.views
        by_scenario: dict[str, Counter] = defaultdict(Counter)
        for rid, rec in api.records.items():
            by_scenario[rec.scenario][(views.get(rid) or {}).get("status")] += 1
        attempts = [len(((views.get(r) or {}).get("webhook") or {}).get("attempts") or []) for r in api.records]
        streams = [rec.stream for rec in api.records.values() if rec.stream is not None]
        connections = Counter(c["how"] + "/" + c["outcome"] for s in streams for c in s["connections"])
        resumes = sum(len(s["connections"]) - 1 for s in streams)
        logs = self.stack.host.logs()
        repaired: Counter = Counter()
        for line in logs.splitlines():
            if "sweeper repaired" in line:
                try:
                    repaired.update(ast.literal_eval(line.split("sweeper repaired", 1)[1].strip()))
                except (ValueError, SyntaxError):
                    pass
        return {
            "runs_by_status": dict(Counter((views.get(r) or {}).get("status") for r in api.records)),
            "runs_by_scenario": {k: dict(v) for k, v in sorted(by_scenario.items())},
            "not_accepted": len(api.not_accepted),
            "webhook": {"deliveries_received": len(ev.deliveries), "attempts_recorded": sum(attempts),
                        "runs_with_retries": sum(1 for a in attempts if a > 1),
                        "states": dict(Counter(((views.get(r) or {}).get("webhook") or {}).get("state")
                                               for r in api.records))},
            "streams": {"consumers": len(streams), "resumes": resumes, "connections": dict(connections),
                        "resumes_after_final_checked": sum(1 for s in streams if s["after_final"] is not None)},
            "sessions": {"sessions": len(mix.sessions),
                         "concurrent_start_answers": dict(Counter(
                             str(c["http"]) + (f" {c['code']}" if c["code"] else "")
                             for log in mix.sessions.values() for c in log["concurrent"]))},
            "faults": {**dict(self.faults), "emulator": self.stack.emulator.stats().get("faults"),
                       "receiver_outage_s": self.cfg.receiver_outage_s, "azurite_down_s": self.cfg.azurite_down_s},
            "api_answers": dict(sorted(api.answers.items())),
            "poison": {k: len(v) for k, v in ev.poison.items()},
            "host_starts": logs.count("===== start"),
            "sweeper_repaired": dict(repaired),
            "host_log": str(self.stack.host.log_path),
        }


def _settled(view: dict | None) -> bool:
    if not view or view.get("missing"):
        return bool(view and view.get("missing"))
    if view.get("status") not in TERMINAL:
        return False
    hook = view.get("webhook")
    return hook is None or hook.get("state") in ("delivered", "failed")


def run_chaos(**overrides: Any) -> ChaosResult:
    """Entry point for tests: run_chaos(runs=30, submit_seconds=20, host_kills=1, ...)."""
    return asyncio.run(Chaos(ChaosConfig(**overrides)).run())


STANDARD_FAILURE_KEYS = {"run_id", "scenario", "problem", "likely_cause", "history", "view", "provider"}


def report(result: ChaosResult, max_failures: int = 8) -> str:
    lines = ["", "invariants:"]
    for c in result.checks:
        lines.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    failing = [c for c in result.checks if not c.ok]
    if failing:
        lines += ["", "failures (run id, scenario, problem, likely cause, what the client saw):"]
    for c in failing:
        lines.append(f"  -- {c.name}: {len(c.failures)} failure(s)")
        for f in c.failures[:max_failures]:
            lines.append(f"     * {f.get('run_id')} [{f.get('scenario')}] {f.get('problem')}")
            if f.get("likely_cause"):
                lines.append(f"       likely cause: {f['likely_cause']}")
            for h in (f.get("history") or [])[-4:]:
                lines.append(f"       | {h}")
            if f.get("view"):
                lines.append(f"       run: {json.dumps(f['view'], default=str)}")
            if f.get("provider"):
                lines.append(f"       provider: {json.dumps(f['provider'], default=str)}")
            extra = {k: v for k, v in f.items() if k not in STANDARD_FAILURE_KEYS}
            if extra:
                lines.append(f"       more: {json.dumps(extra, default=str)[:600]}")
        if len(c.failures) > max_failures:
            lines.append(f"     ... {len(c.failures) - max_failures} more in the JSON results")
    lines.append("")
    lines.append(f"stats: {json.dumps(result.stats, default=str)}")
    lines.append(f"{result.passed} passed, {result.failed} failed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument("--submit-seconds", type=float, default=defaults.submit_seconds)
    parser.add_argument("--host-kills", type=int, default=defaults.host_kills)
    parser.add_argument("--receiver-outage", type=float, default=defaults.receiver_outage_s)
    parser.add_argument("--azurite-down", type=float, default=defaults.azurite_down_s)
    parser.add_argument("--huge-outputs", type=int, default=defaults.huge_outputs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--converge-timeout", type=float, default=defaults.converge_timeout_s)
    parser.add_argument("--out", type=Path, default=None,
                        help="write chaos.txt and chaos.json here (e.g. bench/results)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run_chaos(runs=args.runs, submit_seconds=args.submit_seconds, host_kills=args.host_kills,
                       receiver_outage_s=args.receiver_outage, azurite_down_s=args.azurite_down,
                       huge_outputs=args.huge_outputs, seed=args.seed, converge_timeout_s=args.converge_timeout)
    text = report(result).replace(f"\n{result.passed} passed",
                                  f"\nwall time {time.monotonic() - started:.0f} s\n{result.passed} passed")
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        timeline = "\n".join(f"[chaos +{t:6.1f}s] {m}" for t, m in result.events)
        (args.out / "chaos.txt").write_text(f"{' '.join(sys.argv)}\n\n{timeline}\n{text}\n")
        (args.out / "chaos.json").write_text(json.dumps(
            {"config": {k: v for k, v in vars(args).items() if k != "out"}, "stats": result.stats,
             "checks": [asdict(c) for c in result.checks], "events": result.events}, indent=1, default=str) + "\n")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
