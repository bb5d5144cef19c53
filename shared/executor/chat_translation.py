"""Chat Completions for the executor, translated both ways: a run's Responses request as a Chat Completions call
(input items as messages, function tools, the parameters through `parameters.chat_options`), and the call's
stream of chunks as the Responses API's own stream events (ChatTranslator: a message item for the text, a
function_call item per tool call, then the terminal event with the whole response), without sequence numbers:
the executor numbers them in its log.

What Chat Completions cannot take is refused before any call (RequestRefused: a 400 naming the parameter).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from ..provider import RequestRefused
from .model_request import ModelRequest, normalised_usage, with_status
from .parameters import chat_options

_FUNCTION_TOOL_FIELDS = ("name", "description", "parameters", "strict")


def _refused(param: str, message: str) -> RequestRefused:
    return RequestRefused(f"Unsupported value in '{param}': {message}.", param=param, code="unsupported_value")


def _parts(content: Any) -> list[dict[str, Any]]:
    """A message's content parts (content that is not a string), each an object."""
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise RequestRefused(
            "Invalid 'input': a message's content must be a string or an array of content parts.",
            param="input",
            code="invalid_value",
        )
    return content


def _part_text(part: dict[str, Any], field: str = "text") -> str:
    text = part.get(field) or ""
    if not isinstance(text, str):
        raise RequestRefused(
            f"Invalid 'input': a content part's '{field}' must be a string.", param="input", code="invalid_value"
        )
    return text


def _parts_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(_part_text(p) or _part_text(p, "refusal") for p in _parts(content or []))


def _user_content(content: Any) -> Any:
    """Chat content for a user/system message: a string when it is only text (every server takes that)."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
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
                raise RequestRefused(
                    "Invalid 'input': a function_call's call_id, name and arguments are strings.",
                    param="input",
                    code="invalid_value",
                )
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
            }
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        elif kind == "reasoning":
            continue  # reasoning items do not carry over to Chat Completions
        else:
            raise _refused("input", f"input item of type {kind!r} is not supported by Chat Completions")
    return messages


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools or []):
        if tool.get("type") != "function":
            raise _refused(
                f"tools[{index}]",
                f"tool type {tool.get('type')!r} is not supported by Chat Completions (function tools only)",
            )
        for field in tool:
            if field not in ("type", *_FUNCTION_TOOL_FIELDS) and tool[field] is not None:
                raise RequestRefused(
                    f"Unsupported parameter: 'tools[{index}].{field}' has no Chat Completions equivalent.",
                    param=f"tools[{index}].{field}",
                )
        out.append(
            {"type": "function", "function": {k: tool[k] for k in _FUNCTION_TOOL_FIELDS if tool.get(k) is not None}}
        )
    return out


def chat_params(request: ModelRequest) -> dict[str, Any]:
    """The Chat Completions call for a request; raises RequestRefused for what it cannot take."""
    params: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request.params.get("instructions"), request.items),
        **chat_options(request.params),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.params.get("tools"):
        params["tools"] = chat_tools(request.params["tools"])
    return params


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
            self._message = {
                "type": "message",
                "id": f"msg_{secrets.token_hex(12)}",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self.output.append(self._message)
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": self._index(self._message),
                    "item": {**self._message, "content": []},
                }
            )
        if self._part is None or self._part["type"] != kind:
            events += self._close_part()
            self._part = (
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                if kind == "output_text"
                else {"type": "refusal", "refusal": ""}
            )
            self._message["content"].append(self._part)
            events.append(
                {"type": "response.content_part.added", **self._where(), "part": json.loads(json.dumps(self._part))}
            )  # a snapshot: the part grows
        field = "text" if kind == "output_text" else "refusal"
        self._part[field] += text
        delta = {
            "type": f"response.{'output_text' if kind == 'output_text' else 'refusal'}.delta",
            **self._where(),
            "delta": text,
        }
        if kind == "output_text":
            self._part["logprobs"] += logprobs
            delta["logprobs"] = _event_logprobs(logprobs)
        events.append(delta)
        return events

    def _where(self) -> dict[str, Any]:
        message = self._message
        assert message is not None, "a content part belongs to the open message"
        return {
            "item_id": message["id"],
            "output_index": self._index(message),
            "content_index": len(message["content"]) - 1,
        }

    def _close_part(self) -> list[dict[str, Any]]:
        if self._part is None:
            return []
        part, where = self._part, self._where()
        self._part = None
        if part["type"] == "output_text":
            done = {
                "type": "response.output_text.done",
                **where,
                "text": part["text"],
                "logprobs": _event_logprobs(part["logprobs"]),
            }
        else:
            done = {"type": "response.refusal.done", **where, "refusal": part["refusal"]}
        return [done, {"type": "response.content_part.done", **where, "part": json.loads(json.dumps(part))}]

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        events = self._close_part()
        self._message["status"] = status
        events.append(
            {
                "type": "response.output_item.done",
                "output_index": self._index(self._message),
                "item": json.loads(json.dumps(self._message)),
            }
        )
        self._message = None
        return events

    def _call(self, call: Any) -> list[dict[str, Any]]:
        events = []
        item = self._calls.get(call.index)
        function = call.function
        if item is None:
            events += self._close_message("completed")  # text before the calls is finished
            item = {
                "type": "function_call",
                "id": f"fc_{secrets.token_hex(12)}",
                "call_id": call.id or f"call_{secrets.token_hex(12)}",
                "name": (function.name if function else None) or "",
                "arguments": "",
                "status": "in_progress",
            }
            self._calls[call.index] = item
            self.output.append(item)
            events.append({"type": "response.output_item.added", "output_index": self._index(item), "item": dict(item)})
        elif function is not None and function.name and not item["name"]:
            item["name"] = function.name
        arguments = function.arguments if function is not None else None
        if arguments:
            item["arguments"] += arguments
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": self._index(item),
                    "delta": arguments,
                }
            )
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
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "arguments": item["arguments"],
                    "name": item["name"],
                }
            )
            events.append({"type": "response.output_item.done", "output_index": index, "item": dict(item)})
        served = {"service_tier": self.service_tier} if self.service_tier else {}
        if incomplete:
            response = with_status(
                self._base,
                "incomplete",
                output=self.output,
                usage=self.usage,
                incomplete_details={"reason": incomplete},
                **served,
            )
            return events + [{"type": "response.incomplete", "response": response}]
        return events + [
            {
                "type": "response.completed",
                "response": with_status(self._base, "completed", output=self.output, usage=self.usage, **served),
            }
        ]


def _token_logprobs(logprobs: Any) -> list[dict[str, Any]]:
    """A chunk's token log probabilities (Chat's `choices[].logprobs.content`) as the Responses API's output_text
    `logprobs` (token, logprob, bytes, top_logprobs)."""

    def one(token: Any) -> dict[str, Any]:
        text = _field(token, "token") or ""
        return {
            "token": text,
            "logprob": _field(token, "logprob"),
            "bytes": _field(token, "bytes") or list(text.encode("utf-8")),
        }

    return [
        {**one(token), "top_logprobs": [one(top) for top in _field(token, "top_logprobs") or []]}
        for token in _field(logprobs, "content") or []
    ]


def _event_logprobs(logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same as a text event carries them (no bytes)."""
    return [
        {
            "token": t["token"],
            "logprob": t["logprob"],
            "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]} for top in t["top_logprobs"]],
        }
        for t in logprobs
    ]


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)
