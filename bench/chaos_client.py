"""The chaos run's clients: what a careful user of the HTTP API does, and a record of what each run lived.

Only the documented API (README.md) is used: `POST /api/runs` (with `Idempotency-Key`), `GET /api/runs/{id}`,
`POST /api/runs/{id}/cancel`, `GET /api/runs/{id}/stream` (resume with `Last-Event-ID` or `starting_after`),
`POST /api/runs {"continuation_token", "stream": true}`, `POST /api/sessions`.
A client retries what the API says is transient (503/429 with `Retry-After`, `409 idempotency_key_busy`)
and connection errors (a killed host), bounded in time; everything else is its final answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete", "expired", "requires_action"})
FINAL_EVENTS = frozenset(f"run.{s}" for s in TERMINAL)
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# A metadata key unique to each request body. It starts with `emulator_` so that the executor passes it to the
# emulator's Chat Completions as a knob (the emulator ignores knobs it does not know and lists them with each
# call): the chat log then says which run each model call belongs to.
CHAOS_TAG = "emulator_chaos_tag"
RESTART_EVENT = "output_restarted"  # an executor run's output starts again (a new attempt of its model call)

# How a provider says it has no capacity now (a 429 rate limit, a 503 overload), as the service quotes it.
CAPACITY_WORDS = re.compile(r"rate limit|overloaded", re.IGNORECASE)


@dataclass
class RunRecord:
    """One accepted run: which scenario made it, what it asked for, and everything the client saw."""

    run_id: str
    scenario: str
    expect: dict[str, Any]
    key: str
    accepted_at: float  # epoch seconds of the 2xx
    history: list[str] = field(default_factory=list)
    session_id: str | None = None
    cancel: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None
    tag: str | None = None  # the body's `emulator_chaos_tag`: finds the run's model calls in the emulator's chat log

    def note(self, text: str) -> None:
        self.history.append(f"{time.time():.2f} {text}")


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (connection error) before the bound
    body: dict[str, Any] | None
    attempts: int
    trail: list[str]

    @property
    def ok(self) -> bool:
        return self.status in (200, 201, 202)

    @property
    def code(self) -> str | None:
        return ((self.body or {}).get("error") or {}).get("code")


class ApiClient:
    """The HTTP API with retries, counting every answer; shared by all scenarios of one chaos run."""

    def __init__(self, http: httpx.AsyncClient, rng: random.Random, retry_seconds: float) -> None:
        self.http = http
        self.rng = rng
        self.retry_seconds = retry_seconds
        self.answers: Counter = Counter()  # "POST /api/runs 503" -> n
        self.server_errors: list[str] = []  # every 500 (a bug by the project's standards)
        self.key_runs: dict[str, set[str]] = defaultdict(set)  # Idempotency-Key -> run ids answered
        self.records: dict[str, RunRecord] = {}
        self.not_accepted: list[dict[str, Any]] = []
        # Start answers that handed a provider's lack of capacity back to the caller: a 429, or a 503
        # provider_unavailable quoting the provider's rate limit or overload (one quoting a 500 or a timeout is a
        # create whose outcome is unknown, handed back by design). With admission, none.
        self.capacity_refusals: list[str] = []

    def _count(self, what: str, response: httpx.Response | None, error: Exception | None = None) -> None:
        label = f"{what} {response.status_code}" if response is not None else f"{what} {type(error).__name__}"
        self.answers[label] += 1
        if response is not None and response.status_code >= 500 and response.status_code not in RETRYABLE_STATUS:
            self.server_errors.append(f"{what} -> {response.status_code} {response.text[:200]}")

    async def _pause(self, response: httpx.Response | None) -> None:
        try:
            hinted = float(response.headers.get("retry-after", "")) if response is not None else 0.0
        except ValueError:
            hinted = 0.0
        await asyncio.sleep(min(3.0, max(0.3, hinted)) * (0.7 + 0.6 * self.rng.random()))

    async def call(
        self,
        method: str,
        path: str,
        *,
        label: str,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        final_codes: tuple[str, ...] = (),
    ) -> Answer:
        """One logical request, retried while the answer is transient; `final_codes` end it early (e.g. a 409
        session_busy is an answer, not a hiccup)."""
        deadline = time.monotonic() + self.retry_seconds
        trail: list[str] = []
        attempts = 0
        while True:
            attempts += 1
            response, error = None, None
            try:
                response = await self.http.request(method, path, json=json_body, headers=headers)
            except httpx.HTTPError as exc:
                error = exc
            self._count(label, response, error)
            body = _json(response)
            code = ((body or {}).get("error") or {}).get("code") if isinstance(body, dict) else None
            if label == "POST /api/runs" and response is not None:
                message = str(((body or {}).get("error") or {}).get("message", "")) if isinstance(body, dict) else ""
                capacity = CAPACITY_WORDS.search(message) and code == "provider_unavailable"
                if response.status_code == 429 or (response.status_code == 503 and capacity):
                    self.capacity_refusals.append(f"{label} -> {response.status_code} {code}: {message[:120]}")
            trail.append(
                str(response.status_code) + (f" {code}" if code else "")
                if response is not None
                else type(error).__name__
            )
            transient = (
                response is None
                or response.status_code in RETRYABLE_STATUS
                or (response.status_code == 409 and code == "idempotency_key_busy")
                or response.status_code == 500
            )
            if (not transient or code in final_codes) or time.monotonic() > deadline:
                return Answer(
                    response.status_code if response is not None else None,
                    body if isinstance(body, dict) else None,
                    attempts,
                    trail,
                )
            await self._pause(response)

    # -- runs ----------------------------------------------------------------------------------------------
    async def start(
        self,
        body: dict[str, Any],
        *,
        scenario: str,
        expect: dict[str, Any],
        key: str | None = None,
        final_codes: tuple[str, ...] = (),
    ) -> tuple[RunRecord | None, Answer]:
        key = key or f"chaos-{self.rng.getrandbits(96):024x}"
        answer = await self.call(
            "POST",
            "/api/runs",
            label="POST /api/runs",
            json_body=body,
            headers={"Idempotency-Key": key},
            final_codes=final_codes,
        )
        if not answer.ok:
            if answer.code not in final_codes:
                self.not_accepted.append(
                    {
                        "scenario": scenario,
                        "key": key,
                        "answers": answer.trail[-6:],
                        "last": (answer.body or {}).get("error"),
                        "input_chars": _input_chars(body),
                    }
                )
            return None, answer
        return self.accepted(answer.body["id"], scenario, expect, key, answer, body), answer

    def accepted(
        self, run_id: str, scenario: str, expect: dict[str, Any], key: str, answer: Answer | None, body: dict[str, Any]
    ) -> RunRecord:
        self.key_runs[key].add(run_id)
        record = self.records.get(run_id)
        if record is None:
            record = RunRecord(
                run_id,
                scenario,
                expect,
                key,
                time.time(),
                session_id=body.get("session_id"),
                tag=(body.get("metadata") or {}).get(CHAOS_TAG),
            )
            self.records[run_id] = record
        record.note(f"start {scenario}: answers {answer.trail if answer else 'stream'}")
        return record

    async def get(self, run_id: str) -> dict[str, Any] | None:
        answer = await self.call("GET", f"/api/runs/{run_id}", label="GET /api/runs/{id}")
        return answer.body if answer.status == 200 else None

    async def wait_terminal(self, run_id: str, timeout: float, every: float = 1.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        view = None
        while time.monotonic() < deadline:
            view = await self.get(run_id)
            if view and view.get("status") in TERMINAL:
                return view
            await asyncio.sleep(every)
        return view

    async def cancel(self, record: RunRecord) -> Answer:
        record.cancel = {"sent_at": time.time()}
        answer = await self.call("POST", f"/api/runs/{record.run_id}/cancel", label="POST /api/runs/{id}/cancel")
        record.cancel.update(
            answered_at=time.time(), http=answer.status, trail=answer.trail, status=(answer.body or {}).get("status")
        )
        record.note(f"cancel sent -> {answer.trail} status {(answer.body or {}).get('status')}")
        return answer

    async def create_session(self) -> str | None:
        answer = await self.call("POST", "/api/sessions", label="POST /api/sessions")
        return (answer.body or {}).get("id") if answer.status == 201 else None


def _json(response: httpx.Response | None) -> Any:
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _input_chars(body: dict[str, Any]) -> int:
    value = body.get("input")
    return len(value) if isinstance(value, str) else len(json.dumps(value))


# -- Server-sent events ---------------------------------------------------------------------------------------
@dataclass
class SseEvent:
    event: str
    data: dict[str, Any]
    id: int | None


async def sse_events(response: httpx.Response):
    """Parse an SSE body (event/data/id fields, blank-line framed, comments skipped)."""
    event, data, event_id = "message", [], None
    async for line in response.aiter_lines():
        if not line:
            if data:
                try:
                    parsed = json.loads("\n".join(data))
                except ValueError:
                    parsed = {"unparsed": "\n".join(data)}
                yield SseEvent(event, parsed, event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = int(value) if value.lstrip("-").isdigit() else None


async def replay(http: httpx.AsyncClient, run_id: str) -> dict[str, Any] | None:
    """A finished run's whole stream from the service (`GET .../stream` from the start) up to its final event:
    ids, the last attempt's text, the final event, the restarts; None when it did not reach a final event."""
    ids: list[int] = []
    text: list[str] = []
    restarts = 0
    async with http.stream("GET", f"/api/runs/{run_id}/stream") as response:
        if response.status_code != 200:
            await response.aread()
            return None
        async for event in sse_events(response):
            if event.id is None:
                continue
            ids.append(event.id)
            if event.event == "output_text.delta":
                text.append(event.data.get("delta", ""))
            elif event.event == RESTART_EVENT:
                text, restarts = [], restarts + 1
            if event.event in FINAL_EVENTS:
                return {
                    "ids": ids,
                    "text": "".join(text),
                    "final": event.event,
                    "restarts": restarts,
                    "source": "service",
                }
    return None


RESUME_METHODS = ("last_event_id", "starting_after", "token")


class StreamConsumer:
    """Reads one run's stream, hanging up on purpose at `cuts` (counts of events with an id) and again
    whenever the connection breaks, resuming each time with the next of RESUME_METHODS; after the final
    event it resumes once more from it, which must give the single `end` event."""

    def __init__(self, api: ApiClient, record: RunRecord, cuts: list[int], timeout: float) -> None:
        self.api = api
        self.record = record
        self.planned_cuts = list(cuts)
        self.cuts = list(cuts)
        self.deadline = time.monotonic() + timeout
        self.ids: list[int] = []  # every id'd event, in arrival order, across connections
        self.connections: list[dict[str, Any]] = []
        self.deltas: list[str] = []  # the current attempt's text (an executor restart starts it again)
        self.restarts = 0
        self.last_token: str | None = None
        self.final: SseEvent | None = None
        self.ended_by: str | None = None
        self.after_final: list[str] | None = None
        self.method_index = 0

    def summary(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "connections": self.connections,
            "deltas": "".join(self.deltas),
            "final": self.final.event if self.final else None,
            "final_id": self.final.id if self.final else None,
            "ended_by": self.ended_by,
            "after_final": self.after_final,
            "cuts": self.planned_cuts,
            "restarts": self.restarts,
        }

    async def consume(self, first: httpx.Response | None) -> None:
        """`first`: the open response of a streaming start, or None to begin with GET .../stream."""
        while self.final is None and self.ended_by is None and time.monotonic() < self.deadline:
            if first is not None:
                how, outcome = "start", await self._read(first)
                first = None
            else:
                how = self._next_method() if self.ids else "from_start"
                outcome = await self._open_and_read(how, after=self.ids[-1] if self.ids else None)
            self.connections.append({"how": how, "outcome": outcome})
            if outcome in ("broken", "refused", "eof"):
                await asyncio.sleep(0.5 + self.api.rng.random())
        if self.final is not None and self.final.id is not None:
            await self._resume_after_final()
        self.record.stream = self.summary()
        self.record.note(
            f"stream: {len(self.connections)} connections "
            f"{[c['how'] + '/' + c['outcome'] for c in self.connections]}, final {self.summary()['final']}"
        )

    async def _resume_after_final(self) -> None:
        """One more resume from the final event's id (retried while the host is down): the answer is kept."""
        for _ in range(10):
            how, events = self._next_method(), []
            outcome = await self._open_and_read(how, after=self.final.id, collect=events)
            if outcome not in ("broken", "refused") or events:
                self.after_final = [f"{how}:{e}" for e in events]
                return
            await asyncio.sleep(1.0 + self.api.rng.random())

    def _next_method(self) -> str:
        method = RESUME_METHODS[self.method_index % len(RESUME_METHODS)]
        self.method_index += 1
        return method

    async def _open_and_read(self, how: str, after: int | None, collect: list[str] | None = None) -> str:
        rid = self.record.run_id
        if how == "token" and self.last_token:
            request = self.api.http.build_request(
                "POST", "/api/runs", json={"continuation_token": self.last_token, "stream": True}
            )
        elif how == "last_event_id" and after is not None:
            request = self.api.http.build_request(
                "GET", f"/api/runs/{rid}/stream", headers={"Last-Event-ID": str(after)}
            )
        elif after is not None:
            request = self.api.http.build_request("GET", f"/api/runs/{rid}/stream", params={"starting_after": after})
        else:
            request = self.api.http.build_request("GET", f"/api/runs/{rid}/stream")
        try:
            response = await self.api.http.send(request, stream=True)
        except httpx.HTTPError as error:
            self.api._count("stream resume", None, error)
            return "broken"
        try:
            self.api._count("stream resume", response)
            if response.status_code != 200:
                await response.aread()
                return "refused"
            return await self._read(response, collect)
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response, collect: list[str] | None = None) -> str:
        """Read until the final event, an `end`, a planned cut or a broken connection."""
        try:
            async for event in sse_events(response):
                if collect is not None:
                    collect.append(event.event + (f"#{event.id}" if event.id is not None else ""))
                    continue
                if event.event == "end":
                    self.ended_by = "end"
                    return "end"
                token = event.data.get("continuation_token")
                if event.event == "reconnect":
                    self.last_token = token or self.last_token
                    return "reconnect"
                if event.id is None:
                    continue  # status heartbeats carry no position
                self.ids.append(event.id)
                self.last_token = token or self.last_token
                if event.event == "output_text.delta":
                    self.deltas.append(event.data.get("delta", ""))
                elif event.event == RESTART_EVENT:
                    self.deltas, self.restarts = [], self.restarts + 1
                if event.event in FINAL_EVENTS:
                    self.final = event
                    return "final"
                if self.cuts and len(self.ids) >= self.cuts[0]:
                    self.cuts.pop(0)
                    return "cut"
            return "eof"
        except (httpx.HTTPError, ValueError):
            return "broken"
        finally:
            await response.aclose()
