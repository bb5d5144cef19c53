"""`make chaos`: about 1,000 runs of what users do (streams that hang up and resume, cancels racing
completions, multi-turn sessions with concurrent starts, deadlines, function calls, large outputs,
Idempotency-Key retries) while the host is SIGKILLed 10 times, the emulator injects ~10 % 429/5xx and
stream cuts, the webhook receiver is down for 2 minutes and Azurite restarts once; then every invariant is
checked and printed, ending with `N passed, N failed` (exit 1 if any failed).

    .venv/bin/python -m bench.chaos [--runs 1000] [--submit-seconds 300] [--host-kills 10]
                                    [--receiver-outage 120] [--azurite-down 5] [--seed 1] [--out DIR]
                                    [--backend background|executor] [--completion poll|push]

With `--backend executor` the host runs every model call itself (RUN_BACKEND=executor: the emulator's Chat
Completions, with faults and stream cuts on the `chat` endpoint too); a killed host's calls start again as new
attempts. The checks that rest on provider background responses then judge the executor's runs by their own
view, their full replay from the service and the model calls the emulator's chat log records.

With `--provider-rpm N` the emulator also enforces a quota of N creates a minute per model (OpenAI's rolling
window), below the offered load (1,000 runs over 300 s offer ~200 a minute, sessions and retries more); three more
invariants then matter: no start refused for provider capacity, no queued run lost, one provider response per run
(checked always). `--setting NAME=VALUE` adds host settings, e.g. the provider pacing's
(`--setting PACING_REQUESTS_PER_MINUTE=110 --setting PACING_BURST=1`).

With `--deployments` the emulator serves two deployments, ptu and payg, with their own faults and quotas, and
the host's PROVIDER_DEPLOYMENTS names both (ptu priority 0, payg 1; for the executor too: its model servers); ptu
goes down (its port refuses connections) for `--deployment-outage` seconds (120) from 30 % of the window. New starts
(and executor calls) spill to payg; runs at ptu are polled through the outage and finish after it; sessions stay on
their deployment (one more invariant). Not with push.

With `--completion push` the emulator sends signed provider webhooks (COMPLETION_STRATEGY=push), losing 10 %,
sending 10 % twice and retrying refused ones; a webhook that arrives while the host is down is retried by the
emulator or replaced by the safety-net poll chain.

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
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .capacity import parse_settings
from .chaos_checks import Check, Checker, Evidence, call_whole
from .chaos_client import CHAOS_TAG, TERMINAL, ApiClient, replay, sse_events
from .chaos_mix import Mix, plan
from .common import LocalStack, free_port, new_secrets

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
# What a host running executor runs adds: a silent attempt (its host was killed) is taken over after 4 s.
EXECUTOR_HOST_ENV = {"RUN_BACKEND": "executor", "EXECUTOR_STALE_SECONDS": "4"}
BACKENDS = ("background", "executor")
COMPLETIONS = ("poll", "push")
# What push adds (--completion push): the emulator sends signed provider webhooks to the app, and loses,
# repeats and delays some of them, as a provider on the internet may; the safety-net chain covers the rest.
PUSH_EMULATOR_FAULTS = {
    "webhook_drop_rate": 0.10,
    "webhook_duplicate_rate": 0.10,
    "webhook_delay_ms": 200,
    "webhook_retry_schedule_ms": "2000,5000,10000",
}
POISON_QUEUES = ("runs-poll-poison", "runs-webhook-poison", "runs-execute-poison")
# How late after its deadline a run may end before it counts as stuck: sweeper grace (4) + poll cap (2)
# + sweeper period (2) + a host restart or an Azurite restart in between.
STUCK_SLACK_SECONDS = 30.0
EXECUTED = re.compile(r"^\[[^\]]+\] Executed 'Functions\.(?P<fn>\w+)' \((?P<outcome>\w+), ")


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
    backend: str = "background"  # RUN_BACKEND of the host: background (provider responses) or executor
    completion: str = "poll"  # how the host learns a provider response ended: poll, or push (provider webhooks)
    provider_rpm: int = 0  # the emulator's quota of creates a minute per model (0: none)
    host_settings: dict[str, str] = field(default_factory=dict)  # more host settings (--setting)
    deployments: bool = False  # two emulator deployments, ptu (priority 0) and payg (1), and an outage of ptu
    deployment_outage_s: float = 120.0  # how long ptu is down, from 30 % of the submit window

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.completion not in COMPLETIONS:
            raise ValueError(f"completion must be one of {COMPLETIONS}, got {self.completion!r}")
        if self.completion == "push" and self.backend != "background":
            raise ValueError("completion push needs the background backend (the executor has no provider webhooks)")
        if self.completion == "push" and self.deployments:
            raise ValueError("--deployments runs with completion poll (each deployment would need its own secret)")


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
        self.outages: dict[str, tuple[float, float]] = {}  # deployment -> (down, up), wall clock
        self.stats: dict[str, Any] = {}
        self.stats_quota: dict[str, Any] = {}  # the emulator's quota counters (--provider-rpm)

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

    async def deployment_outage(self) -> None:
        self.say(f"deployment ptu DOWN (refuses connections) for {self.cfg.deployment_outage_s:.0f}s")
        down_at = time.time()
        await asyncio.to_thread(self.stack.emulator.take_down, "ptu", "refuse")
        self.faults["deployment_outages"] += 1
        await asyncio.sleep(self.cfg.deployment_outage_s)
        await asyncio.to_thread(self.stack.emulator.bring_up, "ptu")
        self.outages["ptu"] = (down_at, time.time())
        self.say("deployment ptu up")

    async def disruptions(self) -> None:
        """Host kills spread over the window and one Azurite restart mid-way, one at a time (a host cannot
        start while Azurite is down); the receiver outage runs beside them from 20 % of the window."""
        T, k = self.cfg.submit_seconds, self.cfg.host_kills
        plan_: list[tuple[float, Any]] = [((i + 0.5) / k * T, self.kill_host) for i in range(k)]
        plan_.append((0.5 * T + 2.0, self.azurite_restart))
        plan_.sort(key=lambda p: p[0])
        outages = [asyncio.create_task(self._at(0.2 * T, self.receiver_outage))]
        if self.cfg.deployments:
            outages.append(asyncio.create_task(self._at(0.3 * T, self.deployment_outage)))
        for at, action in plan_:
            await self._at(at, action)
        await asyncio.gather(*outages)

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
        for name in POISON_QUEUES:
            q = QueueClient.from_connection_string(
                self.stack.azurite.connection_string, name, message_decode_policy=TextBase64DecodePolicy()
            )
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
        """The full event list of every streamed run (faults are off by now): the provider's own, or for executor
        runs (no provider stream) the run's whole stream replayed by the service after the run ended."""
        if self.cfg.backend == "executor":
            return await self.replayed_streams(api, views)
        out: dict[str, dict[str, Any]] = {}
        sem = asyncio.Semaphore(8)
        urls = self.emulator_urls()
        async with httpx.AsyncClient(timeout=60) as emulator:

            async def fetch(run_id: str, response_id: str) -> None:
                url = urls.get((views.get(run_id) or {}).get("deployment") or "", self.stack.emulator.base_url)
                async with sem:
                    for _ in range(3):
                        ids, text, final = [], [], False
                        try:
                            async with emulator.stream(
                                "GET", f"{url}/responses/{response_id}", params={"stream": "true"}
                            ) as r:
                                if r.status_code != 200:
                                    await r.aread()
                                    continue
                                async for event in sse_events(r):
                                    ids.append(event.data.get("sequence_number"))
                                    if event.data.get("type") == "response.output_text.delta":
                                        text.append(event.data.get("delta", ""))
                                    final = final or event.data.get("type") in (
                                        "response.completed",
                                        "response.failed",
                                        "response.incomplete",
                                    )
                        except httpx.HTTPError:
                            continue
                        out[run_id] = {"ids": ids, "text": "".join(text), "final": final}
                        return

            await asyncio.gather(
                *(
                    fetch(rid, views[rid]["provider_response_id"])
                    for rid, rec in api.records.items()
                    if rec.stream is not None and (views.get(rid) or {}).get("provider_response_id")
                )
            )
        return out

    async def replayed_streams(self, api: ApiClient, views: dict[str, dict]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        sem = asyncio.Semaphore(8)

        async def fetch(run_id: str) -> None:
            async with sem:
                for _ in range(3):
                    try:
                        reference = await replay(api.http, run_id)
                    except httpx.HTTPError:
                        continue
                    if reference is not None:
                        out[run_id] = reference
                        return

        await asyncio.gather(
            *(
                fetch(rid)
                for rid, rec in api.records.items()
                if rec.stream is not None and (views.get(rid) or {}).get("status") in TERMINAL
            )
        )
        return out

    def chat_calls(self, api: ApiClient, views: dict[str, dict]) -> tuple[dict[str, list[dict]], list[dict]]:
        """The emulator's log of model calls, each given to the run whose request carried its tag: the latest
        run with that tag created before the call (a start that was abandoned and retried shares its body's
        tag). Calls before every such run, or whose tag no accepted run has, are returned apart."""
        logged = []
        for deployment, url in self.emulator_urls().items():
            response = httpx.get(f"{url}/_emulator/chat_completions", timeout=120)
            response.raise_for_status()
            logged += [{**call, "deployment": deployment} for call in response.json()["data"]]
        runs_by_tag: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for rid, rec in api.records.items():
            created = (views.get(rid) or {}).get("created_at")
            if rec.tag and created is not None:
                runs_by_tag[rec.tag].append((created, rid))
        by_run: dict[str, list[dict]] = defaultdict(list)
        unclaimed: list[dict] = []
        for call in sorted(logged, key=lambda c: c["created_at"]):
            tag = (call.get("knobs") or {}).get(CHAOS_TAG)
            owners = [rid for created, rid in sorted(runs_by_tag.get(tag, [])) if created <= call["created_at"] + 0.5]
            if owners:
                by_run[owners[-1]].append(call)
            else:
                unclaimed.append(call)
        return dict(by_run), unclaimed

    def evidence(self, api: ApiClient, mix: Mix, views: dict[str, dict], refs: dict[str, dict]) -> Evidence:
        provider: dict[str, list[dict]] = defaultdict(list)
        by_id = {}
        for deployment in self.emulator_urls():
            for p in self.stack.emulator.responses(deployment):
                p["deployment"] = deployment
                provider[(p.get("metadata") or {}).get("bg_run_id")].append(p)
                by_id[p["id"]] = p
        chat_calls, unclaimed = self.chat_calls(api, views) if self.cfg.backend == "executor" else ({}, [])
        return Evidence(
            records=api.records,
            views=views,
            provider=dict(provider),
            provider_by_id=by_id,
            deliveries=self.stack.receiver.snapshot(),
            poison=self.poison(),
            reference_streams=refs,
            sessions=mix.sessions,
            idempotency=mix.idempotency,
            key_runs=api.key_runs,
            not_accepted=api.not_accepted,
            capacity_refusals=api.capacity_refusals,
            start_answers=sum(
                n for label, n in api.answers.items() if label.startswith("POST /api/runs ") and label[-1].isdigit()
            ),
            server_errors=api.server_errors,
            job_errors=mix.job_errors,
            answers=sum(n for label, n in api.answers.items() if label.rsplit(" ", 1)[-1].isdigit()),
            run_deadline=float(CHAOS_HOST_ENV["RUN_DEADLINE_SECONDS"]),
            stuck_slack=STUCK_SLACK_SECONDS,
            backend=self.cfg.backend,
            chat_calls=chat_calls,
            unclaimed_chat_calls=unclaimed,
            deployments=self.cfg.deployments,
            outages=dict(self.outages),
        )

    def emulator_urls(self) -> dict[str, str]:
        """Each emulator deployment's base URL (one, `default`, without --deployments)."""
        return self.stack.emulator.deployment_urls()

    def configure_emulator(self, **config: Any) -> None:
        """The same settings on every deployment (faults, quotas)."""
        for deployment in self.emulator_urls() if self.cfg.deployments else [None]:
            self.stack.emulator.configure(deployment, **config)

    # -- the whole thing ----------------------------------------------------------------------------------
    async def run(self) -> ChaosResult:
        cfg = self.cfg
        self.t0 = time.monotonic()
        host_env = {
            **CHAOS_HOST_ENV,
            **(EXECUTOR_HOST_ENV if cfg.backend == "executor" else {}),
            **cfg.host_settings,
        }
        emulator_config: dict[str, Any] = {"seed": cfg.seed}
        if cfg.deployments:
            ports = {"ptu": free_port(), "payg": free_port()}
            emulator_config["deployments"] = {name: {"port": port} for name, port in ports.items()}
            host_env["PROVIDER_DEPLOYMENTS"] = json.dumps(
                [
                    {"name": name, "endpoint": f"http://127.0.0.1:{port}/v1", "provider": "emulator", "priority": n}
                    for n, (name, port) in enumerate(ports.items())
                ]
            )
        if cfg.completion == "push":
            secret = new_secrets(1)[0]
            host_env.update(PROVIDER_WEBHOOK_SECRETS=secret, COMPLETION_STRATEGY="push")
            emulator_config.update(webhook_secret=secret, **PUSH_EMULATOR_FAULTS)
        self.stack = LocalStack(cfg.name, host_env=host_env, emulator_config=emulator_config)
        if cfg.completion == "push":
            app = f"http://127.0.0.1:{self.stack.ports.host}"
            self.stack.emulator_config["webhook_url"] = f"{app}/api/provider/webhooks"
        await asyncio.to_thread(self.stack.start)
        try:
            jobs = plan(
                cfg.runs, cfg.submit_seconds, self.rng, huge_outputs=cfg.huge_outputs, emoji_inputs=cfg.emoji_inputs
            )
            self.say(
                f"stack up ({cfg.backend} backend, completion by {cfg.completion}): host {self.stack.api}; "
                f"{len(jobs)} jobs ({dict(Counter(j.scenario for j in jobs))}) "
                f"over {cfg.submit_seconds:.0f}s"
            )
            self.configure_emulator(
                fault_429_rate=cfg.fault_429_rate,
                fault_500_rate=cfg.fault_500_rate,
                fault_503_rate=cfg.fault_503_rate,
                stream_cut_rate=cfg.stream_cut_rate,
                fault_endpoints=cfg.fault_endpoints,
                resume_window_s=3600,
                rpm_limit=cfg.provider_rpm,
            )
            if cfg.provider_rpm:
                self.say(f"provider quota: {cfg.provider_rpm} creates a minute per model; host {cfg.host_settings}")
            self.say(
                f"emulator faults on: 429 {cfg.fault_429_rate}, 500 {cfg.fault_500_rate}, "
                f"503 {cfg.fault_503_rate}, stream cuts {cfg.stream_cut_rate} on {cfg.fault_endpoints}"
            )
            self.t0 = time.monotonic()
            limits = httpx.Limits(max_connections=128, max_keepalive_connections=32)
            async with httpx.AsyncClient(
                base_url=self.stack.api, timeout=httpx.Timeout(30, read=60), limits=limits
            ) as http:
                api = ApiClient(http, self.rng, cfg.client_retry_s)
                mix = Mix(
                    api,
                    self.stack.receiver.url,
                    self.rng,
                    durations_ms=(cfg.min_duration_ms, cfg.max_duration_ms),
                    large_chars=cfg.large_output_chars,
                    huge_chars=cfg.huge_output_chars,
                    wait_timeout=cfg.converge_timeout_s,
                )
                work = [asyncio.create_task(mix.run(job, self.t0)) for job in jobs]
                await self.disruptions()
                await asyncio.gather(*work)
                self.say(f"clients done: {len(api.records)} runs accepted, {len(api.not_accepted)} not")
                self.configure_emulator(fault_429_rate=0, fault_500_rate=0, fault_503_rate=0, stream_cut_rate=0)
                quota = self.stack.emulator.stats().get("quota", {})
                self.stats_quota = {k: quota.get(k) for k in ("limited_requests", "limited_tokens")}
                self.say("emulator faults off; waiting for convergence")
                views = await self.converge(api)
                refs = await self.reference_streams(api, views)
            ev = self.evidence(api, mix, views, refs)
            checks = Checker(ev).all()
            self.stats = self.figures(api, mix, ev)
        finally:
            await asyncio.to_thread(self.stack.stop)
        self.stats["seconds"] = round(time.monotonic() - self.t0, 1)
        if cfg.provider_rpm:
            self.stats["provider_quota"] = {"rpm": cfg.provider_rpm, **self.stats_quota}
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
            if "sweeper repaired" in line:  # "... sweeper repaired {'polls': 3} (of 14 open runs)"
                found = line.split("sweeper repaired", 1)[1].strip()
                try:
                    repaired.update(ast.literal_eval(found[: found.find("}") + 1]))
                except (ValueError, SyntaxError):
                    pass
        figures = {
            "backend": self.cfg.backend,
            "runs_by_status": dict(Counter((views.get(r) or {}).get("status") for r in api.records)),
            "errors_by_code": dict(
                Counter(
                    ((views.get(r) or {}).get("error") or {}).get("code")
                    for r in api.records
                    if (views.get(r) or {}).get("error")
                )
            ),
            "runs_by_scenario": {k: dict(v) for k, v in sorted(by_scenario.items())},
            "not_accepted": len(api.not_accepted),
            "webhook": {
                "deliveries_received": len(ev.deliveries),
                "attempts_recorded": sum(attempts),
                "runs_with_retries": sum(1 for a in attempts if a > 1),
                "states": dict(Counter(((views.get(r) or {}).get("webhook") or {}).get("state") for r in api.records)),
            },
            "streams": {
                "consumers": len(streams),
                "resumes": resumes,
                "connections": dict(connections),
                "resumes_after_final_checked": sum(1 for s in streams if s["after_final"] is not None),
            },
            "sessions": {
                "sessions": len(mix.sessions),
                "concurrent_start_answers": dict(
                    Counter(
                        str(c["http"]) + (f" {c['code']}" if c["code"] else "")
                        for log in mix.sessions.values()
                        for c in log["concurrent"]
                    )
                ),
            },
            "faults": {
                **dict(self.faults),
                "emulator": self.stack.emulator.stats().get("faults"),
                "receiver_outage_s": self.cfg.receiver_outage_s,
                "azurite_down_s": self.cfg.azurite_down_s,
            },
            "api_answers": dict(sorted(api.answers.items())),
            "poison": {k: len(v) for k, v in ev.poison.items()},
            "host_starts": logs.count("===== start"),
            "sweeper_repaired": dict(repaired),
            "host_log": str(self.stack.host.log_path),
        }
        if self.cfg.backend == "executor":
            figures["executor"] = self.executor_figures(ev, logs)
        if self.cfg.deployments:
            figures["deployments"] = self.deployment_figures(ev, logs)
        if self.cfg.completion == "push":
            figures["provider_webhooks"] = self.push_figures(logs)
        return figures

    def push_figures(self, logs: str) -> dict[str, Any]:
        """What the emulator sent and how the app answered; the runs' ends came by push or by the safety net."""
        url = f"{self.stack.emulator.base_url}/_emulator/webhook_deliveries"
        deliveries = httpx.get(url, timeout=60).json()["data"]
        attempts = [a for d in deliveries for a in d.get("attempts", [])]
        invocations = Counter(f"{m['fn']} {m['outcome']}" for m in map(EXECUTED.match, logs.splitlines()) if m)
        return {
            "deliveries": len(deliveries),
            "attempts_by_answer": dict(Counter(str(a.get("status") or a.get("error")) for a in attempts)),
            "receive_provider_webhook": {
                k.split()[1]: v for k, v in invocations.items() if k.startswith("receive_provider_webhook ")
            },
            "poll_steps": sum(v for k, v in invocations.items() if k.startswith("poll_run ")),
        }

    def deployment_figures(self, ev: Evidence, logs: str) -> dict[str, Any]:
        """Where runs ended up, the model calls or provider responses each deployment served, and the breakers."""
        by_deployment = Counter(c["deployment"] for calls in ev.chat_calls.values() for c in calls)
        by_deployment.update(p["deployment"] for ps in ev.provider.values() for p in ps)
        return {
            "runs_by_deployment": dict(Counter(str((v or {}).get("deployment")) for v in ev.views.values())),
            "served_by_deployment": dict(by_deployment),  # provider responses, or the executor's model calls
            "outage_s": self.cfg.deployment_outage_s,
            "circuit_opened": logs.count(": circuit open ("),
            "executor_spills": logs.count("refused before output"),
        }

    @staticmethod
    def executor_figures(ev: Evidence, logs: str) -> dict[str, Any]:
        calls = [c for cs in ev.chat_calls.values() for c in cs]
        per_run = Counter(len(cs) for cs in ev.chat_calls.values())
        return {
            "model_calls": len(calls),
            "whole": sum(map(call_whole, calls)),
            "cut": sum(1 for c in calls if c.get("cut")),
            "disconnected": sum(1 for c in calls if c.get("disconnected")),
            "runs_by_calls": {str(k): v for k, v in sorted(per_run.items())},
            "unclaimed_calls": len(ev.unclaimed_chat_calls),
            "restarts_in_replays": sum(r.get("restarts", 0) for r in ev.reference_streams.values()),
            # what the host log says about attempts (shared/runs/executing.py, executor_backend.py)
            "requeued_before_start": len(re.findall(r": attempt 0 silent for", logs)),
            "requeued_silent_attempt": len(re.findall(r": attempt [1-9]\d* silent for", logs)),
            "taken_over_after_host_stop": logs.count("ended with its invocation (host stopped or failed)"),
            "taken_over_silent": logs.count("went silent; starting attempt"),
            "restarted_after_cut": len(re.findall(r"stream was cut \([^)]*\); attempt \d+", logs)),
            "retried_before_output": logs.count("provider hiccup before output"),
            "provider_responses": sum(len(v) for v in ev.provider.values()),
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
        lines.append(f"  {'SKIP' if c.skipped else 'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
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
    skipped = sum(1 for c in result.checks if c.skipped)
    lines.append(f"{result.passed} passed, {result.failed} failed" + (f" ({skipped} skipped)" if skipped else ""))
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
    parser.add_argument(
        "--completion",
        choices=COMPLETIONS,
        default=defaults.completion,
        help="push: the emulator sends provider webhooks (10%% lost, 10%% twice); the chain is the net",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.backend,
        help="executor: the host makes every model call itself (faults on the chat endpoint too)",
    )
    parser.add_argument(
        "--provider-rpm",
        type=int,
        default=defaults.provider_rpm,
        help="the emulator's quota of creates a minute per model, below the offered load (0: none)",
    )
    parser.add_argument(
        "--deployments",
        action="store_true",
        help="two emulator deployments (ptu priority 0, payg 1) in PROVIDER_DEPLOYMENTS; ptu goes down mid-run",
    )
    parser.add_argument("--deployment-outage", type=float, default=defaults.deployment_outage_s)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a host setting (repeatable), e.g. PACING_REQUESTS_PER_MINUTE=110",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write chaos.txt and chaos.json here (chaos-executor.*, chaos-push.* with those options)",
    )
    args = parser.parse_args(argv)
    stem = "chaos" + {"executor": "-executor"}.get(args.backend, "") + {"push": "-push"}.get(args.completion, "")
    stem += "-quota" if args.provider_rpm else ""
    stem += "-deployments" if args.deployments else ""
    started = time.monotonic()
    result = run_chaos(
        runs=args.runs,
        submit_seconds=args.submit_seconds,
        host_kills=args.host_kills,
        receiver_outage_s=args.receiver_outage,
        azurite_down_s=args.azurite_down,
        huge_outputs=args.huge_outputs,
        seed=args.seed,
        converge_timeout_s=args.converge_timeout,
        backend=args.backend,
        completion=args.completion,
        provider_rpm=args.provider_rpm,
        host_settings=parse_settings(args.setting),
        deployments=args.deployments,
        deployment_outage_s=args.deployment_outage,
        name=stem,
        **({"fault_endpoints": defaults.fault_endpoints + ",chat"} if args.backend == "executor" else {}),
    )
    text = report(result).replace(
        f"\n{result.passed} passed", f"\nwall time {time.monotonic() - started:.0f} s\n{result.passed} passed"
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        timeline = "\n".join(f"[chaos +{t:6.1f}s] {m}" for t, m in result.events)
        (args.out / f"{stem}.txt").write_text(f"{' '.join(sys.argv)}\n\n{timeline}\n{text}\n")
        (args.out / f"{stem}.json").write_text(
            json.dumps(
                {
                    "config": {k: v for k, v in vars(args).items() if k != "out"},
                    "stats": result.stats,
                    "checks": [asdict(c) for c in result.checks],
                    "events": result.events,
                },
                indent=1,
                default=str,
            )
            + "\n"
        )
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
