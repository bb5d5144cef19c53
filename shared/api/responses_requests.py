"""Validation of the facade's `POST /responses` bodies (OpenAI's Responses API, as openai 3.57 sends it).

What the provider accepts is passed through verbatim; what the service cannot honour is refused with a 400
naming the parameter, never dropped: `conversation` (provider-side state), `background_options`, `store: false`
(the service keeps every run: that is what makes it durable), `stream_options` without `stream`, and any
parameter the Responses API does not have. On executor runs the parameters go to the model API under its names,
and one it has no equivalent for is refused the same way when the run starts, before anything is written
(shared/provider/direct_params.py). Our additions ride in the body (`extra_body` in the SDK): `webhook_url` and
`deadline_seconds`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import invalid as bad_request
from ..runs.requests import RunRequest
from .run_requests import expect_field, flag_field, read_input, read_model_options, read_our_additions

# Passed to the provider as they are (openai 3.57 `responses.create` parameters).
PASS_THROUGH = frozenset({
    "access_programs", "context_management", "image", "include", "max_tool_calls", "moderation",
    "parallel_tool_calls", "prompt", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "safety_identifier", "service_tier", "temperature", "text", "tool_choice", "top_logprobs", "top_p",
    "truncation", "user",
})
# Read here and mapped onto the run.
HANDLED = frozenset({"model", "input", "instructions", "tools", "metadata", "max_output_tokens", "reasoning",
                     "background", "stream", "stream_options", "store", "previous_response_id"})
OUR_ADDITIONS = frozenset({"webhook_url", "deadline_seconds"})
REFUSED = {
    "conversation": "Conversations are provider-side state this service does not manage; chain turns with "
                    "'previous_response_id' instead.",
    "background_options": "'background_options' is not supported: every response runs in the background here.",
}


@dataclass
class CreateBody:
    request: RunRequest
    stream: bool
    background: bool


def parse_create_body(body: dict[str, Any]) -> CreateBody:
    for name in body:
        if name in REFUSED and body[name] is not None:
            raise bad_request(REFUSED[name], param=name, code="unsupported_parameter")
        if name not in PASS_THROUGH | HANDLED | OUR_ADDITIONS | set(REFUSED):
            raise bad_request(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if body.get("input") is None:
        raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    stream = flag_field(body, "stream", default=False)
    if body.get("stream_options") is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    if flag_field(body, "store", default=True) is False:
        raise bad_request("'store: false' cannot be honoured: this service keeps every response for its retention "
                          "period (that is what lets a run outlive its client).", param="store",
                          code="unsupported_parameter")
    request = RunRequest(input=read_input(body["input"]), stream=stream)
    read_model_options(body, request)
    request.tools = _tools(expect_field(body, "tools", (list,), "an array") or [])
    request.previous_run_id = expect_field(body, "previous_response_id", (str,), "a string")
    request.options = {name: body[name] for name in PASS_THROUGH if body.get(name) is not None}
    if stream and body.get("stream_options") is not None:
        request.options["stream_options"] = expect_field(body, "stream_options", (dict,), "an object")
    read_our_additions(body, request)
    return CreateBody(request, stream, flag_field(body, "background", default=False))


def _tools(value: list) -> list[dict[str, Any]]:
    """Any tool the provider knows (function, web_search, mcp, ...); a function tool needs its name."""
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(f"'tools[{index}]' must be an object with a 'type'.", param=f"tools[{index}]")
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            raise bad_request(f"'tools[{index}].name' is required for a function tool.", param=f"tools[{index}].name")
    return value
