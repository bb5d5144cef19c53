"""Background create -> poll -> terminal, response shapes, outcomes, 404s (official SDK, sync + async)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from .conftest import admin, record

TERMINAL = {"completed", "failed", "cancelled", "incomplete"}


def poll(client, resp_id: str, deadline_s: float = 20):
    end = time.monotonic() + deadline_s
    seen = []
    while True:
        r = client.responses.retrieve(resp_id)
        seen.append(r.status)
        if r.status in TERMINAL:
            return r, seen
        assert time.monotonic() < end, f"still {r.status}"
        time.sleep(0.01)


def test_background_create_then_poll_sync(client, emu):
    r = client.responses.create(
        model="gpt-test",
        input="hello world",
        background=True,
        metadata={"emulator_duration_ms": "10000", "emulator_queue_ms": "2000"},
    )
    assert r.status == "queued"
    assert r.background is True and r.output == [] and r.usage is None and r.completed_at is None
    assert r.id.startswith("resp_") and r.output_text == ""
    final, seen = poll(client, r.id)
    assert "in_progress" in seen  # it passed through in_progress
    assert final.status == "completed"
    assert final.completed_at is not None and final.usage.output_tokens == 50
    assert len(final.output_text) == 200 and "hello world" in final.output_text
    assert final.output[0].type == "message" and final.output[0].status == "completed"
    # same input + knobs -> same text
    again = client.responses.create(
        model="gpt-test",
        input="hello world",
        background=True,
        metadata={"emulator_duration_ms": "0", "emulator_queue_ms": "0"},
    )
    assert again.status == "completed" and again.output_text == final.output_text
    rec = record(emu, r.id)
    assert rec["status"] == "completed" and rec["counters"]["retrieve"] == len(seen)
    assert rec["created_at"] < rec["started_at"] < rec["finished_at"]


async def test_background_create_then_poll_async(aclient):
    r = await aclient.responses.create(
        model="gpt-test",
        input=[{"role": "user", "content": "async hi"}],
        background=True,
        instructions="be brief",
        metadata={"emulator_output_chars": "1234"},
    )
    assert r.status in ("queued", "in_progress") and r.instructions == "be brief"
    for _ in range(2000):
        r = await aclient.responses.retrieve(r.id)
        if r.status in TERMINAL:
            break
        await asyncio.sleep(0.01)
    assert r.status == "completed" and len(r.output_text) == 1234
    page = await aclient.responses.input_items.list(r.id)
    assert page.data[0].type == "message" and page.data[0].content[0].text == "async hi"


def test_duration_zero_is_terminal_at_once(client):
    r = client.responses.create(model="m", input="now", background=True, metadata={"emulator_duration_ms": "0"})
    assert r.status == "completed" and r.output_text and r.usage is not None


def test_synchronous_create_waits_for_the_result(client):
    r = client.responses.create(model="m", input="sync", metadata={"emulator_output_chars": "40"})
    assert r.status == "completed" and r.background is False and len(r.output_text) == 40


def test_failed_outcome(client):
    r = client.responses.create(model="m", input="x", background=True, metadata={"emulator_outcome": "failed"})
    final, _ = poll(client, r.id)
    assert final.status == "failed" and final.error.code == "server_error" and final.usage is None
    assert final.completed_at is None


def test_incomplete_outcomes(client):
    r = client.responses.create(model="m", input="x", background=True, metadata={"emulator_outcome": "incomplete"})
    final, _ = poll(client, r.id)
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert len(final.output_text) == 100  # half of the default 200 chars
    # max_output_tokens below the text's token estimate gives incomplete naturally
    r = client.responses.create(
        model="m", input="x", background=True, max_output_tokens=20, metadata={"emulator_output_chars": "400"}
    )
    final, _ = poll(client, r.id)
    assert final.status == "incomplete" and len(final.output_text) == 80 and final.usage.output_tokens == 20
    r = client.responses.create(model="m", input="x", background=True, max_output_tokens=1000)
    assert poll(client, r.id)[0].status == "completed"


def test_unknown_ids_are_404(client):
    for call in (
        lambda: client.responses.retrieve("resp_nope"),
        lambda: client.responses.cancel("resp_nope"),
        lambda: client.responses.delete("resp_nope"),
        lambda: client.responses.retrieve("resp_nope", stream=True),
    ):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.body["message"] == "Response with id 'resp_nope' not found."
        assert exc.value.status_code == 404


def test_delete_then_404(client):
    r = client.responses.create(model="m", input="x", background=True, metadata={"emulator_duration_ms": "0"})
    assert client.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_validation_errors(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="m", input="x", background=True, metadata={f"k{i}": "v" for i in range(17)})
    assert exc.value.param == "metadata"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", input="x", metadata={"emulator_outcome": "exploded"})
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="", input="x")
    assert exc.value.param == "model"


def test_huge_output(client):
    r = client.responses.create(
        model="m",
        input="big",
        background=True,
        metadata={"emulator_output_chars": "5000000", "emulator_duration_ms": "0"},
    )
    assert r.status == "completed" and len(r.output_text) == 5_000_000
    events = list(client.responses.retrieve(r.id, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 200 and "".join(deltas) == r.output_text


def test_azure_v1_layout(emu):
    c = openai.OpenAI(base_url=emu.azure_base_url, api_key="azure-key")
    r = c.responses.create(
        model="my-deployment", input="azure", background=True, metadata={"emulator_duration_ms": "0"}
    )
    assert c.responses.retrieve(r.id).status == "completed"


def test_expiry_after_ttl(emu, client):
    admin(emu, "POST", "config", json={"ttl_s": 0.2})
    try:
        r = client.responses.create(model="m", input="x", background=True, metadata={"emulator_duration_ms": "0"})
        assert client.responses.retrieve(r.id).status == "completed"
        time.sleep(0.4)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(r.id)
    finally:
        admin(emu, "POST", "config", json={"ttl_s": 3600})


def test_listing_and_metadata_filter(emu, client):
    ids = {
        client.responses.create(
            model="m", input="x", background=True, metadata={"bg_run_id": "run-list-1", "emulator_duration_ms": "0"}
        ).id
        for _ in range(3)
    }
    rows = admin(emu, "GET", "responses", params={"metadata.bg_run_id": "run-list-1"})["data"]
    assert {r["id"] for r in rows} == ids
    assert all(isinstance(r["finished_at"], float) and r["status"] == "completed" for r in rows)
    stats = admin(emu, "GET", "stats")
    assert stats["requests"]["create"] >= 3 and stats["responses"]["by_status"]["completed"] >= 3
    r = httpx.get(f"{emu.base_url}/nope")
    assert r.status_code == 404 and "error" in r.json()
