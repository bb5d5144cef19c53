"""This process's reads held on runs (long polling, runs.waiting), woken when the RunStore writes their run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class RunChanges:
    """This process's held reads, by run id; `touched` wakes those of a run that was just written."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the run is written in this process, while the block runs."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        self._waiting.setdefault(run_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            waiting = self._waiting.get(run_id)
            if waiting is not None:
                waiting.discard(entry)
                if not waiting:
                    del self._waiting[run_id]

    def touched(self, run_id: str) -> None:
        for loop, event in tuple(self._waiting.get(run_id, ())):
            loop.call_soon_threadsafe(event.set)  # the writer may run on another thread's loop
