"""Opt-in (CONFORMANCE_TRANSFORMERS=1): the executor's flows against `transformers serve` running a tiny model
built offline (tiny_model.py), in .local/venv-transformers (torch and transformers, built on first use; too heavy
for CI). The model's text is noise, so what is checked is the protocol: start and poll, a stream resumed with
`starting_after`, cancel, a three-turn `previous_response_id` chain through a real chat template, and the token
cap ending the run `incomplete`."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import WORK_DIR, executor_stack, wait_response
from .servers import TransformersServer

pytestmark = pytest.mark.skipif(
    os.environ.get("CONFORMANCE_TRANSFORMERS") != "1",
    reason="opt-in: CONFORMANCE_TRANSFORMERS=1 (installs torch into its own venv)",
)


@pytest.fixture(scope="module")
def served():
    server = TransformersServer(WORK_DIR / "transformers").start()
    try:
        with executor_stack("conformance-transformers", server) as stack:
            yield server, stack
    finally:
        server.stop()


@pytest.fixture
def base_url(served) -> str:
    return f"{served[1].host.base_url}/api/v1"


def test_a_background_start_is_polled_by_its_token_to_the_end(served):
    _, stack = served
    run = stack.start("hello queue", background=True, max_output_tokens=40).json()
    while run["continuation_token"] is not None:
        time.sleep(0.3)
        run = stack.post("/api/runs", {"continuation_token": run["continuation_token"]}).json()
    assert run["status"] in ("completed", "incomplete") and run["output_text"], run
    assert run["backend"] == "executor" and run["usage"]["output_tokens"] > 0


def test_a_stream_broken_in_the_middle_resumes_with_starting_after(client, served):
    head, stream = (
        [],
        client.responses.create(
            model=served[0].model, input="hello", stream=True, background=True, max_output_tokens=300
        ),
    )
    for event in stream:
        head.append(event)
        if sum(e.type == "response.output_text.delta" for e in head) >= 5:
            break
    stream.close()
    tail = list(client.responses.retrieve(head[0].response.id, stream=True, starting_after=head[-1].sequence_number))
    events = head + tail
    seqs = [e.sequence_number for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    final = tail[-1].response
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text


def test_cancel_mid_generation(client, served):
    stream = client.responses.create(
        model=served[0].model, input="go on", stream=True, background=True, max_output_tokens=3000
    )
    first = next(iter(stream))
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    stream.close()
    assert client.responses.cancel(first.response.id).status == "cancelled"
    assert wait_response(client, first.response.id).status == "cancelled"


def test_a_previous_response_id_chain_of_three_turns(client, served):
    previous = None
    for turn in range(3):
        created = client.responses.create(
            model=served[0].model,
            input=f"turn {turn}",
            previous_response_id=previous,
            background=True,
            max_output_tokens=20,
        )
        final = wait_response(client, created.id)
        assert final.status in ("completed", "incomplete") and final.output_text
        previous = final.id


def test_the_token_cap_ends_the_run_incomplete(client, served):
    final = wait_response(
        client, client.responses.create(model=served[0].model, input="hello", background=True, max_output_tokens=5).id
    )
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 5
