"""The soak's load (bench/soak.py): what users do, at a steady rate, for as long as the soak lasts.

The chaos run's scenarios (bench/chaos_mix.py: streams hung up and resumed, cancels racing the end, sessions with
six concurrent starts, function calls, Idempotency-Key repeats, deadlines, failed/incomplete outcomes, 200 KB
outputs) plus long runs and the Responses API facade through the `openai` SDK (background create and retrieve
every 2 s, the Agent Framework pattern; streams cut and resumed with `starting_after`; creates that wait for the
result; `input_items`, `delete`). Every run has a webhook; 5 % of them fail their first delivery (`?fail=1`), so
deliveries are retried. Executor runs go to a second host of the same app with RUN_BACKEND=executor.

Each scenario has a rate per minute (at `--rate 1`); its jobs are spread evenly over the window with a random
phase within each slot, so every minute carries the same load (a Poisson process would make the per-minute
ratios noisier). The plan is drawn from the seed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from .chaos_client import TERMINAL, ApiClient
from .chaos_mix import Job, Mix

MODEL = "gpt-4.1-mini"
# Runs per minute at --rate 1, by scenario. A session job makes 5 runs (and 5 starts refused with 409).
# "B:" scenarios run on the executor host.
RATES: dict[str, float] = {
    "plain": 10,
    "long": 3,
    "stream": 4,
    "attach": 1,
    "cancel_race": 2,
    "session": 0.4,
    "function_call": 1,
    "idempotent": 1,
    "deadline": 1,
    "outcome": 0.5,
    "large": 0.5,
    "facade_background": 3,
    "facade_stream": 2,
    "facade_wait": 1,
    "B:plain": 2,
    "B:stream": 1.5,
    "B:cancel_race": 0.5,
    "B:facade_background": 1,
}
RUNS_PER_JOB = {"session": 5}
LONG_MS = (30_000, 180_000)  # the longest run bounds the warm-up and the drain
PLAIN_MS = (1_000, 10_000)
EXECUTOR_MS = (2_000, 10_000)  # an executor run holds a queue invocation for its whole model call
FLAKY_WEBHOOKS = 0.05
_VARIANTS = {"deadline": ("past", "near"), "idempotent": ("repeat", "concurrent"), "outcome": ("failed", "incomplete")}


def runs_per_minute(rate: float, *, executor: bool = True) -> float:
    return rate * sum(
        r * RUNS_PER_JOB.get(name.removeprefix("B:"), 1)
        for name, r in RATES.items()
        if executor or not name.startswith("B:")
    )


def plan(minutes: float, rate: float, rng: random.Random) -> list[Job]:
    """Every job of the soak in time order: scenario s at rate r gets one job in each slot of 1/r minutes."""
    jobs: list[Job] = []
    for scenario, per_minute in RATES.items():
        slot = 60.0 / (per_minute * rate)
        count = int(minutes * 60 / slot)
        jobs += [Job(scenario, 0, at=(k + rng.random()) * slot) for k in range(count)]
    jobs.sort(key=lambda job: job.at)
    for index, job in enumerate(jobs):
        job.index = index
        job.variant = rng.choice(_VARIANTS.get(job.scenario.removeprefix("B:"), ("",)))
    return jobs


@dataclass
class FacadeRun:
    run_id: str
    host: str
    accepted_at: float
    deleted: bool = False


class SoakMix(Mix):
    """The chaos mix on one host (`api`) plus long runs and the facade; `starts` counts accepted starts per
    minute of the soak, `start_latencies` the latency of each start that was accepted at once."""

    def __init__(
        self,
        api: ApiClient,
        webhook_url: str,
        rng: random.Random,
        *,
        host: str,
        facade: openai.AsyncOpenAI,
        durations_ms: tuple[int, int],
        wait_timeout: float,
    ) -> None:
        super().__init__(
            api,
            webhook_url,
            rng,
            durations_ms=durations_ms,
            large_chars=200_000,
            huge_chars=200_000,
            wait_timeout=wait_timeout,
        )
        self.host = host
        self.facade = facade
        self.facade_runs: dict[str, FacadeRun] = {}
        self.facade_errors: list[str] = []
        self.flaky = Counter()

    def body(self, job: Job, *, duration_ms: int | None = None, **extra: Any) -> dict[str, Any]:
        body = super().body(job, duration_ms=duration_ms, **extra)
        body["webhook_url"] = self.hook()
        return body

    def hook(self) -> str:
        if self.rng.random() < FLAKY_WEBHOOKS:
            self.flaky["fail_first"] += 1
            return f"{self.webhook_url}/soak?fail=1"
        return f"{self.webhook_url}/soak"

    # -- runs the client polls (half of them; the others wait for the webhook alone) --------------------------
    async def job_plain(self, job: Job) -> None:
        record, _ = await self.api.start(self.body(job), scenario="plain", expect={"status": "completed"})
        if record is not None and self.rng.random() < 0.5:
            await self.api.wait_terminal(record.run_id, self.wait_timeout, every=2.0)

    async def job_long(self, job: Job) -> None:
        """A long run, polled now and then with its continuation token (README: "poll with the token")."""
        body = self.body(job, duration_ms=self.rng.randint(*LONG_MS))
        record, answer = await self.api.start(body, scenario="long", expect={"status": "completed"})
        token = (answer.body or {}).get("continuation_token") if record is not None else None
        deadline = time.monotonic() + self.wait_timeout
        while token and self.rng.random() < 0.5 and time.monotonic() < deadline:
            await asyncio.sleep(5.0)
            polled = await self.api.call(
                "POST", "/api/runs", label="POST /api/runs (token)", json_body={"continuation_token": token}
            )
            if polled.status not in (200, 202):  # 202 while it runs, 200 once it ended
                break
            token = (polled.body or {}).get("continuation_token")

    # -- the facade, through the openai SDK ------------------------------------------------------------------
    def _knobs(self, job: Job, duration_ms: int, **more: str) -> dict[str, str]:
        return {"soak_index": str(job.index), "emulator_duration_ms": str(duration_ms), **more}

    def _accepted(self, run_id: str) -> None:
        self.facade_runs.setdefault(run_id, FacadeRun(run_id, self.host, time.time()))

    async def job_facade_background(self, job: Job) -> None:
        """create(background=True), then retrieve every 2 s until it ends (what Agent Framework does); then now
        and then the input items, or a delete."""
        try:
            response = await self.facade.responses.create(
                model=MODEL,
                input=f"soak facade #{job.index}",
                background=True,
                metadata=self._knobs(job, self.rng.randint(*self.durations_ms)),
                extra_body={"webhook_url": self.hook()},
            )
            self._accepted(response.id)
            deadline = time.monotonic() + self.wait_timeout
            while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
                await asyncio.sleep(2.0)
                response = await self.facade.responses.retrieve(response.id)
            roll = self.rng.random()
            if roll < 0.3:
                items = await self.facade.responses.input_items.list(response.id)
                if not items.data:
                    self.facade_errors.append(f"{response.id}: no input items")
            elif roll < 0.5 and response.status in TERMINAL:
                await self.facade.responses.delete(response.id)
                self.facade_runs[response.id].deleted = True
        except openai.OpenAIError as error:
            self.facade_errors.append(f"facade_background#{job.index}: {type(error).__name__}: {error}")

    async def job_facade_stream(self, job: Job) -> None:
        """create(stream=True), hang up after a few events, resume with retrieve(stream=True, starting_after)."""
        run_id, last, cut = None, None, self.rng.randint(3, 20)
        try:
            stream = await self.facade.responses.create(
                model=MODEL,
                input=f"soak facade stream #{job.index}",
                stream=True,
                metadata=self._knobs(job, self.rng.randint(3000, 7000), emulator_deltas="40"),
                extra_body={"webhook_url": self.hook()},
            )
            seen = 0
            async for event in stream:
                seen += 1
                last = getattr(event, "sequence_number", last)
                if run_id is None and getattr(event, "response", None) is not None:
                    run_id = event.response.id
                    self._accepted(run_id)
                if seen >= cut:
                    break
            await stream.close()
            if run_id is None:
                self.facade_errors.append(f"facade_stream#{job.index}: no response id in {seen} events")
                return
            final = None
            resumed = await self.facade.responses.retrieve(run_id, stream=True, starting_after=last)
            async for event in resumed:
                final = event.type
            if final not in ("response.completed", "response.failed", "response.incomplete"):
                self.facade_errors.append(f"facade_stream#{job.index} {run_id}: resumed stream ended with {final}")
        except openai.OpenAIError as error:
            self.facade_errors.append(f"facade_stream#{job.index}: {type(error).__name__}: {error}")

    async def job_facade_wait(self, job: Job) -> None:
        """The SDK's default: create and wait for the result in the same request."""
        try:
            response = await self.facade.responses.create(
                model=MODEL,
                input=f"soak facade wait #{job.index}",
                metadata=self._knobs(job, self.rng.randint(1000, 3000)),
                extra_body={"webhook_url": self.hook()},
            )
            self._accepted(response.id)
            if response.status != "completed":
                self.facade_errors.append(f"facade_wait#{job.index} {response.id}: {response.status}")
        except openai.OpenAIError as error:
            self.facade_errors.append(f"facade_wait#{job.index}: {type(error).__name__}: {error}")


def starts_by_minute(mixes: list[SoakMix], t0_epoch: float) -> dict[str, Counter]:
    """Accepted starts per host per minute of the soak (minute 1 = the first 60 s), native and facade."""
    out: dict[str, Counter] = {}
    for mix in mixes:
        counter = out.setdefault(mix.host, Counter())
        times = [r.accepted_at for r in mix.api.records.values()] + [r.accepted_at for r in mix.facade_runs.values()]
        for at in times:
            counter[int((at - t0_epoch) // 60) + 1] += 1
    return out


async def run_jobs(
    jobs: list[Job], mixes: dict[str, SoakMix], t0: float, stop: asyncio.Event, tasks: list[asyncio.Task]
) -> None:
    """Start each job at its time on its host's mix until the plan ends or `stop` is set; each started job's task
    is added to `tasks`."""
    for job in jobs:
        delay = job.at - (time.monotonic() - t0)
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        if stop.is_set():
            break
        host, _, scenario = job.scenario.rpartition(":")
        mix = mixes[host or "A"]
        tasks.append(asyncio.create_task(mix.run(Job(scenario, job.index, 0.0, job.variant), t0)))


class TimedTransport(httpx.AsyncHTTPTransport):
    """Times each request to its response headers: new-run starts (`POST /api/runs` without a continuation token;
    streaming starts apart) and reads (`GET /api/runs/{id}` and polls with the token). `take()` hands over what
    was timed since the last call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timed: list[tuple[str, float]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = await super().handle_async_request(request)
        kind = _kind(request)
        if kind and response.status_code < 300:
            self.timed.append((kind, time.perf_counter() - started))
        return response

    def take(self) -> list[tuple[str, float]]:
        timed, self.timed = self.timed, []
        return timed


def _kind(request: httpx.Request) -> str | None:
    path = request.url.path
    if request.method == "GET" and path.startswith("/api/runs/") and path.count("/") == 3:
        return "read"
    if request.method == "POST" and path == "/api/runs":
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            return None
        if "continuation_token" in body:
            return None if body.get("stream") else "read"  # a poll with the token
        return "start_stream" if body.get("stream") else "start"
    return None


def http_client(base_url: str, transport: TimedTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30, read=60), transport=transport)
