"""What the chaos run's users do: the mix of scenarios, each a coroutine driving the HTTP API.

Every accepted run carries `expect` (what its history allows, read by bench/chaos_checks.py):
`{"status": "completed"}` or a rule name (`cancel_race`, `deadline_near`, ...) plus the figures the rule needs.
Every run has a webhook. The plan (which scenario when) is drawn from the seed, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .chaos_client import CHAOS_TAG, ApiClient, StreamConsumer

# Share of the run budget per scenario (the rest is `plain`) and the runs one job of it starts.
MIX: dict[str, tuple[float, int]] = {
    "stream": (0.12, 1),  # a consumer that hangs up and resumes (several cut points)
    "stream_cancel": (0.02, 1),  # a streamed run cancelled by another client while it is being read
    "attach": (0.04, 1),  # a polling-created run whose stream is read (and cut) by GET .../stream
    "cancel_race": (0.08, 1),  # a cancel sent around the time the run completes
    "session": (0.16, 5),  # multi-turn: text, function call, tool output, 6 concurrent starts, text
    "deadline": (0.06, 1),  # deadline_seconds: well past it (expired) or finishing just before it
    "function_call": (0.05, 1),  # requires_action
    "large": (0.02, 1),  # 200 KB output
    "idempotent": (0.06, 1),  # the same Idempotency-Key sent again, or twice at once
    "outcome": (0.03, 1),  # the provider ends it failed or incomplete
}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
STREAM_DELTAS = 40
CONCURRENT_STARTS = 6  # a streamed run has ~50 events: room for several cut points


@dataclass
class Job:
    scenario: str
    index: int
    at: float = 0.0  # seconds after the start of submissions
    variant: str = ""


def plan(runs: int, submit_seconds: float, rng: random.Random, *, huge_outputs: int, emoji_inputs: int) -> list[Job]:
    """Jobs for about `runs` runs, spread evenly over the submission window in a seeded random order."""
    jobs: list[Job] = []
    budget = runs
    for scenario, (share, per_job) in MIX.items():
        count = max(1, round(runs * share / per_job)) if runs >= 20 else 0
        jobs += [Job(scenario, 0) for _ in range(count)]
        budget -= count * per_job
    jobs += [Job("huge", 0) for _ in range(huge_outputs)] + [Job("emoji_input", 0) for _ in range(emoji_inputs)]
    budget -= huge_outputs + emoji_inputs
    jobs += [Job("plain", 0) for _ in range(max(0, budget))]
    rng.shuffle(jobs)
    spacing = submit_seconds / max(1, len(jobs))
    for index, job in enumerate(jobs):
        job.index, job.at = index, index * spacing
        job.variant = rng.choice(_VARIANTS.get(job.scenario, ("",)))
    return jobs


_VARIANTS = {"deadline": ("past", "near"), "idempotent": ("repeat", "concurrent"), "outcome": ("failed", "incomplete")}


class Mix:
    """Runs the jobs against the API; `webhook_url` receives every run's webhook."""

    def __init__(
        self,
        api: ApiClient,
        webhook_url: str,
        rng: random.Random,
        *,
        durations_ms: tuple[int, int],
        large_chars: int,
        huge_chars: int,
        wait_timeout: float,
    ) -> None:
        self.api = api
        self.webhook_url = webhook_url
        self.rng = rng
        self.durations_ms = durations_ms
        self.large_chars = large_chars
        self.huge_chars = huge_chars
        self.wait_timeout = wait_timeout
        self.sessions: dict[str, dict[str, Any]] = {}  # session id -> {"turns": [...], "concurrent": [...]}
        self.idempotency: list[dict[str, Any]] = []
        self.job_errors: list[str] = []
        self.tags = 0

    def body(self, job: Job, *, duration_ms: int | None = None, **extra: Any) -> dict[str, Any]:
        self.tags += 1
        metadata = {
            "chaos_index": str(job.index),
            "chaos_scenario": job.scenario,
            "emulator_duration_ms": str(duration_ms or self.rng.randint(*self.durations_ms)),
            CHAOS_TAG: f"{job.index}.{self.tags}",
        }
        metadata.update(extra.pop("metadata", {}))
        return {
            "input": f"chaos {job.scenario} #{job.index}",
            "webhook_url": f"{self.webhook_url}/chaos",
            "metadata": metadata,
            **extra,
        }

    async def run(self, job: Job, t0: float) -> None:
        await asyncio.sleep(max(0.0, job.at - (time.monotonic() - t0)))
        action: Callable[[Job], Awaitable[None]] = getattr(self, f"job_{job.scenario}")
        try:
            await action(job)
        except Exception as error:  # noqa: BLE001 - a client bug must not hide the rest of the run
            self.job_errors.append(f"{job.scenario}#{job.index}: {type(error).__name__}: {error}")

    # -- simple runs --------------------------------------------------------------------------------------
    async def job_plain(self, job: Job) -> None:
        await self.api.start(self.body(job), scenario="plain", expect={"status": "completed"})

    async def job_outcome(self, job: Job) -> None:
        body = self.body(job, metadata={"emulator_outcome": job.variant})
        await self.api.start(body, scenario=f"outcome_{job.variant}", expect={"status": job.variant})

    async def job_function_call(self, job: Job) -> None:
        body = self.body(job, tools=[WEATHER_TOOL], metadata={"emulator_function_call": "get_weather"})
        await self.api.start(body, scenario="function_call", expect={"status": "requires_action", "calls": 1})

    async def job_large(self, job: Job) -> None:
        body = self.body(job, metadata={"emulator_output_chars": str(self.large_chars)})
        await self.api.start(body, scenario="large", expect={"status": "completed", "output_chars": self.large_chars})

    async def job_huge(self, job: Job) -> None:
        body = self.body(job, duration_ms=8000, metadata={"emulator_output_chars": str(self.huge_chars)})
        await self.api.start(body, scenario="huge", expect={"status": "completed", "output_chars": self.huge_chars})

    async def job_emoji_input(self, job: Job) -> None:
        """29,000 emoji: 29,000 Python characters but 58,000 UTF-16 units (116 KB) in a Table property."""
        body = self.body(job)
        body["input"] = "\U0001f600" * 29_000
        await self.api.start(body, scenario="emoji_input", expect={"status": "completed"})

    # -- deadlines and cancels ---------------------------------------------------------------------------
    async def job_deadline(self, job: Job) -> None:
        if job.variant == "past":
            deadline, duration = 3, self.rng.randint(10_000, 20_000)
        else:  # the provider finishes 0.3-1.5 s before the run's deadline: it must end completed
            deadline = self.rng.choice((4, 5, 6))
            duration = deadline * 1000 - self.rng.randint(300, 1500)
        body = self.body(job, duration_ms=duration, deadline_seconds=deadline)
        expect = {
            "status": "expired" if job.variant == "past" else "completed",
            "rule": f"deadline_{job.variant}",
            "deadline_seconds": deadline,
            "duration_ms": duration,
        }
        await self.api.start(body, scenario=f"deadline_{job.variant}", expect=expect)

    async def job_cancel_race(self, job: Job) -> None:
        duration = self.rng.randint(2000, 5000)
        record, _ = await self.api.start(
            self.body(job, duration_ms=duration),
            scenario="cancel_race",
            expect={"rule": "cancel_race", "duration_ms": duration},
        )
        if record is None:
            return
        # around the nominal end: some cancels land before the provider finishes, some after
        await asyncio.sleep(max(0.0, duration / 1000 + self.rng.uniform(-1.2, 0.3)))
        await self.api.cancel(record)

    # -- Idempotency-Key ----------------------------------------------------------------------------------
    async def job_idempotent(self, job: Job) -> None:
        body, key = self.body(job), f"chaos-idem-{job.index}-{self.rng.getrandbits(64):016x}"
        expect = {"status": "completed"}
        if job.variant == "concurrent":
            results = await asyncio.gather(
                *(self.api.start(body, scenario="idempotent", expect=expect, key=key) for _ in range(2))
            )
        else:
            first = await self.api.start(body, scenario="idempotent", expect=expect, key=key)
            await asyncio.sleep(self.rng.uniform(0.2, 2.0))
            results = [first, await self.api.start(body, scenario="idempotent", expect=expect, key=key)]
        ids = [record.run_id if record else None for record, _ in results]
        self.idempotency.append(
            {"key": key, "variant": job.variant, "ids": ids, "answers": [answer.trail for _, answer in results]}
        )

    # -- streams ------------------------------------------------------------------------------------------
    def _cuts(self) -> list[int]:
        return sorted(self.rng.sample(range(2, STREAM_DELTAS + 8), k=self.rng.randint(1, 3)))

    async def job_stream(self, job: Job) -> None:
        """POST stream=true, read, hang up at the cut points, resume each time, until the final event."""
        body = self.body(
            job, duration_ms=self.rng.randint(3000, 7000), stream=True, metadata={"emulator_deltas": str(STREAM_DELTAS)}
        )
        key = f"chaos-stream-{job.index}-{self.rng.getrandbits(64):016x}"
        deadline = time.monotonic() + self.api.retry_seconds
        while time.monotonic() < deadline:
            request = self.api.http.build_request("POST", "/api/runs", json=body, headers={"Idempotency-Key": key})
            try:
                response = await self.api.http.send(request, stream=True)
            except httpx.HTTPError as error:
                self.api._count("POST /api/runs (stream)", None, error)
                await asyncio.sleep(0.5 + self.rng.random())
                continue
            self.api._count("POST /api/runs (stream)", response)
            if response.status_code == 429:  # a streaming start refused for the provider's capacity
                self.api.capacity_refusals.append("POST /api/runs (stream) -> 429")
            location = response.headers.get("location", "")
            if (
                response.status_code == 200
                and location
                and "text/event-stream" in response.headers.get("content-type", "")
            ):
                record = self.api.accepted(
                    location.rsplit("/", 1)[-1], "stream", {"status": "completed", "stream": True}, key, None, body
                )
                await StreamConsumer(self.api, record, self._cuts(), self.wait_timeout).consume(response)
                return
            await response.aread()
            await response.aclose()
            if response.status_code not in (429, 503, 500, 409):
                break
            await asyncio.sleep(0.5 + self.rng.random())
        self.api.not_accepted.append(
            {
                "scenario": "stream",
                "key": key,
                "answers": ["stream start refused"],
                "last": None,
                "input_chars": len(body["input"]),
            }
        )

    async def job_stream_cancel(self, job: Job) -> None:
        """A run streamed to one client and cancelled by another half-way: the stream must end with the run's
        final state (`run.cancelled`, or `run.completed` if the provider finished first)."""
        duration = self.rng.randint(4000, 7000)
        body = self.body(job, duration_ms=duration, metadata={"emulator_deltas": str(STREAM_DELTAS)})
        record, _ = await self.api.start(
            body, scenario="stream_cancel", expect={"rule": "cancel_race", "duration_ms": duration, "stream": True}
        )
        if record is None:
            return

        async def cancel_half_way() -> None:
            await asyncio.sleep(duration / 1000 * self.rng.uniform(0.3, 0.6))
            await self.api.cancel(record)

        canceller = asyncio.create_task(cancel_half_way())
        await StreamConsumer(self.api, record, self._cuts(), self.wait_timeout).consume(None)
        await canceller

    async def job_attach(self, job: Job) -> None:
        """A run started without streaming, then read with GET .../stream from the start, with cuts."""
        body = self.body(
            job, duration_ms=self.rng.randint(3000, 7000), metadata={"emulator_deltas": str(STREAM_DELTAS)}
        )
        record, _ = await self.api.start(body, scenario="attach", expect={"status": "completed", "stream": True})
        if record is not None:
            await StreamConsumer(self.api, record, self._cuts(), self.wait_timeout).consume(None)

    # -- sessions -----------------------------------------------------------------------------------------
    async def job_session(self, job: Job) -> None:
        session_id = await self.api.create_session()
        if session_id is None:
            self.job_errors.append(f"session#{job.index}: could not create a session")
            return
        log: dict[str, Any] = {"turns": [], "concurrent": []}
        self.sessions[session_id] = log
        await self._turn(job, session_id, log, "text", self.body(job, session_id=session_id), "completed")
        call = await self._turn(
            job,
            session_id,
            log,
            "function_call",
            self.body(
                job, session_id=session_id, tools=[WEATHER_TOOL], metadata={"emulator_function_call": "get_weather"}
            ),
            "requires_action",
        )
        calls = ((call or {}).get("required_action") or {}).get("calls") or []
        if calls:
            output = [{"type": "function_call_output", "call_id": calls[0]["call_id"], "output": '{"temp_c": 21}'}]
            await self._turn(
                job,
                session_id,
                log,
                "tool_output",
                {**self.body(job, session_id=session_id, tools=[WEATHER_TOOL]), "input": output},
                "completed",
                expect_extra={"text_starts": f"Tool get_weather ({calls[0]['call_id']})"},
            )
        await self._concurrent_turn(job, session_id, log)
        await self._turn(job, session_id, log, "text_after", self.body(job, session_id=session_id), "completed")

    async def _turn(
        self, job: Job, session_id: str, log: dict, name: str, body: dict, status: str, expect_extra: dict | None = None
    ) -> dict | None:
        record, answer = await self.api.start(
            body,
            scenario=f"session_{name}",
            expect={"status": status, **(expect_extra or {})},
            final_codes=("session_busy",),
        )
        log["turns"].append({"turn": name, "run_id": record.run_id if record else None, "answers": answer.trail})
        if record is None:
            return None
        return await self.api.wait_terminal(record.run_id, self.wait_timeout)

    async def _concurrent_turn(self, job: Job, session_id: str, log: dict) -> None:
        """Six starts on one session within 15 ms: one may run, the others must get 409. The spread matters:
        starts at exactly the same instant all lose the session's ETag race cleanly; a start that reads the
        session just after another reserved it, while that one's run row is not yet written, is the
        dangerous case (issue 12 defect 1), and a 0-15 ms spread lands there in a fair share of sessions."""
        body = self.body(job, session_id=session_id)

        async def start_after(delay: float):
            await asyncio.sleep(delay)
            return await self.api.start(
                body, scenario="session_concurrent", expect={"status": "completed"}, final_codes=("session_busy",)
            )

        delays = [0.0] + [self.rng.uniform(0, 0.015) for _ in range(CONCURRENT_STARTS - 1)]
        results = await asyncio.gather(*(start_after(d) for d in delays))
        log["concurrent"] = [
            {
                "run_id": record.run_id if record else None,
                "answers": answer.trail,
                "http": answer.status,
                "code": answer.code,
            }
            for record, answer in results
        ]
        for record, _ in results:
            if record is not None:
                await self.api.wait_terminal(record.run_id, self.wait_timeout)
