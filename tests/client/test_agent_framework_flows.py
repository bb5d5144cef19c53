"""The two flows of Agent Framework's background-responses documentation, written with this client:
polling with the last response's token, and a stream stopped and resumed from an update's token
(also from another process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest
from bgruns import AsyncClient

from .conftest import emulated, reference_events


async def test_polling_with_the_continuation_token_until_it_is_none(client, stack, capsys):
    session = await client.create_session()
    assert session.id.startswith("sess_")

    response = await client.run(
        "Explain relativity in two sentences.",
        session=session,
        options={"background": True, "metadata": emulated(2500, 240)},
    )
    assert response.continuation_token is not None  # started in the background, not finished
    assert response.status in ("queued", "in_progress") and response.text == ""
    polls = 0
    while response.continuation_token is not None:  # the documentation's loop (2 s there, 0.5 s here)
        await asyncio.sleep(0.5)
        response = await client.run(session=session, options={"continuation_token": response.continuation_token})
        polls += 1
    print(response.text)

    assert response.status == "completed" and polls >= 3
    assert len(response.text) == 240 and capsys.readouterr().out == response.text + "\n"
    assert response.session_id == session.id
    again = await client.get(response.run_id)
    assert again.text == response.text and again.continuation_token is None
    shown = await client.get_session(session)
    assert [run.run_id for run in shown.runs] == [response.run_id]


@pytest.mark.parametrize("stop_after_texts", [0, 5], ids=["first-update", "fifth-text-delta"])
async def test_a_stream_stopped_and_resumed_from_an_update_token_is_exact(client, stack, stop_after_texts):
    first_part, stopped_at, texts = [], None, 0
    async for update in client.run("Write a short story.", stream=True, options={"metadata": emulated(2500, 400)}):
        assert update.continuation_token  # every update carries one
        first_part.append(update.text)
        texts += bool(update.text)
        stopped_at = update
        if texts >= stop_after_texts:
            break  # the interruption
    if stop_after_texts == 0:
        assert stopped_at.type == "run.created" and stopped_at.sequence_number == 0 and stopped_at.text == ""

    rest, seqs, final = [], [], None
    async for update in client.run(stream=True, options={"continuation_token": stopped_at.continuation_token}):
        rest.append(update.text)
        seqs.append(update.sequence_number)
        if update.response is not None:
            final = update.response

    assert final is not None and final.status == "completed"
    assert "".join(first_part) + "".join(rest) == final.text and len(final.text) == 400
    reference = [seq for seq, _, _ in reference_events(stack.host.base_url, final.run_id)]
    assert seqs == [seq for seq in reference if seq > stopped_at.sequence_number]  # the very next one, no gaps


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    from bgruns import Client
    base_url, token, key = sys.argv[1], sys.argv[2], sys.argv[3]
    with Client(base_url, function_key=key) as client:
        for update in client.run(stream=True, options={"continuation_token": token}):
            print(json.dumps({"seq": update.sequence_number, "type": update.type, "text": update.text,
                              "final": update.response.text if update.response else None}), flush=True)
    assert "shared" not in sys.modules  # the client is its own distributable
""")


async def test_a_stream_resumes_exactly_in_a_new_process(client, stack, tmp_path):
    seen, last = [], None
    async for update in client.run("Tell me about queues.", stream=True, options={"metadata": emulated(3000, 400)}):
        seen.append(update.text)
        last = update
        if sum(bool(t) for t in seen) == 3:
            break
    token = last.continuation_token
    assert isinstance(token, str) and last.type == "output_text.delta"

    # The token is all the other process gets (persisted as text); cwd outside the repo, so `shared` is not importable.
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", RESUME_SCRIPT, stack.host.base_url, token, stack.function_key],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    final_text = lines[-1]["final"]
    assert lines[-1]["type"] == "run.completed" and final_text
    assert "".join(seen) + "".join(line["text"] for line in lines) == final_text
    reference = [seq for seq, _, _ in reference_events(stack.host.base_url, last.run_id)]
    assert [line["seq"] for line in lines] == [seq for seq in reference if seq > last.sequence_number]


async def test_non_background_run_returns_the_finished_run(stack):
    async with AsyncClient(stack.host.base_url, function_key=stack.function_key, poll_initial=0.2) as client:
        # background False: the server waits inline (bounded), the client polls the rest.
        response = await client.run(
            [{"role": "user", "content": "hi"}], options={"background": False, "metadata": emulated(1500, 50)}
        )
    assert response.status == "completed" and response.continuation_token is None and len(response.text) == 50


async def test_resuming_from_the_final_update_yields_nothing_more(client):
    updates = [u async for u in client.run("short", stream=True, options={"metadata": emulated(300, 50)})]
    assert updates[-1].is_final
    again = [u async for u in client.run(stream=True, options={"continuation_token": updates[-1].continuation_token})]
    assert again == []
