"""Calling a model directly and streaming, for runs the function app executes itself (models without a
background mode: Chat Completions servers such as vLLM, Ollama, LiteLLM or Azure AI Foundry models, or a
Responses API that only streams).

Whatever the API, the call's output comes out as the Responses API's own stream events (output_item.added,
content_part.added, output_text.delta, function_call_arguments.delta, ..., and one terminal
response.completed / response.incomplete / response.failed with the whole response), without sequence
numbers: the executor numbers them in its log. So everything downstream (the relay, the API, results,
requires_action) treats an executor run exactly like a provider-background one.

Failures: an HTTP error or a connection that breaks raises ProviderError (transient or not, as classified);
a failure the model reports inside the stream (an `error` event) is a response.failed event, not an exception:
the provider said the generation failed, retrying the same request is not ours to decide.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import openai
from openai import AsyncOpenAI

from ..redaction import redact, redact_error
from .direct_params import chat_options, echoed, responses_options
from .errors import ProviderError, RequestRefused, classify

TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")
EMULATOR_KNOB_HEADER = "x-emulator-knobs"  # the local emulator reads per-call knobs here (dev only)
_FUNCTION_TOOL_FIELDS = ("name", "description", "parameters", "strict")


def _refused(param: str, message: str) -> RequestRefused:
    return RequestRefused(f"Unsupported value in '{param}': {message}.", param=param, code="unsupported_value")


# -- the Response object ------------------------------------------------------------------------------------
def response_skeleton(response_id: str, params: Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """A Responses API Response for a run's parameters (status queued, no output yet), saying what the model call
    is asked (direct_params.echoed)."""
    return {
        "id": response_id, "object": "response", "created_at": int(created_at), "status": "queued",
        "background": True, "model": params.get("model"), "output": [], "error": None,
        "incomplete_details": None, "usage": None, "metadata": dict(params.get("metadata") or {}),
        "instructions": params.get("instructions"), "previous_response_id": params.get("previous_response_id"),
        "store": True, **echoed(params),
    }


def with_status(base: Mapping[str, Any], status: str, **fields: Any) -> dict[str, Any]:
    return {**base, "status": status, **fields}


# -- input: Responses items -> Chat messages ------------------------------------------------------------------
def input_items(value: Any) -> list[dict[str, Any]]:
    """A Responses `input` (a string or a list of items) as a list of items."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [dict(item) for item in value or []]


def continuation_items(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A finished response's output as input items for the next turn (messages and function calls)."""
    items = []
    for item in output or []:
        if item.get("type") == "message":
            texts = [p.get("text", "") for p in item.get("content") or [] if p.get("type") == "output_text"]
            items.append({"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": "".join(texts)}]})
        elif item.get("type") == "function_call":
            items.append({"type": "function_call", "call_id": item.get("call_id"), "name": item.get("name"),
                          "arguments": item.get("arguments") or ""})
    return items


def _parts(content: Any) -> list[dict[str, Any]]:
    """A message's content parts (content that is not a string), each an object."""
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise RequestRefused("Invalid 'input': a message's content must be a string or an array of content parts.",
                             param="input", code="invalid_value")
    return content


def _part_text(part: dict[str, Any], field: str = "text") -> str:
    text = part.get(field) or ""
    if not isinstance(text, str):
        raise RequestRefused(f"Invalid 'input': a content part's '{field}' must be a string.", param="input",
                             code="invalid_value")
    return text


def _parts_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(_part_text(p) or _part_text(p, "refusal") for p in _parts(content or []))


def _user_content(content: Any) -> Any:
    """Chat content for a user/system message: a string when it is only text (every server takes that)."""
    if isinstance(content, str):
        return content
    parts = []
    for part in _parts(content or []):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _part_text(part)})
        elif kind == "input_image" and part.get("image_url"):
            image = {"url": part["image_url"], **({"detail": part["detail"]} if part.get("detail") else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _refused("input", f"input content of type {kind!r} is not supported by Chat Completions")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items as Chat Completions messages. The function calls that follow an assistant message
    (one turn: its text, then its calls) join that message as its tool_calls, as Chat Completions reports such a
    turn and as strict chat templates require; `developer` becomes `system` (servers other than OpenAI rarely know
    it)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            if role not in ("system", "user", "assistant"):
                raise _refused("input", f"input message role {item.get('role')!r} is not supported")
            content = _parts_text(item.get("content")) if role == "assistant" else _user_content(item.get("content"))
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            if not all(isinstance(item.get(field) or "", str) for field in ("call_id", "name", "arguments")):
                raise RequestRefused("Invalid 'input': a function_call's call_id, name and arguments are strings.",
                                     param="input", code="invalid_value")
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else json.dumps(output)})
        elif kind == "reasoning":
            continue  # reasoning items do not carry over to Chat Completions
        else:
            raise _refused("input", f"input item of type {kind!r} is not supported by Chat Completions")
    return messages


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools or []):
        if tool.get("type") != "function":
            raise _refused(f"tools[{index}]", f"tool type {tool.get('type')!r} is not supported by Chat Completions "
                                              "(function tools only)")
        for field in tool:
            if field not in ("type", *_FUNCTION_TOOL_FIELDS) and tool[field] is not None:
                raise RequestRefused(f"Unsupported parameter: 'tools[{index}].{field}' has no Chat Completions "
                                     "equivalent.", param=f"tools[{index}].{field}")
        out.append({"type": "function",
                    "function": {k: tool[k] for k in _FUNCTION_TOOL_FIELDS if tool.get(k) is not None}})
    return out


@dataclass
class DirectRequest:
    """What one direct call asks: the run's parameters (Responses API names) and the whole conversation as
    Responses items (a session's earlier turns already expanded)."""

    params: Mapping[str, Any]
    items: list[dict[str, Any]]

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> "DirectRequest":
        """The request for parameters alone (no earlier turns)."""
        return cls(params, input_items(params.get("input")))

    @property
    def model(self) -> str:
        return self.params.get("model")

    @property
    def metadata(self) -> dict[str, str]:
        return self.params.get("metadata") or {}


def chat_params(request: DirectRequest) -> dict[str, Any]:
    """The Chat Completions call for a request; raises RequestRefused for what it cannot take."""
    params: dict[str, Any] = {"model": request.model,
                              "messages": chat_messages(request.params.get("instructions"), request.items),
                              **chat_options(request.params),
                              "stream": True, "stream_options": {"include_usage": True}}
    if request.params.get("tools"):
        params["tools"] = chat_tools(request.params["tools"])
    return params


def responses_params(request: DirectRequest) -> dict[str, Any]:
    """The streamed Responses API call for a request (the server keeps nothing: the log is the stored response)."""
    return {**responses_options(request.params), "model": request.model, "input": request.items,
            "stream": True, "store": False,
            **{k: request.params[k] for k in ("instructions", "tools", "metadata") if request.params.get(k)}}


# -- output: Chat chunks -> Responses events -------------------------------------------------------------------
def normalised_usage(usage: Any) -> dict[str, Any] | None:
    """Token usage in the Responses API's shape (input/output/total tokens, cached and reasoning tokens), from a
    Chat Completions usage (prompt_tokens, ...) or a Responses one, whichever details the server left out."""
    if usage is None:
        return None
    data = usage.model_dump(mode="json", by_alias=True, exclude_unset=True) if hasattr(usage, "model_dump") \
        else dict(usage)
    if "input_tokens" in data or "output_tokens" in data:
        inputs, outputs = data.get("input_tokens") or 0, data.get("output_tokens") or 0
        input_details, output_details = data.get("input_tokens_details"), data.get("output_tokens_details")
    else:
        inputs, outputs = data.get("prompt_tokens") or 0, data.get("completion_tokens") or 0
        input_details, output_details = data.get("prompt_tokens_details"), data.get("completion_tokens_details")
    input_details, output_details = input_details or {}, output_details or {}
    return {"input_tokens": inputs,
            "input_tokens_details": {"cached_tokens": input_details.get("cached_tokens") or 0,
                                     "cache_write_tokens": input_details.get("cache_write_tokens") or 0},
            "output_tokens": outputs,
            "output_tokens_details": {"reasoning_tokens": output_details.get("reasoning_tokens") or 0},
            "total_tokens": data.get("total_tokens") or inputs + outputs}


class ChatTranslator:
    """One Chat Completions stream as Responses stream events: a message item for the text (a refusal part
    for refusals), a function_call item per tool call, then the terminal event with the whole response."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self._base = base
        self.output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None  # the open message item
        self._part: dict[str, Any] | None = None  # its open content part
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its function_call item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.service_tier: str | None = None  # the tier the server says it used

    # -- feeding ------------------------------------------------------------------------------------------------
    def feed(self, chunk: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            delta = choice.delta
            logprobs = _token_logprobs(getattr(choice, "logprobs", None))
            if delta is not None and delta.content:
                events += self._text("output_text", delta.content, logprobs)
            elif logprobs and self._part is not None and self._part["type"] == "output_text":
                self._part["logprobs"] += logprobs  # a server that sends them apart from their text
            if delta is not None and getattr(delta, "refusal", None):
                events += self._text("refusal", delta.refusal)
            for call in (delta.tool_calls if delta is not None else None) or []:
                events += self._call(call)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if getattr(chunk, "usage", None) is not None:
            self.usage = normalised_usage(chunk.usage)
        self.service_tier = getattr(chunk, "service_tier", None) or self.service_tier
        return events

    @property
    def ended(self) -> bool:
        return self.finish_reason is not None

    def _index(self, item: dict[str, Any]) -> int:
        return self.output.index(item)

    def _text(self, kind: str, text: str, logprobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        logprobs = logprobs or []
        events = []
        if self._message is None:
            self._message = {"type": "message", "id": f"msg_{secrets.token_hex(12)}", "status": "in_progress",
                             "role": "assistant", "content": []}
            self.output.append(self._message)
            events.append({"type": "response.output_item.added", "output_index": self._index(self._message),
                           "item": {**self._message, "content": []}})
        if self._part is None or self._part["type"] != kind:
            events += self._close_part()
            self._part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == "output_text" else {
                "type": "refusal", "refusal": ""}
            self._message["content"].append(self._part)
            events.append({"type": "response.content_part.added", **self._where(),
                           "part": json.loads(json.dumps(self._part))})  # a snapshot: the part grows
        field = "text" if kind == "output_text" else "refusal"
        self._part[field] += text
        delta = {"type": f"response.{'output_text' if kind == 'output_text' else 'refusal'}.delta", **self._where(),
                 "delta": text}
        if kind == "output_text":
            self._part["logprobs"] += logprobs
            delta["logprobs"] = _event_logprobs(logprobs)
        events.append(delta)
        return events

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._message["id"], "output_index": self._index(self._message),
                "content_index": len(self._message["content"]) - 1}

    def _close_part(self) -> list[dict[str, Any]]:
        if self._part is None:
            return []
        part, where = self._part, self._where()
        self._part = None
        if part["type"] == "output_text":
            done = {"type": "response.output_text.done", **where, "text": part["text"],
                    "logprobs": _event_logprobs(part["logprobs"])}
        else:
            done = {"type": "response.refusal.done", **where, "refusal": part["refusal"]}
        return [done, {"type": "response.content_part.done", **where, "part": json.loads(json.dumps(part))}]

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        events = self._close_part()
        self._message["status"] = status
        events.append({"type": "response.output_item.done", "output_index": self._index(self._message),
                       "item": json.loads(json.dumps(self._message))})
        self._message = None
        return events

    def _call(self, call: Any) -> list[dict[str, Any]]:
        events = []
        item = self._calls.get(call.index)
        function = call.function
        if item is None:
            events += self._close_message("completed")  # text before the calls is finished
            item = {"type": "function_call", "id": f"fc_{secrets.token_hex(12)}", "call_id": call.id or
                    f"call_{secrets.token_hex(12)}", "name": (function.name if function else None) or "",
                    "arguments": "", "status": "in_progress"}
            self._calls[call.index] = item
            self.output.append(item)
            events.append({"type": "response.output_item.added", "output_index": self._index(item), "item": dict(item)})
        elif function is not None and function.name and not item["name"]:
            item["name"] = function.name
        arguments = function.arguments if function is not None else None
        if arguments:
            item["arguments"] += arguments
            events.append({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                           "output_index": self._index(item), "delta": arguments})
        return events

    # -- ending -------------------------------------------------------------------------------------------------
    def finish(self) -> list[dict[str, Any]]:
        """The closing events and the terminal event, by the finish reason."""
        reason = self.finish_reason
        incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(reason or "")
        events = self._close_message("incomplete" if incomplete else "completed")
        for item in self._calls.values():
            index = self._index(item)
            item["status"] = "completed"
            events.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                           "output_index": index, "arguments": item["arguments"], "name": item["name"]})
            events.append({"type": "response.output_item.done", "output_index": index, "item": dict(item)})
        served = {"service_tier": self.service_tier} if self.service_tier else {}
        if incomplete:
            response = with_status(self._base, "incomplete", output=self.output, usage=self.usage,
                                   incomplete_details={"reason": incomplete}, **served)
            return events + [{"type": "response.incomplete", "response": response}]
        return events + [{"type": "response.completed", "response": with_status(
            self._base, "completed", output=self.output, usage=self.usage, **served)}]


def _token_logprobs(logprobs: Any) -> list[dict[str, Any]]:
    """A chunk's token log probabilities (Chat's `choices[].logprobs.content`) as the Responses API's output_text
    `logprobs` (token, logprob, bytes, top_logprobs)."""
    def one(token: Any) -> dict[str, Any]:
        text = _field(token, "token") or ""
        return {"token": text, "logprob": _field(token, "logprob"),
                "bytes": _field(token, "bytes") or list(text.encode("utf-8"))}

    return [{**one(token), "top_logprobs": [one(top) for top in _field(token, "top_logprobs") or []]}
            for token in _field(logprobs, "content") or []]


def _event_logprobs(logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same as a text event carries them (no bytes)."""
    return [{"token": t["token"], "logprob": t["logprob"],
             "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]} for top in t["top_logprobs"]]}
            for t in logprobs]


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def failed_event(base: Mapping[str, Any], code: str, message: str) -> dict[str, Any]:
    return {"type": "response.failed",
            "response": with_status(base, "failed", output=[], error={"code": code, "message": redact(message)})}


# -- the plain Responses stream: relabelled as ours -----------------------------------------------------------
class ResponsesRelabeller:
    """A Responses API stream (without background mode) as our events: its lifecycle events are dropped (the
    executor sends its own), its responses carry our id and background flag, its error event is a failure."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self._base = base
        self.ended = False

    def feed(self, event: Any) -> list[dict[str, Any]]:
        data = _wire(event)
        kind = data.get("type")
        data.pop("sequence_number", None)
        data.pop("obfuscation", None)
        if kind in ("response.created", "response.queued", "response.in_progress", "keepalive"):
            return []
        if kind == "error":
            self.ended = True
            return [failed_event(self._base, data.get("code") or "server_error", data.get("message") or "model error")]
        if kind in TERMINAL_TYPES:
            self.ended = True
            theirs = data.get("response") or {}
            data["response"] = {**self._base, **{k: theirs.get(k) for k in (
                "status", "output", "error", "incomplete_details", "completed_at", "service_tier") if k in theirs},
                                "usage": normalised_usage(theirs.get("usage"))}
            if "error" in theirs:
                data["response"]["error"] = redact_error(theirs["error"])
        return [data]


def _wire(event: Any) -> dict[str, Any]:
    """An SDK event as the server sent it: its wire names (`async`, not the SDK's `async_`), and only the fields
    it sent (no nulls for the ones it left out)."""
    if hasattr(event, "model_dump"):
        return event.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return dict(event)


# -- the call ------------------------------------------------------------------------------------------------
class DirectModel:
    """The streaming model call of the executor, through the one AsyncOpenAI client."""

    def __init__(self, client: AsyncOpenAI, *, api: str, idle_timeout: float, connect_timeout: float,
                 emulator_knobs: bool = False) -> None:
        self._client = client
        self._api = api  # chat_completions | responses
        self._timeout = openai.Timeout(idle_timeout, connect=connect_timeout)
        self._emulator_knobs = emulator_knobs

    def check(self, params: Mapping[str, Any]) -> None:
        """Refuse at the start what this API cannot take: raises RequestRefused (a 400 naming the parameter)."""
        request = DirectRequest.of(params)
        if self._api == "chat_completions":
            chat_params(request)
        else:
            responses_params(request)

    @property
    def api(self) -> str:
        return self._api

    async def stream(self, request: DirectRequest, base: Mapping[str, Any], *,
                     api: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The call's events, ending with its terminal event, through `api` (default: this instance's). Raises
        ProviderError when the call is refused or its connection breaks (transient: a cut)."""
        api = api or self._api
        source = self._chat(request, base) if api == "chat_completions" else self._responses(request, base)
        async for event in source:
            yield event

    def _headers(self, request: DirectRequest) -> dict[str, str]:
        if not self._emulator_knobs:
            return {}
        knobs = {k: v for k, v in (request.metadata or {}).items() if k.startswith("emulator_")}
        return {EMULATOR_KNOB_HEADER: json.dumps(knobs)} if knobs else {}

    async def _chat(self, request: DirectRequest, base: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        params = chat_params(request)
        translator = ChatTranslator(base)
        stream = await self._open(self._client.chat.completions.create, params, request)
        try:
            async for chunk in _guarded(stream):
                for event in translator.feed(chunk):
                    yield event
        except _ModelReportedFailure as failure:
            yield failed_event(base, "server_error", str(failure))
            return
        finally:
            await stream.close()
        if not translator.ended:
            raise ProviderError(transient=True, status=None, message="the model stream ended without a finish reason")
        for event in translator.finish():
            yield event

    async def _responses(self, request: DirectRequest, base: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        relabeller = ResponsesRelabeller(base)
        stream = await self._open(self._client.responses.create, responses_params(request), request)
        try:
            async for event in _guarded(stream):
                for ours in relabeller.feed(event):
                    yield ours
                if relabeller.ended:
                    return
        except _ModelReportedFailure as failure:
            yield failed_event(base, "server_error", str(failure))
            return
        finally:
            await stream.close()
        raise ProviderError(transient=True, status=None, message="the model stream ended without a terminal event")

    async def _open(self, create, params: dict[str, Any], request: DirectRequest):
        try:
            return await create(**params, timeout=self._timeout, extra_headers=self._headers(request) or None)
        except Exception as error:  # noqa: BLE001 - classified
            raise classify(error) from None


class _ModelReportedFailure(Exception):
    """An error event inside the stream: the model's own failure."""


async def _guarded(stream) -> AsyncIterator[Any]:
    """The SDK stream with its failures classified: an in-stream error is the model's failure; a broken
    connection or unparseable event is a cut (transient)."""
    try:
        async for item in stream:
            yield item
    except (openai.APIConnectionError, openai.APITimeoutError) as error:
        raise ProviderError(transient=True, status=None,
                            message=f"the model stream was cut ({type(error).__name__})") from None
    except openai.APIStatusError as error:
        raise classify(error) from None
    except openai.APIError as error:
        raise _ModelReportedFailure(error.message) from None
    except ValueError as error:  # an event cut in half
        raise ProviderError(transient=True, status=None,
                            message=f"the model stream broke ({type(error).__name__})") from None
