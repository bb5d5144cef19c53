"""Validation of the facade's `POST /responses` bodies (OpenAI's Responses API, as openai 3.57 sends it).

What the provider accepts is passed through verbatim, once its type is checked (PASS_THROUGH_TYPES: a wrong one
is a 400 naming it, whichever backend runs the request); what the service cannot honour is refused with a 400
naming the parameter, never dropped: `conversation` (provider-side state), `background_options`, `store: false`
(the service keeps every run: that is what makes it durable), `stream_options` without `stream`, and any
parameter the Responses API does not have. On executor runs the parameters go to the model API under its names,
and one it has no equivalent for is refused the same way when the run starts, before anything is written
(shared/executor/parameters.py). Our additions ride in the body (`extra_body` in the SDK): `webhook_url` and
`deadline_seconds`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import invalid as bad_request
from ..runs.requests import RunRequest
from .item_checks import check_function_tool
from .run_requests import expect_field, flag_field, read_input, read_model_options, read_our_additions

# Passed to the provider as they are (openai 3.57 `responses.create` parameters).
PASS_THROUGH = frozenset(
    {
        "access_programs",
        "context_management",
        "image",
        "include",
        "max_tool_calls",
        "moderation",
        "parallel_tool_calls",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "temperature",
        "text",
        "tool_choice",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
# Read here and mapped onto the run.
HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "metadata",
        "max_output_tokens",
        "reasoning",
        "background",
        "stream",
        "stream_options",
        "store",
        "previous_response_id",
    }
)
OUR_ADDITIONS = frozenset({"webhook_url", "deadline_seconds"})
REFUSED = {
    "conversation": "Conversations are provider-side state this service does not manage; chain turns with "
    "'previous_response_id' instead.",
    "background_options": "'background_options' is not supported: every response runs in the background here.",
}


# The types (and OpenAI's ranges) of the parameters passed through, checked here so that a wrong one is a 400
# naming it whichever backend runs the request (the executor reads several of them): name -> (types, what the
# message says it must be, a test of the value or None).
_STRING = ((str,), "a string", None)
PASS_THROUGH_TYPES: dict[str, tuple[tuple[type, ...], str, Callable[[Any], bool] | None]] = {
    "temperature": ((int, float), "a number from 0 to 2", lambda value: 0 <= value <= 2),
    "top_p": ((int, float), "a number from 0 to 1", lambda value: 0 <= value <= 1),
    "top_logprobs": ((int,), "an integer from 0 to 20", lambda value: 0 <= value <= 20),
    "max_tool_calls": ((int,), "a positive integer", lambda value: value >= 1),
    "parallel_tool_calls": ((bool,), "true or false", None),
    "tool_choice": ((str, dict), "a string or an object", None),
    "text": ((dict,), "an object", None),
    "prompt": ((dict,), "an object", None),
    "include": ((list,), "a list of strings", lambda value: all(isinstance(item, str) for item in value)),
    "service_tier": _STRING,
    "user": _STRING,
    "safety_identifier": _STRING,
    "prompt_cache_key": _STRING,
    "prompt_cache_retention": _STRING,
    "truncation": _STRING,
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
        raise bad_request(
            "'store: false' cannot be honoured: this service keeps every response for its retention "
            "period (that is what lets a run outlive its client).",
            param="store",
            code="unsupported_parameter",
        )
    request = RunRequest(input=read_input(body["input"]), stream=stream)
    read_model_options(body, request)
    request.tools = _tools(expect_field(body, "tools", (list,), "an array") or [])
    request.previous_run_id = expect_field(body, "previous_response_id", (str,), "a string")
    _check_pass_through(body)
    request.options = {name: body[name] for name in PASS_THROUGH if body.get(name) is not None}
    if stream and body.get("stream_options") is not None:
        request.options["stream_options"] = expect_field(body, "stream_options", (dict,), "an object")
    read_our_additions(body, request)
    return CreateBody(request, stream, flag_field(body, "background", default=False))


def _tools(value: list[Any]) -> list[dict[str, Any]]:
    """Any tool the provider knows (function, web_search, mcp, ...); a function tool needs its name."""
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(f"'tools[{index}]' must be an object with a 'type'.", param=f"tools[{index}]")
        if tool["type"] == "function":
            check_function_tool(tool, f"tools[{index}]")
    return value


def _check_pass_through(body: dict[str, Any]) -> None:
    for name, (kinds, what, test) in PASS_THROUGH_TYPES.items():
        value = expect_field(body, name, kinds, what)
        if value is not None and test is not None and not test(value):
            raise bad_request(f"'{name}' must be {what}.", param=name)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _typed_object(choice, "tool_choice")
        if choice["type"] == "function" and not isinstance(choice.get("name"), str):
            raise bad_request("'tool_choice.name' is required and must be a string.", param="tool_choice.name")
    text_format = (body.get("text") or {}).get("format")
    if text_format is not None:
        _typed_object(text_format, "text.format")
        if text_format["type"] == "json_schema":
            if not isinstance(text_format.get("name"), str):
                raise bad_request("'text.format.name' is required and must be a string.", param="text.format.name")
            if not isinstance(text_format.get("schema"), dict):
                raise bad_request("'text.format.schema' must be a JSON schema object.", param="text.format.schema")
            if text_format.get("strict") is not None and not isinstance(text_format["strict"], bool):
                raise bad_request("'text.format.strict' must be true or false.", param="text.format.strict")


def _typed_object(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise bad_request(f"'{where}' must be an object with a 'type'.", param=where)
