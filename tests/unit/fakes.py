"""In-memory stand-ins for the service's edges, for fast unit tests of the run's life.

- `FakeTable`, `FakeContainer`: the parts of the Azure Table and Blob clients the stores use, with ETags, so
  the real stores (RunStore, SessionStore, ...) run unchanged and every conditional write can conflict. As
  azure-data-tables 12 does: a write without a match condition is unconditional, a condition without its
  ETag (or an ETag without a condition) is a ValueError, a stale ETag a 412 (ResourceModifiedError), a
  delete of a missing row does nothing, `select` returns only the named properties.
- `FakeQueue`: records sent messages with their delays.
- `FakeBackend`: a provider whose responses tests script (status, output, failures, hooks between steps).
- `FakeModel`: the executor's direct streaming call, scripted (text chunks, tool calls, failures, pauses).
- `FakeClock`: the service's clock, moved by hand.
- `world()`: the whole service built by the real composition root on these fakes.

Table queries understand the few filters the stores use (`Field op @param|'literal'` joined by `and`); any
other filter raises, so a store that starts scanning is noticed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import itertools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from shared import clock
from shared.composition import Services, build
from shared.executor.chat_translation import ChatTranslator, chat_params
from shared.executor.model_request import ModelRequest
from shared.provider import ANYWHERE, Candidate, ProviderError, ProviderState, StartedResponse
from shared.settings import Settings

_ETAGS = itertools.count(1)
_CLAUSE = re.compile(r"^\s*(\w+)\s+(eq|ne|lt|le|gt|ge)\s+(@\w+|'[^']*')\s*$")


class Entity(dict):
    """What the Table client returns: a dict with `.metadata["etag"]`."""

    def __init__(self, data: dict, etag: str) -> None:
        super().__init__(copy.deepcopy(data))
        self.metadata = {"etag": etag}


class FakeTable:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict, str]] = {}
        self.requests = 0
        self.fail_next: list[Exception] = []  # raised by the next requests, in order
        # method name -> async hook awaited before that method runs (to force interleavings)
        self.before: dict[str, Callable[[], Awaitable[None]]] = {}

    async def _request(self, method: str) -> None:
        self.requests += 1
        if method in self.before:
            await self.before[method]()
        if self.fail_next:
            raise self.fail_next.pop(0)

    @staticmethod
    def _key(entity: dict) -> tuple[str, str]:
        return entity["PartitionKey"], entity["RowKey"]

    def _put(self, key: tuple[str, str], data: dict) -> dict:
        etag = f'W/"{next(_ETAGS)}"'
        self.rows[key] = (copy.deepcopy(data), etag)
        return {"etag": etag}

    @staticmethod
    def _condition(etag: str | None, match_condition: Any) -> Any:
        """What azure-data-tables makes of `etag` and `match_condition` before it sends anything: no condition is
        unconditional (If-Match: *), and a condition without its ETag, or an ETag without a condition, is refused."""
        match_condition = match_condition or MatchConditions.Unconditionally
        if match_condition == MatchConditions.IfNotModified and not etag:
            raise ValueError("IfNotModified must be specified with etag.")
        if match_condition == MatchConditions.Unconditionally and etag:
            raise ValueError("Etag is not supported for an Unconditional operation.")
        if match_condition not in (MatchConditions.IfNotModified, MatchConditions.Unconditionally):
            raise ValueError(f"Unsupported match condition: {match_condition}")
        return match_condition

    def _check(self, key: tuple[str, str], etag: str | None, match_condition: Any) -> None:
        """412 (ResourceModifiedError) when an IfNotModified write finds another ETag; 404 when the row is gone."""
        if key not in self.rows:
            raise ResourceNotFoundError("not found")
        if match_condition == MatchConditions.IfNotModified and self.rows[key][1] != etag:
            raise ResourceModifiedError("etag mismatch")

    async def create_entity(self, entity: dict) -> dict:
        await self._request("create_entity")
        key = self._key(entity)
        if key in self.rows:
            raise ResourceExistsError("exists")
        return self._put(key, entity)

    async def get_entity(self, partition_key: str, row_key: str) -> Entity:
        await self._request("get_entity")
        if (partition_key, row_key) not in self.rows:
            raise ResourceNotFoundError("not found")
        data, etag = self.rows[(partition_key, row_key)]
        return Entity(data, etag)

    async def update_entity(
        self, entity: dict, mode=UpdateMode.MERGE, *, etag: str | None = None, match_condition: Any = None
    ) -> dict:
        match_condition = self._condition(etag, match_condition)
        if mode not in (UpdateMode.MERGE, UpdateMode.REPLACE):
            raise ValueError(f"Mode type '{mode}' is not supported.")
        await self._request("update_entity")
        key = self._key(entity)
        self._check(key, etag, match_condition)
        data = {**self.rows[key][0], **entity} if mode == UpdateMode.MERGE else dict(entity)
        return self._put(key, data)

    async def upsert_entity(self, entity: dict, mode=UpdateMode.MERGE) -> dict:
        await self._request("upsert_entity")
        key = self._key(entity)
        data = {**self.rows.get(key, ({}, ""))[0], **entity} if mode == UpdateMode.MERGE else dict(entity)
        return self._put(key, data)

    async def delete_entity(
        self, partition_key: str, row_key: str, *, etag: str | None = None, match_condition: Any = None
    ) -> None:
        match_condition = self._condition(etag, match_condition)
        await self._request("delete_entity")
        key = (partition_key, row_key)
        if key not in self.rows:
            return  # the SDK swallows a delete's 404, with or without a condition
        self._check(key, etag, match_condition)
        del self.rows[key]

    async def query_entities(self, query_filter: str, *, parameters: dict | None = None, select=None, **_: Any):
        await self._request("query_entities")
        clauses = [_CLAUSE.match(part) for part in query_filter.split(" and ")]
        if not all(clauses):
            raise AssertionError(f"the fake table does not understand the filter {query_filter!r}")
        for key in sorted(self.rows):  # a snapshot of the keys: rows may change while the caller iterates
            if key not in self.rows:
                continue
            data, etag = self.rows[key]
            if all(_matches(data, m, parameters or {}) for m in clauses):
                # $select returns only the named properties (names are case-sensitive; absent ones are left out)
                yield Entity({k: v for k, v in data.items() if k in select} if select is not None else data, etag)

    async def submit_transaction(self, operations: list) -> list[dict]:
        """An entity group transaction: every operation applies, or none (the error names the status)."""
        await self._request("submit_transaction")
        saved = dict(self.rows)
        results = []
        try:
            for op in operations:
                kind, entity = op[0], op[1]
                options = op[2] if len(op) > 2 else {}
                key = self._key(entity)
                if kind == "create":
                    if key in self.rows:
                        raise _transaction_error(409, "EntityAlreadyExists")
                    results.append(self._put(key, entity))
                elif kind == "update":
                    if key not in self.rows:
                        raise _transaction_error(404, "ResourceNotFound")
                    if options.get("match_condition") == MatchConditions.IfNotModified and self.rows[key][
                        1
                    ] != options.get("etag"):
                        raise _transaction_error(412, "UpdateConditionNotSatisfied")
                    mode = options.get("mode", UpdateMode.MERGE)
                    data = {**self.rows[key][0], **entity} if mode == UpdateMode.MERGE else dict(entity)
                    results.append(self._put(key, data))
                elif kind == "upsert":
                    results.append(self._put(key, {**self.rows.get(key, ({}, ""))[0], **entity}))
                elif kind == "delete":
                    if key not in self.rows:
                        raise _transaction_error(404, "ResourceNotFound")
                    del self.rows[key]
                    results.append({})
                else:
                    raise AssertionError(f"the fake table does not know the operation {kind!r}")
        except TableTransactionError:
            self.rows = saved
            raise
        return results

    def entity(self, partition_key: str, row_key: str) -> dict | None:
        row = self.rows.get((partition_key, row_key))
        return copy.deepcopy(row[0]) if row else None


def _transaction_error(status: int, code: str) -> TableTransactionError:
    error = TableTransactionError(message=f"0:{code}")
    error.status_code, error.error_code = status, code
    return error


def _matches(data: dict, match: re.Match, parameters: dict) -> bool:
    name, op, raw = match.groups()
    value = parameters[raw[1:]] if raw.startswith("@") else raw[1:-1]
    if name not in data:
        return False
    left = data[name]
    return {
        "eq": left == value,
        "ne": left != value,
        "lt": left < value,
        "le": left <= value,
        "gt": left > value,
        "ge": left >= value,
    }[op]


class _Downloader:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def readall(self) -> bytes:
        return self._data


class FakeContainer:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.downloads = 0

    async def upload_blob(self, name: str, data: bytes, overwrite: bool = False) -> None:
        if name in self.blobs and not overwrite:
            raise ResourceExistsError("blob exists")
        self.blobs[name] = bytes(data)

    async def download_blob(self, name: str) -> _Downloader:
        if name not in self.blobs:
            raise ResourceNotFoundError("no blob")
        self.downloads += 1
        return _Downloader(self.blobs[name])

    async def delete_blob(self, name: str) -> None:
        if self.blobs.pop(name, None) is None:
            raise ResourceNotFoundError("no blob")

    async def list_blobs(self, name_starts_with: str = ""):
        for name in sorted(self.blobs):
            if name.startswith(name_starts_with):
                yield SimpleNamespace(name=name)


@dataclass
class Sent:
    message: dict
    delay: float
    at: float


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send(self, message: dict, delay_seconds: float = 0.0) -> None:
        self.sent.append(Sent(dict(message), delay_seconds, clock.now()))

    def take(self) -> list[dict]:
        messages, self.sent = [s.message for s in self.sent], []
        return messages


@dataclass
class FakeResponse:
    id: str
    status: str = "queued"
    output: list = field(default_factory=list)
    error: dict | None = None
    incomplete_details: dict | None = None
    usage: dict | None = None
    params: dict = field(default_factory=dict)
    completed_at: float | None = None  # when the provider says it ended (sent only when set)

    def model_dump(self, **_: Any) -> dict:
        dumped = {
            "id": self.id,
            "status": self.status,
            "output": copy.deepcopy(self.output),
            "error": self.error,
            "incomplete_details": self.incomplete_details,
            "usage": self.usage,
        }
        return dumped if self.completed_at is None else {**dumped, "completed_at": self.completed_at}

    def complete(self, text: str = "done") -> None:
        self.status = "completed"
        self.output = [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        self.usage = {"input_tokens": 1, "output_tokens": len(text), "total_tokens": 1 + len(text)}


class FakeBackend:
    """A scripted provider. `fail[method]` is a list of ProviderErrors raised by the next calls of that
    method; `before[method]` is an async hook awaited at the start of each call (to force interleavings)."""

    kind = "background"

    def __init__(self) -> None:
        self.responses: dict[str, FakeResponse] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[ProviderError]] = {}
        self.before: dict[str, Callable[[], Awaitable[None]]] = {}
        self.finish_at_once = False
        self.streams: dict[str, list] = {}
        self.hang = 0.0
        self._ids = itertools.count(1)

    async def _enter(self, method: str, ident: str) -> None:
        self.calls.append((method, ident))
        if method in self.before:
            await self.before[method]()
        if self.fail.get(method):
            raise self.fail[method].pop(0)

    def _state(self, response: FakeResponse) -> ProviderState:
        return ProviderState(response.id, response.status, copy.deepcopy(response))

    def check(self, params: dict) -> None:
        """The provider judges its parameters at the create."""

    def candidates(self, pinned: str | None = None) -> list[Candidate]:
        return [ANYWHERE]  # one provider, no deployments (a DeploymentPool of FakeBackends has several)

    # `deployment` is the pool's (provider.pool): one FakeBackend is one deployment, so it is ignored here.
    async def start(self, params: dict, *, stream: bool, deployment: str | None = None) -> StartedResponse:
        await self._enter("start", params["metadata"]["bg_run_id"])
        response = FakeResponse(f"resp_{next(self._ids)}", params=copy.deepcopy(params))
        if self.finish_at_once:
            response.complete()
        self.responses[response.id] = response
        return StartedResponse(self._state(response))

    async def observe(self, response_id: str, deployment: str = "default") -> ProviderState:
        await self._enter("observe", response_id)
        if response_id not in self.responses:  # deleted: what the provider answers then
            raise ProviderError(transient=False, status=404, message=f"No response found with id '{response_id}'.")
        return self._state(self.responses[response_id])

    async def cancel(self, response_id: str, deployment: str = "default") -> ProviderState | None:
        await self._enter("cancel", response_id)
        response = self.responses.get(response_id)
        if response is None:
            return None
        if response.status in ("queued", "in_progress"):
            response.status = "cancelled"
        return self._state(response)

    async def events(self, response_id: str, after: int, deployment: str = "default"):
        """The scripted `streams[response_id]` (events with `type`, `sequence_number`); `hang` after them keeps
        the stream open for that many seconds (a response still going)."""
        await self._enter("events", response_id)
        if response_id not in self.streams:
            raise ProviderError(transient=False, status=400, message="this response was not created streaming")
        return FakeStream(
            [
                e
                for e in self.streams[response_id]
                if getattr(e, "sequence_number", None) is None or e.sequence_number > after
            ],
            self.hang,
        )

    async def delete(self, response_id: str, deployment: str = "default") -> None:
        await self._enter("delete", response_id)
        self.responses.pop(response_id, None)

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


class FakeStream:
    def __init__(self, events: list, hang: float) -> None:
        self._events, self._hang = events, hang
        self.closed = False

    async def __aiter__(self):
        for event in self._events:
            yield event
        if self._hang:
            await asyncio.sleep(self._hang)

    async def close(self) -> None:
        self.closed = True


def stream_event(kind: str, seq: int, response=None):
    return SimpleNamespace(type=kind, sequence_number=seq, response=response)


def _chunk(
    content: str | None = None,
    call: dict | None = None,
    finish: str | None = None,
    logprobs: list[dict] | None = None,
    service_tier: str | None = None,
):
    """A Chat Completions stream chunk as the SDK parses it (`logprobs`: the choice's token log probabilities)."""
    calls = None
    if call is not None:
        calls = [
            SimpleNamespace(
                index=call.get("index", 0),
                id=call.get("id"),
                function=SimpleNamespace(name=call.get("name"), arguments=call.get("arguments")),
            )
        ]
    delta = SimpleNamespace(content=content, refusal=None, tool_calls=calls)
    choice_logprobs = SimpleNamespace(content=logprobs, refusal=None) if logprobs is not None else None
    return SimpleNamespace(
        choices=[SimpleNamespace(index=0, delta=delta, finish_reason=finish, logprobs=choice_logprobs)],
        usage=None,
        service_tier=service_tier,
    )


class FakeModel:
    """The executor's direct call, scripted. `scripts` holds one script per call, in order (the last one is
    reused); a script is a list of steps: a str is a text chunk, a dict a tool-call chunk (`name`, `id`,
    `arguments`, `index`), a ProviderError is raised, an asyncio.Event is waited for, a float is slept,
    ("finish", reason) ends with that finish reason (default: "stop" after the last step), ("fail", message) is an
    in-stream error."""

    def __init__(self) -> None:
        self.scripts: list[list[Any]] = [["Hello", " world"]]
        self.requests: list[Any] = []
        self.open = 0  # streams in progress
        self.closed = 0  # streams that ended (cancelled ones included)

    def check(self, params: dict) -> None:
        """What the real call refuses (Chat Completions)."""
        chat_params(ModelRequest.of(params))

    async def stream(self, request, base, *, api=None):
        from shared.executor.model_request import failed_event

        self.requests.append(request)
        script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        translator = ChatTranslator(base)
        self.open += 1
        try:
            finish = "stop"
            for step in script:
                if isinstance(step, ProviderError):
                    raise step
                if isinstance(step, asyncio.Event):
                    await step.wait()
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, tuple) and step[0] == "finish":
                    finish = step[1]
                elif isinstance(step, tuple) and step[0] == "fail":
                    yield failed_event(base, "server_error", step[1])
                    return
                else:
                    chunk = _chunk(content=step) if isinstance(step, str) else _chunk(call=step)
                    for event in translator.feed(chunk):
                        yield event
                await asyncio.sleep(0)
            translator.feed(_chunk(finish=finish))
            for event in translator.finish():
                yield event
        finally:
            self.open -= 1
            self.closed += 1


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSender:
    """A webhook sender whose attempts the test decides (`results`: Attempt per call; default ok)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.headers: list[dict] = []  # the extra headers of each attempt (traceparent)
        self.results: list[Any] = []

    async def send(self, url: str, webhook_id: str, body: bytes, *, headers=None):
        from shared.webhooks import Attempt

        self.sent.append((url, webhook_id, body))
        self.headers.append(dict(headers or {}))
        result = (
            self.results.pop(0) if self.results else Attempt(at="2026-01-01T00:00:00.000Z", ok=True, status_code=204)
        )
        if isinstance(result, BaseException):
            raise result
        return result

    async def aclose(self) -> None:
        pass


ENV = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "RUN_TOKEN_KEY": "k" * 48,
    "WEBHOOK_SIGNING_SECRETS": "whsec_" + "A" * 43,
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    "WEBHOOK_RETRY_SCHEDULE": "0,5,10",
    "POLL_INITIAL_DELAY_SECONDS": "1",
    "POLL_MAX_DELAY_SECONDS": "10",
    "SWEEP_GRACE_SECONDS": "60",
    "RUN_DEADLINE_SECONDS": "3600",
    "PROVIDER_TIMEOUT_SECONDS": "10",
}


@dataclass
class World:
    services: Services
    backend: FakeBackend
    clock: FakeClock
    tables: dict[str, FakeTable]
    blobs: FakeContainer
    poll_queue: FakeQueue
    webhook_queue: FakeQueue
    sender: FakeSender
    model: FakeModel
    execute_queue: FakeQueue
    settings: Settings

    @property
    def runs(self) -> FakeTable:
        return self.tables["runs"]

    @property
    def index(self) -> FakeTable:
        return self.tables["runindex"]

    async def run(self, run_id: str):
        return await self.services.reader.get(run_id)

    def timeline(self, run) -> list[dict]:
        """The run's timeline entries as the API shows them (?include=timeline)."""
        return self.services.views.render(run, timeline=True)["timeline"]["entries"]

    async def execute(self, *, message_id: str = "msg-1", dequeue_count: int = 1) -> list[str]:
        """Deliver every queued execute message to the executor (as the host would); what each did."""
        return [
            await self.services.executor.handle(message, message_id=message_id, dequeue_count=dequeue_count)
            for message in self.execute_queue.take()
        ]

    async def drain_polls(self, *, limit: int = 100) -> list[str]:
        """Deliver every queued poll message (as the host would, ignoring delays); what each step did."""
        outcomes = []
        for _ in range(limit):
            messages = self.poll_queue.take()
            if not messages:
                break
            for message in messages:
                outcomes.append(await self.services.poll_step.handle(message, dequeue_count=5))
        return outcomes


@functools.lru_cache(maxsize=1)
def _provider_webhooks():
    """The openai SDK's webhook helpers (verification is local: the client never connects)."""
    import openai

    return openai.AsyncOpenAI(api_key="unused", base_url="http://127.0.0.1:9").webhooks


def world(monkeypatch, *, backend: Any = None, **env: str) -> World:
    """`backend`: the service's RunBackend (default: one FakeBackend), e.g. a DeploymentPool of FakeBackends."""
    fake_clock = FakeClock()
    monkeypatch.setattr(clock, "now", fake_clock)
    tables = {name: FakeTable() for name in ("runs", "sessions", "idempotency", "runindex", "runevents")}
    blobs, poll_queue, webhook_queue, execute_queue = FakeContainer(), FakeQueue(), FakeQueue(), FakeQueue()
    storage = SimpleNamespace(
        runs=tables["runs"],
        sessions=tables["sessions"],
        idempotency=tables["idempotency"],
        index=tables["runindex"],
        poll_queue=poll_queue,
        webhook_queue=webhook_queue,
        payloads=blobs,
        events=tables["runevents"],
        execute_queue=execute_queue,
    )
    settings = Settings.from_env({**ENV, **env})
    backend, sender, model = backend or FakeBackend(), FakeSender(), FakeModel()
    services = build(
        settings,
        storage,
        backend,
        model=model,
        sender=sender if settings.webhook_secrets else None,
        provider_webhooks=_provider_webhooks(),
    )
    return World(
        services, backend, fake_clock, tables, blobs, poll_queue, webhook_queue, sender, model, execute_queue, settings
    )


async def gather(*aws):
    return await asyncio.gather(*aws, return_exceptions=True)


class HostCrash(BaseException):
    """A host dying mid-step, for tests: like a killed process, it runs no `except Exception` cleanup."""


class Steps:
    """The calls an operation makes through a world's fakes (every table, blob, queue and provider call, and the
    executor's request check), counted while `counting()`; at call number `at` (0-based) it raises `fail()`, or
    awaits `pause()` (another operation run to completion right there: an interleaving) before the call goes on.
    What runs after that point, or inside `pause`, is not counted."""

    def __init__(
        self,
        at: int | None = None,
        *,
        fail: Callable[[], BaseException] | None = None,
        pause: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.at, self.fail, self.pause = at, fail, pause
        self.names: list[str] = []
        self._armed = False

    @contextlib.contextmanager
    def counting(self):
        self._armed = True
        try:
            yield self
        finally:
            self._armed = False

    def wrap_world(self, w: World) -> None:
        for name, table in w.tables.items():
            self._wrap(table, name)
        for label, part in (
            ("blobs", w.blobs),
            ("poll_queue", w.poll_queue),
            ("webhook_queue", w.webhook_queue),
            ("execute_queue", w.execute_queue),
            ("backend", w.backend),
            ("model", w.model),
        ):
            self._wrap(part, label)

    def _due(self, name: str) -> bool:
        if not self._armed:
            return False
        self.names.append(name)
        if len(self.names) - 1 != self.at:
            return False
        self._armed = False  # what follows (an undo, the rest of the operation) runs unhindered and uncounted
        if self.fail is not None:
            raise self.fail()
        return self.pause is not None

    def _wrap(self, obj: Any, label: str) -> None:
        for name, method in inspect.getmembers(obj, callable):
            if not name.startswith("_") and name not in ("entity", "count", "take", "candidates"):  # not I/O
                setattr(obj, name, self._wrapped(method, f"{label}.{name}"))

    def _wrapped(self, method, name: str):
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def generator(*args, **kwargs):
                if self._due(name):
                    await self.pause()
                async for item in method(*args, **kwargs):
                    yield item

            return generator
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def coroutine(*args, **kwargs):
                if self._due(name):
                    await self.pause()
                return await method(*args, **kwargs)

            return coroutine

        @functools.wraps(method)
        def function(*args, **kwargs):
            if self._due(name):
                raise AssertionError(f"cannot pause in {name}, which is not async")
            return method(*args, **kwargs)

        return function
