"""End to end over real HTTP: start, poll by id and by token, cancel, deadline, sessions, idempotency."""

from __future__ import annotations

import time

from openai import OpenAI


def emulator_output_text(stack, response_id: str) -> str:
    client = OpenAI(base_url=stack.emulator.base_url, api_key="test")
    return client.responses.retrieve(response_id).output_text


def test_quick_run_answers_200_with_no_token(stack):
    response = stack.start("instant", metadata={"emulator_duration_ms": "0"})
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "completed" and run["continuation_token"] is None
    assert run["output_text"] == emulator_output_text(stack, run["provider_response_id"])


def test_background_run_202_then_poll_by_id_and_by_token(stack):
    response = stack.start("long one", metadata={"emulator_duration_ms": "2500"})
    assert response.status_code == 202
    run = response.json()
    assert response.headers["location"] == f"/api/runs/{run['id']}"
    assert int(response.headers["retry-after"]) >= 1
    assert run["status"] in ("queued", "in_progress") and run["continuation_token"]
    assert run["output_text"] is None

    by_id = stack.get(f"/api/runs/{run['id']}")
    assert by_id.status_code == 200 and by_id.json()["id"] == run["id"]
    assert "retry-after" in by_id.headers

    # The documented client loop: while the token is not None, wait and poll with the token.
    token, polls = run["continuation_token"], 0
    while token is not None:
        time.sleep(0.5)
        polled = stack.post("/api/runs", {"continuation_token": token})
        run = polled.json()
        assert polled.status_code == (202 if run["continuation_token"] else 200), run  # 200 exactly when it ended
        token, polls = run["continuation_token"], polls + 1
        assert polls < 60
    assert polled.status_code == 200
    assert run["status"] == "completed" and run["completed_at"] >= run["created_at"]
    provider = OpenAI(base_url=stack.emulator.base_url, api_key="test").responses.retrieve(run["provider_response_id"])
    assert run["output_text"] == provider.output_text
    assert run["usage"]["output_tokens"] == provider.usage.output_tokens > 0
    assert stack.get(f"/api/runs/{run['id']}").json()["output_text"] == run["output_text"]


def test_prefer_wait_returns_the_result_inline(stack):
    response = stack.post(
        "/api/runs", {"input": "quick", "metadata": {"emulator_duration_ms": "800"}}, headers={"Prefer": "wait=4"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "completed"


def test_failed_and_incomplete_outcomes_are_reported(stack):
    failed = stack.wait(
        stack.start("x", metadata={"emulator_outcome": "failed", "emulator_duration_ms": "500"}).json()["id"]
    )
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error", failed["error"]
    assert "emulator_outcome=failed" in failed["error"]["message"]  # the provider's own error, passed on
    incomplete = stack.wait(
        stack.start("x", metadata={"emulator_outcome": "incomplete", "emulator_duration_ms": "500"}).json()["id"]
    )
    assert incomplete["status"] == "incomplete"
    assert incomplete["incomplete_details"]["reason"] == "max_output_tokens"


def test_cancel_stops_the_provider_run_and_is_idempotent(stack):
    run = stack.start("cancel me", metadata={"emulator_duration_ms": "20000"}).json()
    cancelled = stack.post(f"/api/runs/{run['id']}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["continuation_token"] is None
    assert stack.provider_responses(run["id"])[0]["status"] == "cancelled"
    again = stack.post(f"/api/runs/{run['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    # The poller must not resurrect it.
    time.sleep(2.5)
    assert stack.get(f"/api/runs/{run['id']}").json()["status"] == "cancelled"


def test_cancel_of_a_finished_run_returns_it_unchanged(stack):
    run = stack.start("done", metadata={"emulator_duration_ms": "0"}).json()
    response = stack.post(f"/api/runs/{run['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "completed"


def test_deadline_cancels_at_the_provider_and_ends_expired(stack):
    run = stack.start("slow", deadline_seconds=2, metadata={"emulator_duration_ms": "60000"}).json()
    final = stack.wait(run["id"], timeout=30)
    assert final["status"] == "expired"
    assert final["error"]["code"] == "deadline_exceeded"
    assert stack.provider_responses(run["id"])[0]["status"] == "cancelled"


def test_sessions_chain_previous_response_ids(stack):
    created = stack.post("/api/sessions")
    assert created.status_code == 201
    session_id = created.json()["id"]
    first = stack.wait(
        stack.start("first turn", session_id=session_id, metadata={"emulator_duration_ms": "300"}).json()["id"]
    )
    second = stack.wait(
        stack.start("second turn", session_id=session_id, metadata={"emulator_duration_ms": "300"}).json()["id"]
    )
    second_provider = stack.provider_responses(second["id"])[0]
    assert second_provider["previous_response_id"] == first["provider_response_id"]
    session = stack.get(f"/api/sessions/{session_id}").json()
    assert [r["id"] for r in session["runs"]] == [first["id"], second["id"]]
    assert session["last_response_id"] == second["provider_response_id"]


def test_a_session_runs_one_run_at_a_time(stack):
    session_id = stack.post("/api/sessions").json()["id"]
    running = stack.start("long", session_id=session_id, metadata={"emulator_duration_ms": "5000"}).json()
    busy = stack.start("another", session_id=session_id)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
    stack.post(f"/api/runs/{running['id']}/cancel")
    assert stack.start("after cancel", session_id=session_id, metadata={"emulator_duration_ms": "0"}).status_code == 200


def test_requires_action_then_continue_in_the_session(stack):
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    session_id = stack.post("/api/sessions").json()["id"]
    run = stack.wait(
        stack.start(
            "call:get_weather please", session_id=session_id, tools=tools, metadata={"emulator_duration_ms": "300"}
        ).json()["id"]
    )
    assert run["status"] == "requires_action" and run["continuation_token"] is None
    calls = run["required_action"]["calls"]
    assert calls and calls[0]["name"] == "get_weather"
    follow = stack.wait(
        stack.start(
            [{"type": "function_call_output", "call_id": calls[0]["call_id"], "output": '{"temp": 21}'}],
            session_id=session_id,
            tools=tools,
            metadata={"emulator_duration_ms": "300"},
        ).json()["id"]
    )
    assert follow["status"] == "completed" and follow["output_text"]
    assert stack.provider_responses(follow["id"])[0]["previous_response_id"] == run["provider_response_id"]


def test_idempotency_key_returns_the_same_run_without_a_second_create(stack):
    body = {"input": "once", "metadata": {"emulator_duration_ms": "1000", "case": "idem"}}
    headers = {"Idempotency-Key": f"key-{time.time()}"}
    first = stack.post("/api/runs", body, headers=headers)
    second = stack.post("/api/runs", body, headers=headers)
    assert first.json()["id"] == second.json()["id"]
    assert len(stack.provider_responses(first.json()["id"])) == 1
    other = stack.post("/api/runs", {**body, "input": "different"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_unknown_run_and_session_are_404(stack):
    for path in (
        "/api/runs/run_0000000000000000deadbeef",
        "/api/sessions/sess_000000000000000000000000",
        "/api/runs/not-a-run-id",
    ):
        response = stack.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_health_details_report_configuration_without_secrets(stack):
    response = stack.get("/api/health/details", headers={"x-functions-key": stack.local.master_key})
    assert response.status_code == 200
    text = response.text
    checks = response.json()["checks"]
    assert checks["storage"] == "ok" and checks["backend"] == {
        "run_backend": "background",
        "executor_api": "chat_completions",
    }
    for name in ("RUN_TOKEN_KEY", "WEBHOOK_SIGNING_SECRETS", "RESPONSES_API_KEYS"):
        for value in stack.env[name].split():
            assert value.rpartition(":")[2] not in text
