"""A scripted model behind LiteLLM proxy (its `custom_provider_map`): what the conformance tests drive.

Loaded by the proxy in its own venv (.local/venv-litellm), so it imports only LiteLLM and the standard library.
The script is JSON in the conversation's last user message, after the marker `#script` (so it reaches us through
the service and LiteLLM unchanged, as any prompt does):

    "Write about queues #script {"id": "t1", "chars": 300, "chunks": 30, "delay_ms": 20}"

- `id`: names the conversation's calls in the record (every test uses its own).
- `text` (or `chars`: a deterministic text of that length), streamed in `chunks` pieces, `delay_ms` apart.
- `tool_calls`: [{"name", "arguments"}] streamed after the text (so text plus calls in one turn works).
- `errors`: statuses that the first calls with this id answer before any output, in order (`[429, 500]`:
  the first call 429, the second 500, the third streams). (No Retry-After: LiteLLM 1.106.12 passes a provider's
  headers on only with an `llm_provider-` prefix, so a client never sees one as `retry-after`.)
- `cut_after` (chunks) with `cuts` (default 1): the first `cuts` calls stop after that many chunks. `cut_how`:
  `drop` (default: the connection closes mid-body, as when the server dies) or `error` (the model fails and
  LiteLLM sends its error event in the stream, as it does when its upstream fails mid-generation).

A turn whose last messages are tool results answers `Tool <name> returned <output>` for each, instead of the
script's text and calls. Every call is appended to the JSON-lines file `SCRIPTED_PROVIDER_LOG` with the
model, the messages and every parameter LiteLLM passed on (`optional_params`), before the script runs; how each
stream ended follows (`event`: `completed`, `cut`, or `closed`: the client went away; `sent` chunks of `of`).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from litellm import CustomLLM
from litellm.llms.custom_llm import CustomLLMError

MARKER = "#script"
_LOCK = threading.Lock()
_CALLS: dict[str, int] = {}  # script id -> calls so far (the proxy runs one worker process)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or [] if isinstance(part, dict))


def script_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    for message in reversed(messages):
        if message.get("role") == "user":
            text = _text(message.get("content"))
            return json.loads(text.split(MARKER, 1)[1]) if MARKER in text else {}
    return {}


def _tool_results(messages: list[dict[str, Any]]) -> list[str]:
    """`Tool <name> returned <output>` for the tool messages that end the conversation."""
    names = {
        call["id"]: call["function"]["name"]
        for m in messages
        if m.get("role") == "assistant"
        for call in m.get("tool_calls") or []
    }
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(
            0, f"Tool {names.get(message.get('tool_call_id'), '?')} returned {_text(message.get('content'))}"
        )
    return results


def _sample_text(chars: int) -> str:
    words = "the queue holds each run until a worker takes it and the answer comes back whole ".split()
    out, i = "", 0
    while len(out) < chars:
        out += words[i % len(words)] + " "
        i += 1
    return out[:chars]


def _pieces(text: str, chunks: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, chunks)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get("SCRIPTED_PROVIDER_LOG")
    if path:
        with _LOCK, open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry, default=repr) + "\n")


def _chunk(text: str = "", *, tool: dict | None = None, finish: str = "", usage: dict | None = None) -> dict:
    return {
        "text": text,
        "tool_use": tool,
        "is_finished": bool(finish),
        "finish_reason": finish,
        "usage": usage,
        "index": 0,
    }


class ScriptedModel(CustomLLM):
    def _plan(self, model: str, messages: list, optional_params: dict) -> tuple[dict[str, Any], list[dict]]:
        script = script_of(messages)
        script_id = str(script.get("id", ""))
        with _LOCK:
            call = _CALLS[script_id] = _CALLS.get(script_id, 0) + 1
        _record({"id": script_id, "call": call, "model": model, "messages": messages, "params": optional_params})
        errors = list(script.get("errors") or [])
        if call <= len(errors):
            status = int(errors[call - 1])
            raise CustomLLMError(status_code=status, message=f"scripted {status} (call {call})")
        results = _tool_results(messages)
        if results:
            text, calls = "\n".join(results), []
        else:
            text = script.get("text", _sample_text(int(script.get("chars", 40))))
            calls = list(script.get("tool_calls") or [])
        cut = int(script.get("cut_after", 0)) if call - len(errors) <= int(script.get("cuts", 1)) else 0
        plan = {
            "id": script_id,
            "call": call,
            "delay": float(script.get("delay_ms", 0)) / 1000,
            "cut": cut,
            "cut_how": script.get("cut_how", "drop"),
        }
        chunks = [_chunk(piece) for piece in _pieces(text, int(script.get("chunks", 8)))]
        for index, tool in enumerate(calls):
            arguments = tool.get("arguments", "{}")
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
            chunks.append(
                _chunk(
                    tool={
                        "id": f"call_{script_id}_{call}_{index}",
                        "type": "function",
                        "index": index,
                        "function": {"name": tool["name"], "arguments": arguments},
                    }
                )
            )
        prompt = sum(len(_text(m.get("content"))) for m in messages) // 4 + 1
        completion = len(text) // 4 + 1
        chunks.append(
            _chunk(
                finish="tool_calls" if calls else "stop",
                usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            )
        )
        return plan, chunks

    async def astreaming(
        self,
        model: str,
        messages: list,
        api_base: str,
        custom_prompt_dict: dict,
        model_response: Any,
        print_verbose: Any,
        encoding: Any,
        api_key: Any,
        logging_obj: Any,
        optional_params: dict,
        *args: Any,
        **kwargs: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        plan, chunks = self._plan(model, messages, optional_params)
        sent, end = 0, "closed"  # unless it gets to the end or its cut: the client went away
        try:
            for chunk in chunks:
                if plan["cut"] and sent == plan["cut"]:
                    end = "cut"
                    if plan["cut_how"] == "error":
                        raise CustomLLMError(status_code=500, message=f"scripted error after {sent} chunks")
                    raise _ConnectionDrop(f"scripted drop after {sent} chunks")
                if plan["delay"] and sent:
                    await asyncio.sleep(plan["delay"])
                yield chunk
                sent += 1
            end = "completed"
        finally:
            _record({"id": plan["id"], "call": plan["call"], "event": end, "sent": sent, "of": len(chunks)})

    def streaming(
        self,
        model: str,
        messages: list,
        api_base: str,
        custom_prompt_dict: dict,
        model_response: Any,
        print_verbose: Any,
        encoding: Any,
        api_key: Any,
        logging_obj: Any,
        optional_params: dict,
        *args: Any,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        raise CustomLLMError(status_code=400, message="the scripted model streams asynchronously only")


class _ConnectionDrop(BaseException):
    """Not an Exception, so that no handler of LiteLLM turns it into an error event: it escapes to uvicorn,
    which closes the connection mid-body (the response has started), as when a server process dies."""


handler = ScriptedModel()
