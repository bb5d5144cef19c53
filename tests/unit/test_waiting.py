"""Long polling on fakes (runs.waiting): a held read answers when its run changes, here or on another instance,
or when its wait runs out, at the storage cost the module promises. Real time, short waits."""

from __future__ import annotations

import asyncio
import time

from shared.runs.requests import RunRequest
from shared.runs.store import RunStore
from shared.runs.waiting import recheck_intervals

from .fakes import world


async def started(w):
    return (await w.services.starter.start(RunRequest(input="hi"))).run


async def held(w, run, seconds: float):
    """Hold a read on `run` as GET /api/runs/{id} with `Prefer: wait` does; (run answered, seconds held)."""
    began = time.monotonic()
    answered = await w.services.waiter.wait(run, seconds, lambda: w.services.reader.get(run.id))
    return answered, time.monotonic() - began


async def test_a_run_ended_on_this_instance_answers_the_held_read_at_once(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    w.backend.responses[run.response_id].complete("the end")

    async def poll_step_later():
        await asyncio.sleep(0.1)  # before the first storage re-read (1 s): only the wake-up can answer
        await w.drain_polls()

    (answered, seconds), _ = await asyncio.gather(held(w, run, 10), poll_step_later())
    assert answered.status == "completed" and answered.result["output_text"] == "the end"
    assert seconds < 0.9


async def test_a_run_changed_by_another_instance_is_seen_at_the_next_storage_re_read(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    elsewhere = RunStore(w.runs, w.blobs)  # another instance: same storage, its own held reads

    async def other_instance_starts_it():
        await asyncio.sleep(0.1)
        other = await elsewhere.get(run.id)
        other.status = "in_progress"
        await elsewhere.save_chain(other)

    (answered, seconds), _ = await asyncio.gather(held(w, run, 10), other_instance_starts_it())
    assert answered.status == "in_progress"  # queued -> in_progress is a change worth answering
    assert 0.9 < seconds < 2.0  # the first re-read, at 1 s


async def test_a_wait_that_runs_out_answers_the_unchanged_run_after_a_few_reads(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    reads_before = w.runs.requests
    answered, seconds = await held(w, run, 3)
    assert answered.status == "queued" and 2.9 < seconds < 4.5
    # Re-reads at 1 and 2.5 s (the next would be at 4.75), then the answer's own read
    assert w.runs.requests - reads_before == 3


async def test_a_write_that_leaves_the_status_as_it_was_does_not_end_the_wait(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)

    async def a_note_on_this_instance():
        await asyncio.sleep(0.1)
        note = await w.services.reader.get(run.id)
        await w.services.reader._store.save(note)  # a write that changes nothing a caller waits for

    (answered, seconds), _ = await asyncio.gather(held(w, run, 1.5), a_note_on_this_instance())
    assert answered.status == "queued" and seconds > 1.4


async def test_an_ended_run_or_no_wait_answers_without_a_read(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    reads_before = w.runs.requests
    _, seconds = await held(w, run, 0)
    assert seconds < 0.1 and w.runs.requests == reads_before
    ended = await w.services.canceller.cancel(run.id)
    reads_before = w.runs.requests
    answered, seconds = await held(w, ended, 30)
    assert answered.status == "cancelled" and seconds < 0.1 and w.runs.requests == reads_before


def test_the_re_reads_grow_to_a_cap_well_under_the_cost_of_a_2_s_loop():
    intervals = recheck_intervals()
    at, reads = 0.0, 0
    while (at := at + next(intervals)) < 60:
        reads += 1
    assert reads + 1 == 15  # a 60 s wait: its re-reads and its answer, where a 2-s loop makes 30 GETs


async def test_retry_after_is_the_chain_s_next_look_under_poll_and_one_second_under_push(monkeypatch):
    polled = world(monkeypatch)
    run = await started(polled)
    polled.clock.advance(0.2)
    assert polled.services.views.retry_after(await polled.run(run.id)) == 1  # the first look, ~1 s after the start
    run.next_poll_at = polled.clock.now + 7.2
    assert polled.services.views.retry_after(run) == 8  # the look, and the moment it takes
    pushed = world(monkeypatch, PROVIDER_WEBHOOK_SECRETS="whsec_" + "B" * 43)
    run = await started(pushed)
    run.next_poll_at = pushed.clock.now + 30  # the safety net, which is not when the end will be known
    assert pushed.services.views.retry_after(run) == 1
