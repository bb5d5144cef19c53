"""Chat Completions (``POST /chat/completions``): the same synthetic model as the Responses path, no storage.

A call's whole reply is a pure function of (arrival time, request, knobs): the plan lists every stream chunk
with its due time, a non-streaming call waits until the end and answers the ChatCompletion, a streaming call
sends chunks as they fall due. Nothing is kept but a bounded log of calls for ``/_emulator/chat_completions``,
with the parameters each call was sent (``request``) and the shape of its messages (``messages``).

The request is checked as OpenAI checks it (an argument Chat Completions does not have, a value out of range,
``tool_choice`` or ``parallel_tool_calls`` without ``tools``, ``top_logprobs`` without ``logprobs``: 400) and what
it asks is honoured: ``tool_choice`` (none, required, a named function, allowed_tools), ``parallel_tool_calls``
false (one call), ``response_format`` (JSON text: an object, or an instance of the schema), ``logprobs`` and
``top_logprobs`` (per token), ``service_tier`` (the tier served), ``reasoning_effort`` (reasoning tokens in usage).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from .timeline import KnobError, build_content_spec, estimate_tokens, synth_text

if TYPE_CHECKING:
    from .app import Emulator

KNOB_HEADER = "x-emulator-knobs"
FINGERPRINT = "fp_emulator"
_MAX_CHUNK = 256 * 1024
CHAT_PARAMETERS = frozenset(CompletionCreateParamsBase.__annotations__) | {"stream"}  # what Chat Completions takes
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
REASONING_TOKENS = {"none": 0, "minimal": 8, "low": 32, "medium": 128, "high": 512, "xhigh": 1024}
VERBOSITIES = ("low", "medium", "high")


class ChatRequestError(KnobError):
    """A bad chat request; ``param`` names the offending field for the 400, ``code`` is OpenAI's."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


def check_parameters(body: dict) -> None:
    """What OpenAI refuses before generating (raises ChatRequestError)."""
    for name in body:
        if name not in CHAT_PARAMETERS:
            raise ChatRequestError(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("top_logprobs", 0, 20)):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high
        ):
            raise ChatRequestError(f"Invalid '{name}': must be a number from {low} to {high}.", name)
    for name in ("tool_choice", "parallel_tool_calls"):
        if body.get(name) is not None and not body.get("tools"):
            raise ChatRequestError(
                f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified.", name
            )
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise ChatRequestError("Invalid 'top_logprobs': 'logprobs' must be true to use it.", "top_logprobs")
    for name, allowed in (
        ("service_tier", SERVICE_TIERS),
        ("reasoning_effort", tuple(REASONING_TOKENS)),
        ("verbosity", VERBOSITIES),
    ):
        if body.get(name) is not None and body[name] not in allowed:
            raise ChatRequestError(f"Invalid '{name}': must be one of {', '.join(allowed)}.", name)
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise ChatRequestError(
                "Invalid 'response_format.type': must be text, json_object or json_schema.", "response_format"
            )
        schema = fmt.get("json_schema")
        if kind == "json_schema" and not (isinstance(schema, dict) and isinstance(schema.get("name"), str)):
            raise ChatRequestError("Missing required parameter: 'response_format.json_schema.name'.", "response_format")


def header_knobs(raw: str | None) -> dict[str, str]:
    """``x-emulator-knobs: {"duration_ms": 2000, "outcome": "failed"}`` -> metadata-style knob strings.
    Keys may omit the ``emulator_`` prefix; values may be numbers or booleans."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ChatRequestError(f"header '{KNOB_HEADER}' must be a JSON object, got {raw[:80]!r}", None) from None
    if not isinstance(data, dict):
        raise ChatRequestError(f"header '{KNOB_HEADER}' must be a JSON object", None)
    out = {}
    for key, value in data.items():
        name = key if key.startswith("emulator_") else "emulator_" + key
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"))
        out[name] = str(value)
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def current_turn(messages: Any) -> tuple[list[dict], dict[str, str], int]:
    """What the model answers: instructions (system/developer), the last user message and the tool results
    after it, as Responses-style items; plus the call-id -> name map of earlier tool calls and the prompt
    size in characters. Only the current turn can trigger ``call:<name>``: history must not re-trigger."""
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("Missing required parameter: 'messages'.", "messages")
    call_names: dict[str, str] = {}
    last_user = -1
    chars = 0
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
            "function",
        ):
            raise ChatRequestError(
                f"Invalid 'messages[{n}]': expected an object with a role of system, developer, "
                f"user, assistant or tool.",
                "messages",
            )
        chars += len(_text_of(m.get("content")))
        if m["role"] == "user":
            last_user = n
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                call_names[str(call.get("id"))] = str(call["function"].get("name"))
    items = [
        {"type": "message", "role": m["role"], "content": _text_of(m.get("content"))}
        for n, m in enumerate(messages)
        if m["role"] in ("system", "developer") or n == last_user
    ]
    for m in messages[last_user + 1 :]:
        if m["role"] == "tool":
            items.append(
                {"type": "function_call_output", "call_id": m.get("tool_call_id"), "output": _text_of(m.get("content"))}
            )
    return items, call_names, chars


def function_tools(tools: Any, tool_choice: Any) -> list[dict]:
    """Chat tools ``{"type":"function","function":{name, parameters}}`` as Responses-style function tools: the
    ones ``tool_choice`` lets the model call."""
    if tools is None or tool_choice == "none":
        return []
    if not isinstance(tools, list):
        raise ChatRequestError("Invalid 'tools': expected an array.", "tools")
    out = []
    for n, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ChatRequestError(
                f'Invalid \'tools[{n}]\': expected {{"type": "function", "function": {{"name": ...}}}}.', "tools"
            )
        out.append({"type": "function", "name": fn["name"], "parameters": fn.get("parameters")})
    allowed = _chosen_names(tool_choice)
    if allowed is not None:
        missing = sorted(allowed - {t["name"] for t in out})
        if missing:
            raise ChatRequestError(
                f"Invalid 'tool_choice': no function named {missing[0]!r} in 'tools'.", "tool_choice"
            )
        out = [t for t in out if t["name"] in allowed]
    return out


def _chosen_names(tool_choice: Any) -> set[str] | None:
    """The functions a named or allowed_tools tool_choice limits the model to (None: no limit)."""
    if not isinstance(tool_choice, dict):
        return None
    if tool_choice.get("type") == "function":
        return {str((tool_choice.get("function") or {}).get("name"))}
    if tool_choice.get("type") == "allowed_tools":
        tools = (tool_choice.get("allowed_tools") or {}).get("tools") or []
        return {str((t.get("function") or {}).get("name")) for t in tools if isinstance(t, dict)}
    raise ChatRequestError(
        "Invalid 'tool_choice': expected none, auto, required, a function or allowed_tools.", "tool_choice"
    )


def must_call(tool_choice: Any) -> bool:
    """Whether tool_choice requires a call (required, a named function, allowed_tools in required mode)."""
    if tool_choice == "required":
        return True
    if isinstance(tool_choice, dict):
        return (
            tool_choice.get("type") == "function" or (tool_choice.get("allowed_tools") or {}).get("mode") == "required"
        )
    return False


def json_text(fmt: dict, filler: str) -> str:
    """A reply in the asked response_format: a JSON object, or an instance of the json_schema."""
    if fmt.get("type") == "json_schema":
        return json.dumps(_instance((fmt.get("json_schema") or {}).get("schema") or {}, filler))
    return json.dumps({"text": filler})


def _instance(schema: Any, filler: str) -> Any:
    schema = schema if isinstance(schema, dict) else {}
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        return {name: _instance(sub, filler) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_instance(schema.get("items"), filler)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, filler)


def token_logprobs(text: str, top: int) -> list[dict]:
    """Deterministic per-token log probabilities for ``text`` (a token every 4 characters), each with ``top``
    alternatives, the token itself first."""
    out = []
    for start in range(0, len(text), 4):
        token = text[start : start + 4]
        logprob = -round((zlib.crc32(token.encode()) % 1000) / 1000, 3)
        alternatives = [(token, logprob)] + [(f"{token}~{k}", round(logprob - k, 3)) for k in range(1, top)]
        out.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives[:top]
                ],
            }
        )
    return out


@dataclass
class ChatPlan:
    id: str
    model: str
    created: int
    t0: float
    t_first: float
    t_end: float
    include_usage: bool
    service_tier: str = "default"
    top_logprobs: int | None = None  # None: no logprobs asked for
    preamble: str = ""  # text before the tool calls (emulator_call_preamble)
    text: str = ""
    calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    failed: bool = False
    usage: dict = field(default_factory=dict)
    # (due, kind, item, start, end); kind: role|call|text|args|finish|usage|error|done
    chunks: list[tuple[float, str, int, int, int]] = field(default_factory=list)


def build_chat_plan(body: dict, meta: dict, knobs: dict, now: float) -> ChatPlan:
    check_parameters(body)
    items, call_names, prompt_chars = current_turn(body.get("messages"))
    tool_choice = body.get("tool_choice")
    tools = function_tools(body.get("tools"), tool_choice)
    chat_id = "chatcmpl-" + secrets.token_hex(12)
    spec = build_content_spec(
        resp_id=chat_id,
        items=items,
        instructions=None,
        tools=tools,
        meta=meta,
        previous=None,
        model=body["model"],
        call_names=call_names,
    )
    if tools and must_call(tool_choice) and spec["kind"] != "function_calls":  # no trigger: call the first allowed
        spec = build_content_spec(
            resp_id=chat_id,
            items=[],
            instructions=None,
            tools=tools[:1],
            previous=None,
            meta={"emulator_function_call": tools[0]["name"]},
            model=body["model"],
        )
    if body.get("parallel_tool_calls") is False and spec["kind"] == "function_calls":
        spec["calls"] = spec["calls"][:1]
    scale = knobs["scale"]
    t_first = now + knobs["queue_ms"] * scale / 1000.0
    t_end = now + knobs["duration_ms"] * scale / 1000.0
    stream_options = body.get("stream_options") or {}
    plan = ChatPlan(
        chat_id,
        body["model"],
        int(now),
        now,
        t_first,
        t_end,
        bool(body.get("stream") and stream_options.get("include_usage")),
        service_tier=body.get("service_tier") if body.get("service_tier") not in (None, "auto") else "default",
        top_logprobs=(body.get("top_logprobs") or 0) if body.get("logprobs") else None,
    )
    outcome = knobs["outcome"]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    parts: list[tuple[str, int, int, int]] = []  # (kind, item, start, end) of the content chunks
    if spec["kind"] == "function_calls":
        plan.calls = spec["calls"]
        plan.finish_reason = "tool_calls"
        plan.preamble = meta.get("emulator_call_preamble") or ""
        for i, call in enumerate(plan.calls):
            args = call["arguments"]
            n = min(4, len(args)) or 1
            bounds = [len(args) * k // n for k in range(n + 1)]
            parts += [("args", i, bounds[k], bounds[k + 1]) for k in range(n)]
        out_chars = sum(len(c["arguments"]) + len(c["name"]) for c in plan.calls) + len(plan.preamble)
    else:
        text = synth_text(spec["prefix"], spec["seed"], knobs["output_chars"])
        if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            text = json_text(body["response_format"], text)
        if outcome == "incomplete":
            text, plan.finish_reason = text[: len(text) // 2], "length"
        elif isinstance(limit, int) and estimate_tokens(len(text)) > limit:
            text, plan.finish_reason = text[: limit * 4], "length"
        plan.text = text
        n = min(max(1, knobs["deltas"]), len(text)) if text else 0
        bounds = [len(text) * k // n for k in range(n + 1)] if n else [0]
        parts = [("text", 0, bounds[k], bounds[k + 1]) for k in range(n)]
        out_chars = len(text)
    if outcome == "failed":
        plan.failed = True
        parts = parts[: len(parts) // 2]
    completion = estimate_tokens(out_chars)
    if plan.finish_reason == "length" and isinstance(limit, int):
        completion = min(completion, limit)
    reasoning = REASONING_TOKENS.get(body.get("reasoning_effort") or "none", 0)
    completion += reasoning  # reasoning tokens count as completion tokens, as OpenAI counts them
    prompt = estimate_tokens(prompt_chars)
    plan.usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    plan.chunks = _schedule(t_first, t_end, plan, parts)
    return plan


def _schedule(t_first: float, t_end: float, plan: ChatPlan, parts: list) -> list:
    """Role (and tool-call headers) at the first token, content spread evenly up to the end, then the
    finish chunk, the usage chunk when asked for, and [DONE]; a failed call ends with an error instead."""
    span = max(0.0, t_end - t_first)
    out: list[tuple] = [(t_first, "role", 0, 0, 0)]
    if plan.preamble:
        out.append((t_first, "preamble", 0, 0, 0))
    out += [(t_first, "call", i, 0, 0) for i in range(len(plan.calls))]
    for k, (kind, item, start, end) in enumerate(parts):
        out.append((t_first + span * (k + 1) / (len(parts) + 1), kind, item, start, end))
    if plan.failed:
        out.append((t_end, "error", 0, 0, 0))
        return out
    out.append((t_end, "finish", 0, 0, 0))
    if plan.include_usage:
        out.append((t_end, "usage", 0, 0, 0))
    out.append((t_end, "done", 0, 0, 0))
    return out


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _chunk(plan: ChatPlan, delta: dict, finish: str | None = None) -> dict:
    text = delta.get("content") if plan.top_logprobs is not None else None
    logprobs = {"content": token_logprobs(text, plan.top_logprobs), "refusal": None} if text else None
    out = {
        "id": plan.id,
        "object": "chat.completion.chunk",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": FINGERPRINT,
        "service_tier": plan.service_tier,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    if plan.include_usage:
        out["usage"] = None  # every chunk carries usage: null until the usage chunk, like the real API
    return out


FAILURE = {
    "message": "The server had an error while processing your request. Sorry about that! (emulator_outcome=failed)",
    "type": "server_error",
    "param": None,
    "code": "server_error",
}


def render_chunk(plan: ChatPlan, n: int) -> bytes:
    _due, kind, item, start, end = plan.chunks[n]
    if kind == "done":
        return b"data: [DONE]\n\n"
    if kind == "role":
        data = _chunk(plan, {"role": "assistant", "content": None if plan.calls else "", "refusal": None})
    elif kind == "preamble":
        data = _chunk(plan, {"content": plan.preamble})
    elif kind == "call":
        call = plan.calls[item]
        data = _chunk(
            plan,
            {
                "tool_calls": [
                    {
                        "index": item,
                        "id": call["call_id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": ""},
                    }
                ]
            },
        )
    elif kind == "args":
        data = _chunk(
            plan, {"tool_calls": [{"index": item, "function": {"arguments": plan.calls[item]["arguments"][start:end]}}]}
        )
    elif kind == "text":
        data = _chunk(plan, {"content": plan.text[start:end]})
    elif kind == "finish":
        data = _chunk(plan, {}, plan.finish_reason)
    elif kind == "usage":
        data = {**_chunk(plan, {}), "choices": [], "usage": plan.usage}
    else:  # error: what the API sends when generation fails mid-stream (the SDK raises APIError on it)
        data = {"error": FAILURE}
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def completion_body(plan: ChatPlan) -> dict:
    text = (plan.preamble or None) if plan.calls else plan.text
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if plan.calls:
        message["tool_calls"] = [
            {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in plan.calls
        ]
    logprobs = (
        {"content": token_logprobs(text, plan.top_logprobs), "refusal": None}
        if text and plan.top_logprobs is not None
        else None
    )
    return {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": FINGERPRINT,
        "service_tier": plan.service_tier,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": plan.finish_reason}],
        "usage": plan.usage,
    }


# ------------------------------------------------------------------------------------------------
# Per-call bookkeeping
# ------------------------------------------------------------------------------------------------


class ChatLog:
    """Recent calls (bounded) and per-body attempt counts for ``emulator_http_errors``."""

    def __init__(self, max_calls: int = 10_000) -> None:
        self.calls: deque[dict] = deque(maxlen=max_calls)
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._streams: OrderedDict[str, int] = OrderedDict()  # per body: streams sent (emulator_stream_cut_sends)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {
            "calls": 0,
            "streamed": 0,
            "stop": 0,
            "length": 0,
            "tool_calls": 0,
            "failed": 0,
            "http_errors": 0,
            "cut": 0,
            "chunks_sent": 0,
            "disconnected": 0,
        }

    def attempt(self, raw_body: bytes) -> int:
        """How many times this exact body was sent before (SDK retries and app-level retries alike)."""
        return self._count(self._attempts, raw_body)

    def stream_send(self, raw_body: bytes) -> int:
        """How many streams of this exact body were sent before (for ``emulator_stream_cut_sends``)."""
        return self._count(self._streams, raw_body)

    @staticmethod
    def _count(counts: OrderedDict, raw_body: bytes) -> int:
        key = hashlib.sha256(raw_body).hexdigest()
        n = counts.pop(key, 0)
        counts[key] = n + 1
        while len(counts) > 10_000:
            counts.popitem(last=False)
        return n

    def record(self, plan: ChatPlan, body: dict, meta: dict, stream: bool) -> dict:
        entry = {
            "id": plan.id,
            "model": plan.model,
            "stream": stream,
            "created_at": plan.t0,
            "first_token_at": plan.t_first,
            "finished_at": plan.t_end,
            "outcome": "failed" if plan.failed else plan.finish_reason,
            "metadata": body.get("metadata") or {},
            "knobs": {k: v for k, v in meta.items() if k.startswith("emulator_")},
            "tool_calls": [c["name"] for c in plan.calls],
            "chunks": len(plan.chunks) if stream else 0,
            "chunks_sent": 0,
            "cut": False,
            "disconnected": False,
            # what the call was sent: every parameter but the messages (their shape only) and the tools (names)
            "request": {k: v for k, v in body.items() if k not in ("messages", "tools", "metadata")},
            "tools": [(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)],
            "messages": [
                {
                    "role": m.get("role"),
                    "chars": len(_text_of(m.get("content"))),
                    "tool_calls": len(m.get("tool_calls") or []),
                }
                for m in body["messages"]
            ],
        }
        self.calls.append(entry)
        self.stats["calls"] += 1
        self.stats["streamed"] += int(stream)
        self.stats["failed" if plan.failed else plan.finish_reason] += 1
        return entry


class ChatStream:
    """ASGI app sending a plan's chunks as they fall due; a cut closes the connection without the end."""

    def __init__(
        self,
        emu: Emulator,
        plan: ChatPlan,
        entry: dict,
        cut_after: int | None,
        delay_s: float,
        headers: dict[str, str] | None = None,
    ):
        self.emu, self.plan, self.entry, self.cut_after, self.delay_s = emu, plan, entry, cut_after, delay_s
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope, receive, send) -> None:
        plan, log = self.plan, self.emu.chat
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", ("req_" + secrets.token_hex(16)).encode()),
                    *self.headers,
                ],
            }
        )
        wake = asyncio.Event()
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            wake.set()

        watcher = asyncio.ensure_future(watch())
        self.emu.listen(plan.id, wake)  # shutdown and outages wake it too
        loop = asyncio.get_running_loop()
        n, total = 0, len(plan.chunks)
        try:
            while n < total and not gone and not self.emu.cutting_streams:
                wake.clear()
                now = time.time()
                batch: list[bytes] = []
                size = 0
                while n < total and plan.chunks[n][0] <= now and size < _MAX_CHUNK:
                    if self.cut_after is not None and n >= self.cut_after:
                        break
                    batch.append(render_chunk(plan, n))
                    size += len(batch[-1])
                    n += 1
                if batch:
                    await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
                    self.entry["chunks_sent"] += len(batch)
                    log.stats["chunks_sent"] += len(batch)
                if self.cut_after is not None and n >= self.cut_after and n < total:
                    self.entry["cut"] = True
                    log.stats["cut"] += 1
                    return  # no final body message: uvicorn closes the socket mid-stream
                if n < total and not batch:
                    handle = loop.call_later(max(0.0, plan.chunks[n][0] - now), wake.set)
                    try:
                        await wake.wait()
                    finally:
                        handle.cancel()
            if gone:
                self.entry["disconnected"] = True
                log.stats["disconnected"] += 1
            elif n >= total:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.emu.unlisten(plan.id, wake)
            watcher.cancel()
