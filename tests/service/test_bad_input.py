"""Every bad input gets a 4xx JSON error naming the problem, and nothing is written."""

from __future__ import annotations

import json

import pytest
from azure.data.tables import TableClient


def run_count(stack) -> int:
    table = TableClient.from_connection_string(stack.connection_string, "runs")
    return sum(1 for _ in table.list_entities(select=["PartitionKey"]))


BAD_BODIES = [
    (b"{not json", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    (json.dumps({}).encode(), 400, "invalid_request", "input"),
    (json.dumps({"input": ""}).encode(), 400, "invalid_request", "input"),
    (json.dumps({"input": 42}).encode(), 400, "invalid_request", "input"),
    (json.dumps({"input": [42]}).encode(), 400, "invalid_request", "input[0]"),
    (json.dumps({"input": "x", "model": 7}).encode(), 400, "invalid_request", "model"),
    (json.dumps({"input": "x", "background": "yes"}).encode(), 400, "invalid_request", "background"),
    (json.dumps({"input": "x", "max_output_tokens": True}).encode(), 400, "invalid_request", "max_output_tokens"),
    (json.dumps({"input": "x", "max_output_tokens": 0}).encode(), 400, "invalid_request", "max_output_tokens"),
    (json.dumps({"input": "x", "metadata": {"a": 1}}).encode(), 400, "invalid_request", "metadata.a"),
    (
        json.dumps({"input": "x", "metadata": {f"k{i}": "v" for i in range(16)}}).encode(),
        400,
        "invalid_request",
        "metadata",
    ),
    (json.dumps({"input": "x", "tools": [{"type": "web_search"}]}).encode(), 400, "invalid_request", "tools[0]"),
    (json.dumps({"input": "x", "reasoning": {"effort": "max"}}).encode(), 400, "invalid_request", "reasoning.effort"),
    (json.dumps({"input": "x", "surprise": 1}).encode(), 400, "unknown_field", "surprise"),
    (json.dumps({"input": "x", "session_id": "../etc"}).encode(), 400, "invalid_request", "session_id"),
    (json.dumps({"input": "x", "continuation_token": "abc"}).encode(), 400, "invalid_request", "input"),
    (json.dumps({"continuation_token": "abc.def"}).encode(), 400, "invalid_token", "continuation_token"),
    (
        json.dumps({"input": "x", "webhook_url": "ftp://example.com/hook"}).encode(),
        400,
        "invalid_webhook_url",
        "webhook_url",
    ),
    (
        json.dumps({"input": "x", "webhook_url": "http://169.254.169.254/latest"}).encode(),
        400,
        "invalid_webhook_url",
        "webhook_url",
    ),
    (
        json.dumps({"input": "x", "webhook_url": "http://168.63.129.16/"}).encode(),
        400,
        "invalid_webhook_url",
        "webhook_url",
    ),
    (
        json.dumps({"input": "x", "webhook_url": "http://user:pw@example.com/"}).encode(),
        400,
        "invalid_webhook_url",
        "webhook_url",
    ),
    (json.dumps({"input": "x" * (1024 * 1024 + 1)}).encode(), 413, "request_too_large", None),
]


@pytest.mark.parametrize("raw,status,code,param", BAD_BODIES, ids=[f"case{i}" for i in range(len(BAD_BODIES))])
def test_bad_run_requests_are_refused_with_a_named_reason(stack, raw, status, code, param):
    before = run_count(stack)
    response = stack.client.post("/api/runs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["param"] == param
    assert run_count(stack) == before


def test_a_tampered_token_is_refused(stack):
    run = stack.start("x", metadata={"emulator_duration_ms": "3000"}).json()
    token = run["continuation_token"]
    body, mac = token.split(".")
    forged_body = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (f"{forged_body}.{mac}", f"{body}.{mac[:-1]}", token + "x"):
        response = stack.post("/api/runs", {"continuation_token": bad})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_token"


def test_a_token_from_another_key_reads_nothing(stack):
    from shared.runs.tokens import TokenCodec

    run = stack.start("x", metadata={"emulator_duration_ms": "0"}).json()
    forged = TokenCodec(b"not-the-service-key-but-long-enough-xx").encode(run["id"])
    response = stack.post("/api/runs", {"continuation_token": forged})
    assert response.status_code == 400 and run["id"] not in response.text  # nothing of the run leaks
    assert response.json()["error"]["code"] == "invalid_token", response.text


def test_bad_stream_positions_and_foreign_tokens_are_400(stack):
    a = stack.start("a", metadata={"emulator_duration_ms": "0"}).json()
    b = stack.start("b", metadata={"emulator_duration_ms": "3000"}).json()
    assert stack.get(f"/api/runs/{a['id']}/stream", params={"starting_after": "x"}).status_code == 400
    assert stack.get(f"/api/runs/{a['id']}/stream", params={"starting_after": "-5"}).status_code == 400
    foreign = stack.get(f"/api/runs/{a['id']}/stream", params={"continuation_token": b["continuation_token"]})
    assert foreign.status_code == 400 and foreign.json()["error"]["param"] == "continuation_token"


def test_session_creation_rejects_unknown_fields_and_unknown_sessions(stack):
    unknown_field = stack.post("/api/sessions", {"name": "x"})
    assert unknown_field.status_code == 400 and unknown_field.json()["error"]["param"] == "name", unknown_field.text
    before = run_count(stack)
    response = stack.start("x", session_id="sess_doesnotexist")
    assert response.status_code == 404 and "sess_doesnotexist" in response.json()["error"]["message"], response.text
    assert run_count(stack) == before  # a refused start leaves no run


def test_provider_unavailable_is_503_with_retry_after_and_no_run(stack):
    # A 500: whether it created the response is unknown, so the start is refused (a 429/503 queues the run instead,
    # tests/service/test_admission.py).
    before = run_count(stack)
    stack.emulator_config(fault_500_rate=1.0, fault_endpoints="create")
    try:
        response = stack.start("x")
    finally:
        stack.emulator_config(fault_500_rate=0.0, fault_endpoints="create,retrieve,stream,cancel,delete,input_items")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert run_count(stack) == before
