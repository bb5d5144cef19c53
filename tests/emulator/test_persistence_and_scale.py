"""--db restarts keep (and continue) responses; 500 concurrent background responses progress together."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from local.emulator import EmulatorServer

INFLIGHT = {"emulator_duration_ms": "100000", "emulator_output_chars": "500"}  # 2 s at scale 0.02


async def test_restart_with_db_continues_in_flight(tmp_path):
    db = str(tmp_path / "emu.sqlite")
    async with EmulatorServer(port=0, time_scale=0.02, db=db) as a:
        async with openai.AsyncOpenAI(base_url=a.base_url, api_key="k") as c:
            done = await c.responses.create(
                model="m", input="done", background=True, metadata={"emulator_duration_ms": "0"}
            )
            gone = await c.responses.create(model="m", input="cancel me", background=True, metadata=INFLIGHT)
            await c.responses.cancel(gone.id)
            stream = await c.responses.create(
                model="m", input="in flight", background=True, stream=True, metadata=INFLIGHT
            )
            first = []
            async for ev in stream:
                first.append(ev)
                if ev.sequence_number == 5:
                    break
            await stream.close()
            await c.responses.retrieve(done.id)
    resp_id = first[0].response.id
    async with EmulatorServer(port=0, db=db) as b:  # default scale 1.0: records keep their own
        async with openai.AsyncOpenAI(base_url=b.base_url, api_key="k") as c:
            again = await c.responses.retrieve(done.id)
            assert again.status == "completed" and again.output_text == done.output_text
            assert (await c.responses.retrieve(gone.id)).status == "cancelled"
            status = (await c.responses.retrieve(resp_id)).status
            assert status in ("queued", "in_progress")
            rest = [ev async for ev in await c.responses.retrieve(resp_id, stream=True, starting_after=5)]
            events = first + rest
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert events[-1].type == "response.completed"
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert text == events[-1].response.output_text and len(text) == 500
            async with httpx.AsyncClient() as h:  # async: this emulator runs on this very loop
                rows = (await h.get(f"{b.base_url}/_emulator/responses")).json()["data"]
            by_id = {r["id"]: r for r in rows}
            assert by_id[done.id]["counters"]["retrieve"] == 2  # counters were persisted too
            assert len(rows) == 3


async def test_500_concurrent_background_responses(emu):
    n = 500
    run = f"conc-{time.time()}"
    limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
    # 3 s each at scale 0.02: long enough that all 500 creates land before the first one finishes
    meta = {
        "bg_run_id": run,
        "emulator_duration_ms": "150000",
        "emulator_queue_ms": "25000",
        "emulator_output_chars": "400",
    }
    async with openai.AsyncOpenAI(
        base_url=emu.base_url, api_key="k", http_client=openai.DefaultAsyncHttpxClient(limits=limits)
    ) as c:
        created = await asyncio.gather(
            *(c.responses.create(model="m", input=f"job {i}", background=True, metadata=meta) for i in range(n))
        )
        assert all(r.status == "queued" for r in created)

        async def follow(resp_id: str):  # a fifth of them are also streamed live
            return [ev async for ev in await c.responses.retrieve(resp_id, stream=True)]

        streamed = await asyncio.gather(*(follow(r.id) for r in created[::5]))
    for events in streamed:
        assert events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert (
            "".join(e.delta for e in events if e.type == "response.output_text.delta")
            == events[-1].response.output_text
        )
    async with httpx.AsyncClient() as h:
        for _ in range(200):
            rows = (await h.get(f"{emu.base_url}/_emulator/responses", params={"metadata.bg_run_id": run})).json()[
                "data"
            ]
            if all(r["status"] == "completed" for r in rows):
                break
            await asyncio.sleep(0.05)
    assert len(rows) == n and all(r["status"] == "completed" for r in rows)
    # they ran concurrently, not one after another: at the busiest moment most of them were running at once.
    # (Not "all started before the first finished": on a loaded machine the 500 creates can take longer than
    # one run's 3.5 s, so the last ones start after the first ones end, which says nothing about the emulator.)
    assert peak_running(rows) >= n // 2


def peak_running(rows: list[dict]) -> int:
    """The most responses that were between started_at and finished_at at the same moment."""
    marks = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows])
    running = peak = 0
    for _, step in marks:  # an end sorts before a start at the same instant: touching is not overlapping
        running += step
        peak = max(peak, running)
    return peak
