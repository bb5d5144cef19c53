"""`make chaos`: M runs with webhooks while the host is SIGKILLed and restarted, the emulator injects
429/5xx/stream cuts, the webhook receiver is down for a window and Azurite restarts once; then the
invariants are checked and printed, ending with `N passed, N failed` (exit 1 if any failed).

    .venv/bin/python -m bench.chaos [--runs 200] [--submit-seconds 60] [--host-kills 3] [--seed 1]
                                    [--backend background|executor]

With `--backend executor` the function app runs every model call itself (Chat Completions on the emulator,
faults and stream cuts on the chat endpoint too): a killed host's calls start again as new attempts.

Everything is loopback and bounded in time. Settings are scaled down like tests/stack.py (sweeper every
2 s, grace 4 s, short poll backoff and webhook schedule, 4 s queue lease) so a run converges quickly.
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from .common import LocalStack

TERMINAL = {"completed", "failed", "cancelled", "incomplete", "expired", "requires_action"}

CHAOS_HOST_ENV = {
    "POLL_INITIAL_DELAY_SECONDS": "1",
    "POLL_MAX_DELAY_SECONDS": "2",
    "SWEEP_SCHEDULE": "*/2 * * * * *",
    "SWEEP_GRACE_SECONDS": "4",
    "RUN_DEADLINE_SECONDS": "300",
    "WEBHOOK_RETRY_SCHEDULE": "0,1,2,4,8,16",  # 31 s of retries: longer than the receiver outage
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "PROVIDER_TIMEOUT_SECONDS": "5",
    "MAX_PREFER_WAIT_SECONDS": "5",
    "STREAM_KEEPALIVE_SECONDS": "2",
    "FUNCTIONS_HOST_QUEUE_LEASE_SECONDS": "4",  # a killed host's messages come back after 4 s
}
EXECUTOR_HOST_ENV = {"RUN_BACKEND": "executor", "EXECUTOR_STALE_SECONDS": "4"}


@dataclass
class ChaosConfig:
    runs: int = 200
    submit_seconds: float = 60.0
    host_kills: int = 3
    receiver_outage_s: float = 12.0
    azurite_down_s: float = 5.0
    fault_429_rate: float = 0.05
    fault_500_rate: float = 0.03
    fault_503_rate: float = 0.02
    stream_cut_rate: float = 0.10
    fault_endpoints: str = "create,retrieve,stream,cancel"
    stream_fraction: float = 0.2
    min_duration_ms: int = 1000
    max_duration_ms: int = 10000
    converge_timeout_s: float = 240.0
    seed: int = 1
    name: str = "chaos"
    verbose: bool = True
    backend: str = "background"  # or "executor": RUN_BACKEND of the host


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


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
        self.accepted: dict[str, dict[str, Any]] = {}  # run id -> submission info
        self.not_accepted: list[dict[str, Any]] = []
        self.submit_statuses: Counter = Counter()
        self.stack: LocalStack | None = None
        self.host_down = asyncio.Event()

    def say(self, msg: str) -> None:
        t = time.monotonic() - self.t0
        self.events.append((round(t, 1), msg))
        if self.cfg.verbose:
            print(f"[chaos +{t:6.1f}s] {msg}", flush=True)

    # -- the client -------------------------------------------------------------------------------------
    async def submit(self, client: httpx.AsyncClient, index: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - self.t0)))
        key = f"chaos-{uuid.uuid4().hex}"
        stream = self.rng.random() < self.cfg.stream_fraction
        body = {"input": f"chaos run {index}", "webhook_url": f"{self.stack.receiver.url}/chaos",
                "metadata": {"emulator_duration_ms": str(self.rng.randint(self.cfg.min_duration_ms,
                                                                          self.cfg.max_duration_ms)),
                             "chaos_index": str(index)}}
        if stream:
            body["stream"] = True
        info = {"index": index, "key": key, "stream": stream, "attempts": 0, "last": None}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and info["attempts"] < 200:
            info["attempts"] += 1
            try:
                if stream:
                    async with client.stream("POST", "/api/runs", json=body, headers={"Idempotency-Key": key}) as r:
                        self.submit_statuses[str(r.status_code)] += 1
                        location = r.headers.get("location", "")
                        if r.status_code in (200, 202) and location:
                            run_id = location.rsplit("/", 1)[-1]
                            self.accepted[run_id] = info
                            try:  # read the relay to its end; a cut or host kill just ends it
                                async for _ in r.aiter_lines():
                                    pass
                            except httpx.HTTPError:
                                pass
                            return
                        info["last"] = f"{r.status_code} {(await r.aread())[:200]!r}"
                else:
                    r = await client.post("/api/runs", json=body, headers={"Idempotency-Key": key})
                    self.submit_statuses[str(r.status_code)] += 1
                    if r.status_code in (200, 202):
                        self.accepted[r.json()["id"]] = info
                        return
                    info["last"] = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as error:
                self.submit_statuses[type(error).__name__] += 1
                info["last"] = type(error).__name__
            await asyncio.sleep(0.5 + self.rng.random())
        self.not_accepted.append(info)

    # -- the disruptions ----------------------------------------------------------------------------------
    async def kill_host(self) -> None:
        self.say(f"SIGKILL host (pid {self.stack.host.pid})")
        await asyncio.to_thread(self.stack.host.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.stack.host.start, True, 60)
        self.say("host restarted")

    async def receiver_outage(self) -> None:
        self.say(f"webhook receiver DOWN for {self.cfg.receiver_outage_s:.0f}s")
        await asyncio.to_thread(self.stack.receiver.down)
        await asyncio.sleep(self.cfg.receiver_outage_s)
        await asyncio.to_thread(self.stack.receiver.up)
        self.say("webhook receiver up")

    async def azurite_restart(self) -> None:
        self.say(f"Azurite STOP (down {self.cfg.azurite_down_s:.0f}s)")
        await asyncio.to_thread(self.stack.azurite.stop)
        await asyncio.sleep(self.cfg.azurite_down_s)
        await asyncio.to_thread(self.stack.azurite.start)
        self.say("Azurite started again (same ports and data)")

    async def disruptions(self) -> None:
        T = self.cfg.submit_seconds
        plan: list[tuple[float, Any]] = []
        kills = [0.15, 0.7, 0.9, 0.45, 0.3][: self.cfg.host_kills]
        plan += [(k * T, self.kill_host) for k in kills]
        plan.append((0.25 * T, self.receiver_outage))
        plan.append((0.5 * T, self.azurite_restart))
        plan.sort(key=lambda p: p[0])
        for at, action in plan:  # one at a time: a host cannot start while Azurite is down
            await asyncio.sleep(max(0.0, at - (time.monotonic() - self.t0)))
            await action()

    # -- convergence and checks ------------------------------------------------------------------------------
    async def converge(self, client: httpx.AsyncClient) -> dict[str, dict]:
        deadline = time.monotonic() + self.cfg.converge_timeout_s
        views: dict[str, dict] = {}
        pending = set(self.accepted)
        while time.monotonic() < deadline:
            sem = asyncio.Semaphore(16)

            async def look(rid: str) -> None:
                async with sem:
                    try:
                        r = await client.get(f"/api/runs/{rid}")
                    except httpx.HTTPError:
                        return
                    if r.status_code in (200, 404):
                        views[rid] = r.json() if r.status_code == 200 else {"missing": True}
            await asyncio.gather(*(look(rid) for rid in pending))
            pending = {rid for rid in self.accepted if not _settled(views.get(rid))}
            if not pending:
                break
            await asyncio.sleep(2.0)
        self.say(f"convergence: {len(self.accepted) - len(pending)}/{len(self.accepted)} runs settled")
        await asyncio.sleep(3.0)  # a last delivery's bookkeeping
        await asyncio.gather(*(self._refresh(client, views, rid) for rid in self.accepted))
        return views

    @staticmethod
    async def _refresh(client: httpx.AsyncClient, views: dict, rid: str) -> None:
        try:
            r = await client.get(f"/api/runs/{rid}")
            views[rid] = r.json() if r.status_code == 200 else {"missing": r.status_code == 404}
        except httpx.HTTPError:
            pass

    def poison(self) -> dict[str, list[dict]]:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy

        out: dict[str, list[dict]] = {}
        for name in ("runs-poll-poison", "runs-webhook-poison", "runs-execute-poison"):
            q = QueueClient.from_connection_string(self.stack.azurite.connection_string, name,
                                                   message_decode_policy=TextBase64DecodePolicy())
            items: list[dict] = []
            try:
                for msg in q.receive_messages(messages_per_page=32, visibility_timeout=300):
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

    def checks(self, views: dict[str, dict]) -> list[Check]:
        checks: list[Check] = []
        ids = list(self.accepted)
        n = len(ids)

        def add(name: str, bad: list[str], total: int, what: str) -> None:
            detail = f"{total - len(bad)}/{total} {what}"
            if bad:
                detail += f"; e.g. {', '.join(bad[:5])}"
            checks.append(Check(name, not bad, detail))

        add("every submitted run was accepted (Idempotency-Key retries converge)",
            [f"#{i['index']} key={i['key']} last={i['last']}" for i in self.not_accepted], self.cfg.runs, "accepted")
        add("no run lost", [r for r in ids if views.get(r, {}).get("missing")], n, "found")
        add("every run terminal", [f"{r}({views.get(r, {}).get('status')})" for r in ids
                                   if views.get(r, {}).get("status") not in TERMINAL], n, "terminal")
        by_run: dict[str, list[dict]] = defaultdict(list)
        for rec in self.stack.receiver.snapshot():
            if rec["run_id"]:
                by_run[rec["run_id"]].append(rec)
        terminal = [r for r in ids if views.get(r, {}).get("status") in TERMINAL]
        add("every terminal run's webhook delivered with a valid signature",
            [f"{r}(webhook {views[r].get('webhook', {}).get('state')}, {len(by_run.get(r, []))} attempts seen)"
             for r in terminal if not any(x["verified"] and x["status"] == 204 for x in by_run.get(r, []))],
            len(terminal), "delivered")
        unstable = []
        for r in terminal:
            hook_ids = {x["webhook_id"] for x in by_run.get(r, [])}
            stored = (views[r].get("webhook") or {}).get("id")
            if len(hook_ids) != 1 or (stored and stored not in hook_ids):
                unstable.append(f"{r}(ids {sorted(hook_ids)}, run says {stored})")
        add("one stable webhook-id per run", unstable, len(terminal), "stable")
        provider = defaultdict(list)
        for p in self.stack.emulator.responses():
            provider[(p.get("metadata") or {}).get("bg_run_id")].append(p["id"])
        if self.cfg.backend == "executor":
            add("every run ran on the executor (no provider background response)",
                [f"{r}(backend {views.get(r, {}).get('backend')}, {len(provider.get(r, []))} responses)" for r in ids
                 if views.get(r, {}).get("backend") != "executor" or provider.get(r)], n, "executor runs")
            failed = [r for r in ids if views.get(r, {}).get("status") == "failed"]
            add("a failed executor run says why", [f"{r}({views[r].get('error')})" for r in failed
                                                   if not (views[r].get("error") or {}).get("message")],
                len(failed), "with a reason")
        else:
            add("exactly one provider response per run",
                [f"{r}({len(provider.get(r, []))} responses)" for r in ids if len(provider.get(r, [])) != 1], n,
                "with one")
        orphans = [f"{rid}({len(v)})" for rid, v in provider.items() if rid not in self.accepted]
        add("no provider response without an accepted run", orphans, len(provider), "accounted for")
        poison = self.poison()
        unaccounted = []
        for queue, items in poison.items():
            for item in items:
                rid = item.get("run_id")
                v = views.get(rid) if rid else None
                if v is None or v.get("missing"):
                    unaccounted.append(f"{queue}:{item}")
                elif queue in ("runs-poll-poison", "runs-execute-poison") and v.get("status") not in TERMINAL:
                    unaccounted.append(f"{queue}:{rid} (run {v.get('status')})")
                elif queue == "runs-webhook-poison" and (v.get("webhook") or {}).get("state") != "delivered":
                    unaccounted.append(f"{queue}:{rid} (webhook {(v.get('webhook') or {}).get('state')})")
        total_poison = sum(len(v) for v in poison.values())
        add("no poison message unaccounted for", unaccounted, total_poison, "poison messages accounted for ("
            + ", ".join(f"{queue} {len(items)}" for queue, items in poison.items()) + ")")
        stuck = [f"{r}({views.get(r, {}).get('status')}, webhook {(views.get(r, {}).get('webhook') or {}).get('state')})"
                 for r in ids if not _settled(views.get(r)) or views.get(r, {}).get("status") == "expired"]
        add("no run stuck (terminal, webhook settled, none expired)", stuck, n, "settled")
        self.stats["statuses"] = dict(Counter(views.get(r, {}).get("status") for r in ids))
        self.stats["webhook_retried_runs"] = sum(1 for r in ids if len((views.get(r, {}).get("webhook") or {})
                                                                       .get("attempts") or []) > 1)
        self.stats["webhook_states"] = dict(Counter((views.get(r, {}).get("webhook") or {}).get("state") for r in ids))
        self.stats["deliveries"] = len(self.stack.receiver.snapshot())
        self.stats["poison"] = {k: len(v) for k, v in poison.items()}
        self.stats["errors"] = dict(Counter((views.get(r, {}).get("error") or {}).get("code") for r in ids
                                            if views.get(r, {}).get("error")))
        return checks

    # -- the whole thing ----------------------------------------------------------------------------------
    async def run(self) -> ChaosResult:
        cfg = self.cfg
        self.stats: dict[str, Any] = {}
        self.t0 = time.monotonic()
        host_env = {**CHAOS_HOST_ENV, **(EXECUTOR_HOST_ENV if cfg.backend == "executor" else {})}
        self.stack = LocalStack(cfg.name, host_env=host_env, emulator_config={"seed": cfg.seed})
        await asyncio.to_thread(self.stack.start)
        try:
            self.say(f"stack up: host {self.stack.api}; {cfg.runs} runs over {cfg.submit_seconds:.0f}s")
            self.stack.emulator.configure(fault_429_rate=cfg.fault_429_rate, fault_500_rate=cfg.fault_500_rate,
                                          fault_503_rate=cfg.fault_503_rate, stream_cut_rate=cfg.stream_cut_rate,
                                          fault_endpoints=cfg.fault_endpoints)
            self.say(f"emulator faults on: 429 {cfg.fault_429_rate}, 500 {cfg.fault_500_rate}, "
                     f"503 {cfg.fault_503_rate}, stream cuts {cfg.stream_cut_rate} on {cfg.fault_endpoints}")
            self.t0 = time.monotonic()
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
            async with httpx.AsyncClient(base_url=self.stack.api, timeout=httpx.Timeout(30, read=60),
                                         limits=limits) as client:
                spacing = cfg.submit_seconds / max(1, cfg.runs)
                submits = [asyncio.create_task(self.submit(client, i, i * spacing)) for i in range(cfg.runs)]
                await self.disruptions()
                await asyncio.gather(*submits)
                self.say(f"submissions done: {len(self.accepted)} accepted, {len(self.not_accepted)} not; "
                         f"statuses {dict(self.submit_statuses)}")
                self.stack.emulator.configure(fault_429_rate=0, fault_500_rate=0, fault_503_rate=0, stream_cut_rate=0)
                self.say("emulator faults off; waiting for convergence")
                views = await self.converge(client)
            checks = self.checks(views)
            self.stats["emulator_faults"] = self.stack.emulator.stats().get("faults")
            logs = self.stack.host.logs()
            self.stats["host_starts"] = logs.count("===== start")
            repaired: Counter = Counter()
            for line in logs.splitlines():
                if "sweeper repaired" in line:
                    try:
                        repaired.update(ast.literal_eval(line.split("sweeper repaired", 1)[1].strip()))
                    except Exception:  # noqa: BLE001
                        pass
            self.stats["sweeper_repaired"] = dict(repaired)
            self.stats["host_log"] = str(self.stack.host.log_path)
        finally:
            await asyncio.to_thread(self.stack.stop)
        self.stats["seconds"] = round(time.monotonic() - self.t0, 1)
        return ChaosResult(checks, self.events, self.stats)


def _settled(view: dict | None) -> bool:
    if not view or view.get("missing"):
        return bool(view and view.get("missing"))
    if view.get("status") not in TERMINAL:
        return False
    hook = view.get("webhook")
    return hook is None or hook.get("state") in ("delivered", "failed")


def run_chaos(**overrides: Any) -> ChaosResult:
    """Entry point for tests: run_chaos(runs=25, submit_seconds=20, host_kills=1, ...)."""
    return asyncio.run(Chaos(ChaosConfig(**overrides)).run())


def report(result: ChaosResult) -> str:
    lines = ["", "invariants:"]
    for c in result.checks:
        lines.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    lines.append(f"stats: {json.dumps(result.stats, default=str)}")
    lines.append(f"{result.passed} passed, {result.failed} failed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--submit-seconds", type=float, default=60.0)
    parser.add_argument("--host-kills", type=int, default=3)
    parser.add_argument("--receiver-outage", type=float, default=12.0)
    parser.add_argument("--azurite-down", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--converge-timeout", type=float, default=240.0)
    parser.add_argument("--backend", choices=("background", "executor"), default="background")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run_chaos(runs=args.runs, submit_seconds=args.submit_seconds, host_kills=args.host_kills,
                       receiver_outage_s=args.receiver_outage, azurite_down_s=args.azurite_down, seed=args.seed,
                       converge_timeout_s=args.converge_timeout, backend=args.backend,
                       **({"fault_endpoints": "create,retrieve,stream,cancel,chat"} if args.backend == "executor"
                          else {}))
    print(report(result).replace(f"\n{result.passed} passed",
                                 f"\nwall time {time.monotonic() - started:.0f} s\n{result.passed} passed"))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
