"""OpenAI's published Responses API schemas as a validator any test can import.

    from tests.schemas import validate, validate_stream_event, parse_sse, WireRecorder

    validate("Response", body)            # raises SchemaMismatch naming every problem (an AssertionError)
    validate_stream_event(event)          # one SSE event's data against ResponseStreamEvent
    recorder = WireRecorder()             # records every reply an SDK client receives, validated by route
    client = openai.OpenAI(base_url=..., api_key=..., http_client=recorder.sync_client())
    ...
    recorder.assert_valid()               # every JSON body and every complete SSE event, or a readable failure

The schemas (tests/data/openai-response-schemas.json, copied from shared/reference) are the closure of
`Response`, `ResponseStreamEvent` and `ErrorResponse` in openai/openai-openapi, with `user` and `usage` made
nullable as the live API sends them. They are loaded once, `$ref`s resolved through a `referencing`
registry, and checked with jsonschema's Draft 2020-12 validator (the dialect of OpenAPI 3.1).
`PATCHES` below lists the only changes made here, each with its reason.

Chat Completions is not in that file: its bodies are checked against the `openai` SDK's own pydantic types
(`ChatCompletion`, `ChatCompletionChunk`) with `model_validate`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import httpx2
import openai
import pydantic
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_FILE = Path(__file__).parent / "data" / "openai-response-schemas.json"
_ROOT = "urn:openai-openapi"

# Local additions, kept to the minimum and each explained.
PATCHES: dict[str, Any] = {
    # An empty page (input_items past the last item) has no first/last id; list endpoints answer null there.
    # The published schema types both as plain strings, which no empty page can satisfy.
    "ResponseItemList.first_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "ResponseItemList.last_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
}
# Not in OpenAI's schema file at all: what DELETE /responses/{id} answers (the SDK discards the body).
_LOCAL_SCHEMAS = {
    "DeletedResponse": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "object": {"enum": ["response"]}, "deleted": {"const": True}},
        "required": ["id", "object", "deleted"],
    },
}


class SchemaMismatch(AssertionError):
    """A body does not match the schema; the message lists every mismatch with its JSON path."""


@lru_cache(maxsize=1)
def _schemas() -> dict[str, Any]:
    document = json.loads(SCHEMA_FILE.read_text())
    schemas = copy.deepcopy(document["schemas"])
    for dotted, replacement in PATCHES.items():
        name, prop = dotted.split(".")
        schemas[name]["properties"][prop] = replacement
    schemas.update(_LOCAL_SCHEMAS)
    return schemas


def schema_names() -> list[str]:
    return sorted(_schemas())


@lru_cache(maxsize=1)
def _registry() -> Registry:
    root = Resource(contents={"components": {"schemas": _schemas()}}, specification=DRAFT202012)
    return Registry().with_resource(_ROOT, root)


@cache
def _validator(name: str) -> Draft202012Validator:
    if name not in _schemas():
        raise KeyError(f"no schema named {name!r} in {SCHEMA_FILE.name}")
    return Draft202012Validator({"$ref": f"{_ROOT}#/components/schemas/{name}"}, registry=_registry())


@lru_cache(maxsize=1)
def _event_schema_by_type() -> dict[str, str]:
    """ResponseStreamEvent is an anyOf of one schema per event `type` (the enums are disjoint)."""
    out = {}
    for ref in _schemas()["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        for event_type in _schemas()[name].get("properties", {}).get("type", {}).get("enum", []):
            out[event_type] = name
    return out


def _describe(error: ValidationError) -> str:
    where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    text = f"{where}: {error.message[:300]}"
    if error.context:  # anyOf/oneOf: show the closest branch's own complaint
        inner = best_match(error.context)
        inner_where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in inner.absolute_path)
        text += f"\n      closest branch: ${inner_where}: {inner.message[:300]}"
    return text


def errors(name: str, instance: Any) -> list[str]:
    """Every mismatch of `instance` against schema `name` (empty list = valid)."""
    return [_describe(e) for e in sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.path))]


def validate(name: str, instance: Any, *, context: str = "") -> None:
    problems = errors(name, instance)
    if problems:
        head = f"{context}: " if context else ""
        raise SchemaMismatch(
            f"{head}{name} mismatch:\n  " + "\n  ".join(problems) + f"\n  body: {json.dumps(instance)[:1500]}"
        )


def validate_stream_event(event: dict, *, context: str = "") -> None:
    """One stream event (the parsed `data:` of an SSE message) against ResponseStreamEvent."""
    event_type = event.get("type") if isinstance(event, dict) else None
    name = _event_schema_by_type().get(event_type)  # the one anyOf branch this event can match
    if name is None:
        raise SchemaMismatch(f"{context}: event type {event_type!r} is not a ResponseStreamEvent")
    validate(name, event, context=context or str(event_type))


def validate_chat_completion(body: dict) -> ChatCompletion:
    return ChatCompletion.model_validate(body)


def validate_chat_chunk(body: dict) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(body)


# ---------------------------------------------------------------------------------------------------
# SSE parsing
# ---------------------------------------------------------------------------------------------------


@dataclass
class SSEMessage:
    event: str | None
    data: str


def parse_sse(raw: bytes | str) -> list[SSEMessage]:
    """Complete SSE messages in `raw` (a trailing partial message, as after a cut, is ignored)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    text = text.replace("\r\n", "\n")
    complete, _, _partial = text.rpartition("\n\n")
    out = []
    for block in complete.split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
        if data:
            out.append(SSEMessage(event, "\n".join(data)))
    return out


# ---------------------------------------------------------------------------------------------------
# Recording what an SDK client receives
# ---------------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    content_type: str
    body: bytearray = field(default_factory=bytearray)

    @property
    def is_sse(self) -> bool:
        return self.content_type.startswith("text/event-stream")


_INPUT_ITEMS = re.compile(r"/responses/[^/]+/input_items$")
_RESPONSE = re.compile(r"/responses(/[^/]+(/cancel)?)?$")
_CHAT = re.compile(r"/chat/completions$")


def check_exchange(ex: Exchange) -> int:
    """Validate one recorded reply by its route; returns how many bodies/events were checked."""
    where = f"{ex.method} {ex.path} -> {ex.status}"
    if ex.is_sse:
        messages = parse_sse(bytes(ex.body))
        for n, msg in enumerate(messages):
            if msg.data.startswith("[DONE]"):
                continue
            data = json.loads(msg.data)
            if _CHAT.search(ex.path):
                if isinstance(data, dict) and "error" in data:  # a mid-stream failure: {"error": {...}}
                    validate("ErrorResponse", data, context=f"{where} chunk {n}")
                    continue
                try:
                    validate_chat_chunk(data)
                except pydantic.ValidationError as exc:
                    raise SchemaMismatch(f"{where} chunk {n}: {exc}\n  body: {msg.data[:1500]}") from None
                continue
            validate_stream_event(data, context=f"{where} event {n}")
            if msg.event is not None and msg.event != data.get("type"):
                raise SchemaMismatch(f"{where} event {n}: SSE event name {msg.event!r} != type {data.get('type')!r}")
        return len(messages)
    if not ex.body or not ex.content_type.startswith("application/json"):
        return 0  # a dropped reply (headers only) or a non-JSON body has nothing to validate
    body = json.loads(bytes(ex.body))
    if ex.status >= 400:
        validate("ErrorResponse", body, context=where)
    elif _INPUT_ITEMS.search(ex.path):
        validate("ResponseItemList", body, context=where)
    elif _RESPONSE.search(ex.path):
        validate("DeletedResponse" if ex.method == "DELETE" else "Response", body, context=where)
    elif _CHAT.search(ex.path):
        try:
            validate_chat_completion(body)
        except pydantic.ValidationError as exc:
            raise SchemaMismatch(f"{where}: {exc}") from None
    else:
        return 0
    return 1


class _TeeSync(httpx2.SyncByteStream):
    def __init__(self, inner: Any, sink: bytearray):
        self._inner, self._sink = inner, sink

    def __iter__(self):
        for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _TeeAsync(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, sink: bytearray):
        self._inner, self._sink = inner, sink

    async def __aiter__(self):
        async for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _RecordingTransport(httpx2.BaseTransport):
    def __init__(self, recorder: WireRecorder, inner: httpx2.BaseTransport):
        self._recorder, self._inner = recorder, inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        ex = self._recorder._start(request, response)
        response.stream = _TeeSync(response.stream, ex.body)
        return response

    def close(self) -> None:
        self._inner.close()


class _AsyncRecordingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, recorder: WireRecorder, inner: httpx2.AsyncBaseTransport):
        self._recorder, self._inner = recorder, inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        ex = self._recorder._start(request, response)
        response.stream = _TeeAsync(response.stream, ex.body)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class WireRecorder:
    """Records every reply (status, content type, raw body bytes as the client read them) that passes
    through the http client it hands out, so a test can validate exactly what the server sent.

    ``sync_client()`` / ``async_client()`` return `openai.DefaultHttpxClient`-like clients (httpx2, the SDK's
    own transport library) to pass as ``http_client=`` to ``openai.OpenAI`` / ``openai.AsyncOpenAI``.
    """

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def _start(self, request: httpx2.Request, response: httpx2.Response) -> Exchange:
        ex = Exchange(request.method, request.url.path, response.status_code, response.headers.get("content-type", ""))
        self.exchanges.append(ex)
        return ex

    def sync_client(self, **kw: Any) -> httpx2.Client:
        return openai.DefaultHttpxClient(transport=_RecordingTransport(self, httpx2.HTTPTransport()), **kw)

    def async_client(self, **kw: Any) -> httpx2.AsyncClient:
        return openai.DefaultAsyncHttpxClient(
            transport=_AsyncRecordingTransport(self, httpx2.AsyncHTTPTransport()), **kw
        )

    def check(self) -> int:
        """Validate everything recorded so far; returns the number of bodies/events checked."""
        return sum(check_exchange(ex) for ex in self.exchanges)

    def assert_valid(self, *, at_least: int = 1) -> int:
        checked = self.check()
        assert checked >= at_least, f"only {checked} bodies/events were recorded and checked"
        return checked

    def statuses(self) -> list[int]:
        return [ex.status for ex in self.exchanges]

    def sse_events(self) -> Iterable[dict]:
        for ex in self.exchanges:
            if ex.is_sse:
                for msg in parse_sse(bytes(ex.body)):
                    if not msg.data.startswith("[DONE]"):
                        yield json.loads(msg.data)


__all__ = [
    "PATCHES",
    "SCHEMA_FILE",
    "Exchange",
    "SSEMessage",
    "SchemaMismatch",
    "WireRecorder",
    "check_exchange",
    "errors",
    "parse_sse",
    "schema_names",
    "validate",
    "validate_chat_chunk",
    "validate_chat_completion",
    "validate_stream_event",
]
