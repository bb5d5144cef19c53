"""The facade's HTTP-free parts: request parsing (pass through, refuse, never drop), the Response rendering and
the event format, input items; checked against OpenAI's published schemas."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from shared.api.responses_format import FINAL_EVENT_TYPE, ResponseRenderer, ResponsesEventFormat
from shared.api.responses_items import input_items, page
from shared.api.responses_requests import PASS_THROUGH, parse_create_body
from shared.errors import InvalidRequest
from shared.runs.model import Run
from shared.runs.relay import FINAL_EVENT_ID

from ..schemas import parse_sse, validate, validate_stream_event

USAGE = {
    "input_tokens": 3,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 2,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 5,
}
MESSAGE = {
    "type": "message",
    "id": "msg_1",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}],
}
PROVIDER = {
    "id": "resp_abc",
    "object": "response",
    "created_at": 1700000000,
    "status": "queued",
    "model": "m-2025",
    "instructions": None,
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "temperature": 0.3,
    "top_p": 1.0,
    "metadata": {"k": "v", "bg_run_id": "run_x"},
    "error": None,
    "incomplete_details": None,
    "usage": None,
    "background": True,
    "previous_response_id": "resp_prev",
}


def run(status="queued", **fields) -> Run:
    return Run(
        id="run_6b0d36927eeeb7d398b4ad8a",
        status=status,
        created_at=1700000000.5,
        model="m",
        request=fields.pop("request", {"input": "hello"}),
        metadata={"k": "v"},
        response_id="resp_abc",
        response=dict(PROVIDER),
        previous_run_id="run_6b0d36927eeeb7d398b4ad89",
        **fields,
    )


def test_every_sdk_parameter_is_passed_through_handled_or_refused():
    import inspect

    from openai.resources.responses.responses import Responses

    from shared.api.responses_requests import HANDLED, REFUSED

    sdk = set(inspect.signature(Responses.create).parameters) - {
        "self",
        "extra_headers",
        "extra_query",
        "extra_body",
        "timeout",
    }
    assert sdk <= PASS_THROUGH | HANDLED | set(REFUSED), sdk - (PASS_THROUGH | HANDLED | set(REFUSED))


def test_a_create_body_maps_onto_a_run_request():
    body = parse_create_body(
        {
            "model": "m",
            "input": "hi",
            "temperature": 0.1,
            "tool_choice": "none",
            "top_p": 0.5,
            "previous_response_id": "run_1",
            "background": True,
            "webhook_url": "https://h/x",
            "deadline_seconds": 60,
            "stream": True,
            "stream_options": {"include_obfuscation": False},
            "tools": [{"type": "web_search"}],
            "store": True,
        }
    )
    request = body.request
    assert body.background and body.stream and request.previous_run_id == "run_1" and request.deadline_seconds == 60
    assert request.options == {
        "temperature": 0.1,
        "tool_choice": "none",
        "top_p": 0.5,
        "stream_options": {"include_obfuscation": False},
    }
    assert request.tools == [{"type": "web_search"}] and request.webhook_url == "https://h/x"
    assert not parse_create_body({"input": "hi"}).background  # the SDK's default: wait for the result


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "store": False}, "store"),
        ({"input": "x", "stream_options": {}}, "stream_options"),
        ({"input": "x", "frobnicate": 1}, "frobnicate"),
        ({"input": "x", "background_options": {"completion_window": "2h"}}, "background_options"),
        ({"model": "m"}, "input"),
        ({"input": "x", "temperature": None, "metadata": {"bg_run_id": "x"}}, "metadata.bg_run_id"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "background": "yes"}, "background"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(body, param):
    with pytest.raises(InvalidRequest) as refused:
        parse_create_body(body)
    assert refused.value.param == param


@pytest.mark.parametrize("status, shown", [("queued", "queued"), ("in_progress", "in_progress")])
def test_a_running_run_is_the_providers_create_reply_with_our_id(status, shown):
    body = ResponseRenderer().render(run(status))
    validate("Response", body)
    assert body["id"] == "run_6b0d36927eeeb7d398b4ad8a" and body["status"] == shown and body["output"] == []
    assert body["metadata"] == {"k": "v"} and body["previous_response_id"] == "run_6b0d36927eeeb7d398b4ad89"
    assert body["model"] == "m-2025" and body["temperature"] == 0.3 and "resp_abc" not in json.dumps(body)


@pytest.mark.parametrize(
    "status, result, shown, check",
    [
        (
            "completed",
            {
                "output": [MESSAGE],
                "usage": USAGE,
                "response": {**PROVIDER, "status": "completed", "completed_at": 1700000009},
            },
            "completed",
            lambda b: b["completed_at"] == 1700000009 and b["usage"] == USAGE,
        ),
        (
            "requires_action",
            {
                "output": [
                    {
                        "type": "function_call",
                        "id": "fc_1",
                        "call_id": "c",
                        "name": "f",
                        "arguments": "{}",
                        "status": "completed",
                    }
                ],
                "usage": USAGE,
            },
            "completed",
            lambda b: b["output"][0]["type"] == "function_call",
        ),
        (
            "failed",
            {"output": [], "error": {"code": "start_interrupted", "message": "cut"}},
            "failed",
            lambda b: b["error"] == {"code": "server_error", "message": "start_interrupted: cut"},
        ),
        (
            "expired",
            {"output": [], "error": {"code": "deadline_exceeded", "message": "late"}},
            "failed",
            lambda b: b["error"]["message"].startswith("deadline_exceeded:"),
        ),
        (
            "incomplete",
            {"output": [MESSAGE], "incomplete_details": {"reason": "max_output_tokens"}, "usage": USAGE},
            "incomplete",
            lambda b: b["incomplete_details"] == {"reason": "max_output_tokens"},
        ),
        ("cancelled", {"output": [], "error": None}, "cancelled", lambda b: b["error"] is None and b["usage"] is None),
    ],
)
def test_an_ended_run_is_shown_as_openai_reports_it(status, result, shown, check):
    body = ResponseRenderer().render(run(status, result=result, completed_at=1700000010.0))
    validate("Response", body)
    assert body["status"] == shown and check(body)


def test_a_run_without_a_kept_provider_reply_still_renders_a_valid_response():
    bare = Run(
        id="run_6b0d36927eeeb7d398b4ad8a",
        status="queued",
        created_at=1.5,
        model="m",
        request={"input": "x", "instructions": "be brief", "tools": []},
    )
    body = ResponseRenderer().render(bare)
    validate("Response", body)
    assert body["instructions"] == "be brief" and body["model"] == "m"


def test_events_are_the_providers_with_our_id_and_our_final_event_ends_a_cancelled_run():
    fmt = ResponsesEventFormat(ResponseRenderer())
    event = SimpleNamespace(
        model_dump=lambda **_: {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**PROVIDER, "output": []},
        }
    )
    [message] = parse_sse(fmt.event(run(), event))
    data = json.loads(message.data)
    validate_stream_event(data)
    assert message.event == "response.created" and data["response"]["id"] == "run_6b0d36927eeeb7d398b4ad8a"
    assert data["response"]["metadata"] == {"k": "v"} and "resp_abc" not in message.data
    [final] = parse_sse(fmt.final(run("cancelled", result={"output": []}), FINAL_EVENT_ID, None))
    data = json.loads(final.data)
    validate_stream_event(data)
    assert final.event == FINAL_EVENT_TYPE["cancelled"] == "response.incomplete"
    assert data["response"]["status"] == "cancelled" and data["sequence_number"] == FINAL_EVENT_ID
    assert parse_sse(fmt.end(run(), FINAL_EVENT_ID)) == [] and parse_sse(fmt.reconnect(run(), 5)) == []


def test_a_failed_run_has_the_same_openai_error_code_on_the_stream_as_on_get():
    # Found by issue 21: the stream's response.failed carried our own codes (provider_error, provider_unavailable)
    # while GET rendered the same run as server_error.
    fmt = ResponsesEventFormat(ResponseRenderer())
    error = {"code": "provider_unavailable", "message": "The model provider kept failing (6 tries): down"}
    failed = run("failed", result={"output": [], "error": error})
    event = SimpleNamespace(
        model_dump=lambda **_: {
            "type": "response.failed",
            "sequence_number": 9,
            "response": {**PROVIDER, "status": "failed", "output": [], "error": error},
        }
    )
    [message] = parse_sse(fmt.event(failed, event))
    streamed = json.loads(message.data)
    validate_stream_event(streamed)
    assert (
        streamed["response"]["error"]
        == ResponseRenderer().render(failed)["error"]
        == {"code": "server_error", "message": "provider_unavailable: The model provider kept failing (6 tries): down"}
    )
    rate_limited = {"code": "rate_limit_exceeded", "message": "slow down"}  # one of OpenAI's own: kept
    event = SimpleNamespace(
        model_dump=lambda **_: {
            "type": "response.failed",
            "sequence_number": 9,
            "response": {**PROVIDER, "status": "failed", "output": [], "error": rate_limited},
        }
    )
    assert json.loads(parse_sse(fmt.event(failed, event))[0].data)["response"]["error"] == rate_limited


def test_input_items_are_listed_with_ids_statuses_and_pages():
    stored = run(
        request={
            "input": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"type": "function_call_output", "call_id": "c", "output": "{}"},
            ]
        }
    )
    items = input_items(stored)
    listed = page(items, after=None, limit=20, order="desc")
    validate("ResponseItemList", listed)
    assert [i["type"] for i in listed["data"]] == ["function_call_output", "message", "message"]
    assert input_items(stored) == items  # stable ids: `after` works on every read
    second = page(items, after=items[0]["id"], limit=1, order="asc")
    assert second["data"] == [items[1]] and second["has_more"]
    assert page(items, after=items[2]["id"], limit=5, order="asc")["data"] == []
    with pytest.raises(InvalidRequest):
        page(items, after="msg_nope", limit=5, order="asc")
    simple = page(input_items(run()), after=None, limit=20, order="desc")
    validate("ResponseItemList", simple)
    assert simple["data"][0]["content"] == [{"type": "input_text", "text": "hello"}]
