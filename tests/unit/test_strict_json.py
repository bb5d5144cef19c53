"""Strict, bounded JSON (shared.strict_json) and the checks at the door of both APIs: every hostile body is a
400 naming the problem and the field, never an exception the handler did not expect."""

from __future__ import annotations

import json
import sys
import time

import pytest

from shared.api.bodies import parse_json_body
from shared.api.responses_requests import parse_create_body
from shared.api.run_requests import parse_run_body
from shared.errors import InvalidRequest
from shared.strict_json import MAX_DEPTH, JsonRefused, loads


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize(
    "raw, param, says",
    [
        (b'{"temperature": NaN}', "temperature", "NaN is not a finite number"),
        (
            b'{"input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "w": Infinity}]}]}',
            "input[0].content[0].w",
            "Infinity",
        ),
        (b'{"a": [1, {"b": -Infinity}]}', "a[1].b", "-Infinity"),
        (b'{"max_output_tokens": 1e400}', "max_output_tokens", "1e400 is not a finite number"),
        (b'{"input": "a", "input": "b"}', "input", "appears more than once"),
        (b'{"metadata": {"k": "1", "k": "2"}}', "metadata.k", "appears more than once"),
        (b'{"input": "\\ud800"}', "input", "lone UTF-16 surrogate"),
        (b'{"instructions": "ok \\udfff"}', "instructions", "lone UTF-16 surrogate"),
        (b'{"input": "\\udc00\\ud800"}', "input", "lone UTF-16 surrogate"),  # a pair in the wrong order
        (b'{"metadata": {"\\ud800": "v"}}', "metadata.\\ud800", "A key holds"),
        (b'{"input": [{"role": "user", "content": "x\\ud83d"}]}', "input[0].content", "surrogate"),
        (b'{"tools": ' + nested(5000) + b"}", "tools", f"deeper than {MAX_DEPTH} levels"),
        (nested(5000), None, "deeper than"),
        (b'{"a": ' + nested(MAX_DEPTH) + b"}", "a", "deeper than"),
        (b"\xef\xbb\xbf{}", None, "byte order mark"),
        (b'{"input": "\xff"}', None, "not UTF-8: byte 11"),
        ('{"input": "é"}'.encode("utf-16"), None, "not UTF-8"),
        (b'{"input": "caf\xe9"}', None, "not UTF-8"),  # Latin-1
        (b'{"n": 1' + b"0" * 5000 + b"}", None, "not valid JSON"),
        (b'{"input": "x",}', None, "not valid JSON"),
    ],
)
def test_hostile_json_is_refused_naming_the_problem_and_the_field(raw, param, says):
    with pytest.raises(JsonRefused) as refused:
        loads(raw)
    assert says in refused.value.message and refused.value.param == param
    json.dumps(refused.value.message).encode("utf-8")  # the answer itself can be sent (no lone surrogate)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input": "\\ud83d\\ude00 and \\\\ud800"}',  # a real pair, and an escaped backslash before "ud800"
        b'{"text": "' + b"[" * 5000 + b'{"}',  # brackets inside a string are text
        b'{"a": "\\"[[[["}',  # an escaped quote does not end the string
        b'{"ok": ' + nested(MAX_DEPTH - 1) + b"}",  # exactly the limit
        b'{"n": [0.5, -0.0, 1e308, 12345678901234567890]}',
        b'{"a": 1, "b": {"a": 2}}',  # the same key in two objects
    ],
)
def test_json_the_service_takes_is_accepted(raw):
    assert loads(raw) == json.loads(raw)


def test_the_depth_check_is_linear_and_never_recurses():
    deep = nested(500_000)  # a 1 MB body: json.loads alone would raise RecursionError at ~1,000 levels
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)  # nothing on the way to the refusal may recurse (json.loads would need ~1,000)
    try:
        started = time.process_time()
        with pytest.raises(JsonRefused):
            loads(deep)
        elapsed = time.process_time() - started
    finally:
        sys.setrecursionlimit(limit)
    wide = b'{"a": [' + b",".join([b'"x"'] * 200_000) + b'], "deep": ' + nested(100) + b"}"
    with pytest.raises(JsonRefused) as refused:
        loads(wide)
    assert refused.value.param == "deep"
    assert elapsed < 2.0  # a loaded 2-core machine: about 0.1 s alone


def test_the_body_parser_answers_a_400_with_the_field():
    with pytest.raises(InvalidRequest) as refused:
        parse_json_body(b'{"input": "x", "temperature": NaN}', 1024)
    assert (refused.value.code, refused.value.param) == ("invalid_json", "temperature")


@pytest.mark.parametrize(
    "items, param",
    [
        ([{"role": "user", "content": 7}], "input[0].content"),
        ([{"role": ["x"], "content": "hi"}], "input[0].role"),
        ([{"role": "robot", "content": "hi"}], "input[0].role"),
        (
            [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": 7}]}],
            "input[0].content[0].text",
        ),
        ([{"type": "message", "role": "user", "content": [7]}], "input[0].content[0]"),
        ([{"type": "message", "role": "user", "content": [{"text": "no type"}]}], "input[0].content[0]"),
        ([{"role": "assistant", "content": [{"type": "output_text", "text": None}]}], "input[0].content[0].text"),
        (
            [{"role": "user", "content": [{"type": "input_image", "image_url": {"url": "x"}}]}],
            "input[0].content[0].image_url",
        ),
        ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}], "input[0].arguments"),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
        ([{"type": "function_call_output", "call_id": "c", "output": 5}], "input[0].output"),
        (
            [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": 1}]}],
            "input[0].output[0].text",
        ),
        ([{"type": "item_reference", "id": 3}], "input[0].id"),
        ([{"type": 7}], "input[0]"),
        ([{"role": "user", "content": "x", "id": 5}], "input[0].id"),
    ],
)
def test_input_items_of_the_wrong_shape_are_refused_by_both_apis(items, param):
    for parse in (parse_run_body, parse_create_body):
        with pytest.raises(InvalidRequest) as refused:
            parse({"input": items})
        assert refused.value.param == param, parse


def test_input_items_of_the_right_shape_and_unknown_types_pass():
    items = [
        {"role": "developer", "content": "be brief"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "https://x/i.png", "detail": "auto"},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "item_reference", "id": "msg_1"},
    ]
    assert parse_run_body({"input": items}).request.input == items
    assert parse_create_body({"input": items}).request.input == items


@pytest.mark.parametrize(
    "tool, param",
    [
        ({"type": "function", "name": "f", "parameters": "x"}, "tools[0].parameters"),
        ({"type": "function", "name": "f", "strict": "yes"}, "tools[0].strict"),
        ({"type": "function", "name": "f", "description": 5}, "tools[0].description"),
        ({"type": "function", "name": ""}, "tools[0].name"),
    ],
)
def test_function_tools_of_the_wrong_shape_are_refused_by_both_apis(tool, param):
    for parse in (parse_run_body, parse_create_body):
        with pytest.raises(InvalidRequest) as refused:
            parse({"input": "x", "tools": [tool]})
        assert refused.value.param == param, parse


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("temperature", "hot", "temperature"),
        ("temperature", 3, "temperature"),
        ("top_p", True, "top_p"),
        ("parallel_tool_calls", "no", "parallel_tool_calls"),
        ("tool_choice", 7, "tool_choice"),
        ("tool_choice", {"name": "f"}, "tool_choice"),
        ("tool_choice", {"type": "function"}, "tool_choice.name"),
        ("text", "json", "text"),
        ("text", {"format": "json"}, "text.format"),
        ("text", {"format": {"type": "json_schema", "name": "n", "schema": []}}, "text.format.schema"),
        ("include", ["a", 1], "include"),
        ("top_logprobs", 99, "top_logprobs"),
        ("user", 5, "user"),
    ],
)
def test_passed_through_parameters_of_the_wrong_type_are_refused_by_the_facade(field, value, param):
    with pytest.raises(InvalidRequest) as refused:
        parse_create_body({"input": "x", field: value})
    assert refused.value.param == param
