import json

import pytest

from shared.api.bodies import parse_json_body
from shared.api.run_requests import parse_run_body
from shared.errors import InvalidRequest, PayloadTooLarge


def test_a_full_request_parses():
    request = parse_run_body(
        {
            "input": [{"role": "user", "content": "hi"}],
            "model": "m",
            "stream": True,
            "metadata": {"a": "b"},
            "max_output_tokens": 100,
            "deadline_seconds": 60,
            "tools": [{"type": "function", "name": "f"}],
            "reasoning": {"effort": "low"},
        }
    ).request
    assert request.stream and request.model == "m" and request.deadline_seconds == 60


def test_the_fingerprint_changes_with_the_body_and_only_with_it():
    def fingerprint(body):
        return parse_run_body(body).request.fingerprint()

    a = fingerprint({"input": "x", "metadata": {"k": "v"}})
    assert a == fingerprint({"metadata": {"k": "v"}, "input": "x"})
    assert a != fingerprint({"input": "y", "metadata": {"k": "v"}})


def test_the_body_limit_is_413():
    with pytest.raises(PayloadTooLarge):
        parse_json_body(b"x" * 2000, 1024)


@pytest.mark.parametrize(
    "field,value",
    [
        ("background", 1),
        ("stream", "true"),
        ("deadline_seconds", True),
        ("deadline_seconds", 0),
        ("metadata", {"bg_run_id": "x"}),
        ("webhook_url", "h" * 3000),
    ],
)
def test_wrong_types_name_the_field(field, value):
    with pytest.raises(InvalidRequest) as raised:
        parse_run_body({"input": "x", field: value})
    assert raised.value.param.startswith(field)


def test_a_token_poll_takes_nothing_else():
    assert parse_run_body({"continuation_token": "t"}).continuation_token == "t"
    with pytest.raises(InvalidRequest):
        parse_run_body(json.loads('{"continuation_token": "t", "model": "m"}'))


@pytest.mark.parametrize("effort", [[], {}, ["low"], 3])
def test_a_reasoning_effort_that_is_not_a_string_is_a_bad_request(effort):
    # Found by fuzzing: a list or object made `effort in REASONING_EFFORTS` raise (unhashable) -> 500.
    with pytest.raises(InvalidRequest) as raised:
        parse_run_body({"input": "x", "reasoning": {"effort": effort}})
    assert raised.value.param == "reasoning.effort"
