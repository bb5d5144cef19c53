"""The run store on fakes: sizes counted as Table Storage counts them, parts loaded only when used, and a
save that loses a race never changes what the winner stored."""

from __future__ import annotations

import json

import pytest

from shared.errors import PayloadTooLarge
from shared.runs.model import Run
from shared.runs.requests import RunRequest
from shared.runs.store import PROPERTY_LIMIT_BYTES, RunConflict, RunStore, utf16_bytes

from .fakes import FakeContainer, FakeTable, world

EMOJI = "\U0001f600"  # one Python character, two UTF-16 units, four bytes


def test_sizes_are_counted_in_utf16_bytes():
    assert utf16_bytes("abc") == 6 and utf16_bytes("é") == 2 and utf16_bytes(EMOJI) == 4
    assert utf16_bytes(EMOJI * 20_000) == 80_000 > PROPERTY_LIMIT_BYTES  # 20,000 characters, yet too big


def store_and_tables():
    table, blobs = FakeTable(), FakeContainer()
    return RunStore(table, blobs), table, blobs


def run_with(request=None, result=None) -> Run:
    return Run(id="run_1", status="queued", created_at=1.0, model="m", request=request or {"input": "x"}, result=result)


async def test_an_emoji_heavy_input_and_output_are_stored_and_read_back_exactly():
    # The defect: 29,000 emoji are 29,000 Python characters (under the old 30,000-character cut) but
    # 116,000 bytes of UTF-16: Table Storage refused the entity, and the start answered 503.
    store, table, _ = store_and_tables()
    text = EMOJI * 29_000
    run = await store.create(run_with(request={"input": text}))
    entity = table.entity("run_1", "run")
    assert entity["request"] == "" and entity["request_blob"]  # moved to a blob
    assert all(utf16_bytes(v) <= PROPERTY_LIMIT_BYTES for v in entity.values() if isinstance(v, str))
    run.status, run.result = (
        "completed",
        {
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
            "output_text": text,
            "error": None,
        },
    )
    await store.save(run)
    back = await store.get("run_1", with_result=True, with_request=True)
    assert back.request["input"] == text and back.result["output_text"] == text


async def test_the_output_text_is_stored_once():
    store, table, _ = store_and_tables()
    run = await store.create(run_with())
    text = "y" * 5000
    run.status, run.result = (
        "completed",
        {"output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}], "output_text": text},
    )
    await store.save(run)
    assert table.entity("run_1", "run")["result"].count(text) == 1
    assert "output_text" not in json.loads(table.entity("run_1", "run")["result"])


async def test_reads_load_the_result_and_request_only_when_asked():
    store, _, blobs = store_and_tables()
    run = await store.create(run_with(request={"input": "r" * 40_000}))
    run.status, run.result = (
        "completed",
        {
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "z" * 40_000}]}],
            "output_text": "z" * 40_000,
        },
    )
    await store.save(run)
    plain = await store.get("run_1")
    assert blobs.downloads == 0 and plain.result is None and plain.request == {} and plain.result_stored
    plain.poll_count += 1
    await store.save(plain)  # saving a run read without its result keeps the stored result
    assert (await store.get("run_1", with_result=True)).result["output_text"] == "z" * 40_000


async def test_a_save_that_loses_a_race_leaves_the_winners_result_intact():
    store, _, blobs = store_and_tables()
    await store.create(run_with())
    ours, theirs = await store.get("run_1"), await store.get("run_1")

    def big(text: str) -> dict:
        return {"output": [{"type": "message", "content": [{"type": "output_text", "text": text * 40_000}]}]}

    theirs.status, theirs.result = "cancelled", big("t")
    await store.save(theirs)
    ours.status, ours.result = "completed", big("o")
    with pytest.raises(RunConflict):
        await store.save(ours)
    assert (await store.get("run_1", with_result=True)).result["output_text"] == "t" * 40_000
    assert len(blobs.blobs) == 1  # the loser's blob was removed, not left as an orphan


async def test_a_size_refusal_by_storage_is_a_permanent_error_not_an_outage():
    from azure.core.exceptions import HttpResponseError

    store, table, _ = store_and_tables()
    refusal = HttpResponseError("too large")
    refusal.status_code, refusal.error_code = 400, "EntityTooLarge"
    table.fail_next.append(refusal)
    with pytest.raises(PayloadTooLarge):
        await store.create(run_with())


async def test_reads_never_download_blobs_on_the_poll_chain_or_the_sweeper(monkeypatch):
    w = world(monkeypatch)
    run = (await w.services.starter.start(RunRequest(input="i" * 50_000))).run
    for _ in range(3):
        w.backend.responses[run.response_id].status = "in_progress"
        await w.drain_polls(limit=1)
    await w.services.sweeper.sweep()
    assert w.blobs.downloads == 0
