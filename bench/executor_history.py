"""What one executor call holds in memory for a session at its history ceiling (issue 21, item 9).

A session of executor turns whose answers are `--answer-kb` KB of non-ASCII text each (the worst case for the
JSON the call sends), long enough to pass MAX_HISTORY_BYTES; then one more turn with truncation "auto". Measured
with tracemalloc, in process, on the unit tests' in-memory storage (no I/O to time, only allocations): the peak
while the executor reads the earlier turns back and builds the Chat Completions body, and what it still holds
after.

    .venv/bin/python -m bench.executor_history [--answer-kb 150] [--turns 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tracemalloc

from shared.executor.attempts import MAX_HISTORY_BYTES, MAX_HISTORY_TURNS
from shared.executor.chat_translation import chat_params
from shared.runs.requests import RunRequest
from tests.unit.fakes import world


class _Patch:
    """The one monkeypatch method `world` uses (it sets the service's clock)."""

    @staticmethod
    def setattr(target, name, value) -> None:
        setattr(target, name, value)


async def measure(answer_kb: int, turns: int) -> dict:
    w = world(_Patch(), RUN_BACKEND="executor")
    session = await w.services.starter.open_session()
    half = answer_kb * 1024 // 3  # "é" is 2 bytes of UTF-8, "x" 1: half of each makes answer_kb KB
    w.model.scripts = [["é" * half + "x" * half]]
    for n in range(turns):
        await w.services.starter.start(
            RunRequest(input=f"turn {n}", session_id=session.id, options={"truncation": "auto"})
        )
        await w.execute()
    run = (
        await w.services.starter.start(RunRequest(input="last", session_id=session.id, options={"truncation": "auto"}))
    ).run
    run = await w.services.executor._store.get(run.id, with_request=True)
    tracemalloc.start()
    request = await w.services.executor._conversation(run)
    body = json.dumps(chat_params(request), ensure_ascii=False)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "ceiling_mib": MAX_HISTORY_BYTES / 2**20,
        "ceiling_turns": MAX_HISTORY_TURNS,
        "answer_kb": answer_kb,
        "session_turns": turns,
        "turns_sent": sum(1 for i in request.items if i.get("role") == "user") - 1,
        "body_mib": round(len(body.encode()) / 2**20, 2),
        "peak_mib": round(peak / 2**20, 1),
        "held_mib": round(held / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-kb", type=int, default=150)
    parser.add_argument("--turns", type=int, default=60)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.answer_kb, args.turns))))


if __name__ == "__main__":
    main()
