"""Deleting a run (the facade's DELETE /responses/{id}): a run still going is cancelled first (the cancel's own
rules apply: a refused cancel deletes nothing), then the provider's stored response goes, then the run with its
blobs and every row it owns: in the run lists, the provider-response index (push), its retention date, its
session's list of runs, the open-work index.

Races: the rows are removed before the run (a crash in between leaves a run to delete again) and once more after
it, since an end racing the DELETE (its follow-ups) may write them back meanwhile; an end that comes later
sees the run gone and writes nothing back (RunLifecycle.follow_up). A start still in flight when its run is
deleted finds the run gone when it saves the provider's answer, and cancels and deletes that response.
"""

from __future__ import annotations

import logging

from ..errors import Unavailable
from ..provider import ProviderError, RunBackend
from .callers import OPERATOR, Caller
from .cancelling import RunCanceller
from .index import RunIndex
from .model import Run
from .reading import RunReader
from .sessions import SessionStore
from .store import RunStore

log = logging.getLogger("bgruns.deleting")


class RunDeleter:
    def __init__(
        self,
        reader: RunReader,
        canceller: RunCanceller,
        backend: RunBackend,
        store: RunStore,
        index: RunIndex,
        sessions: SessionStore,
        retention_seconds: float,
    ) -> None:
        self._reader = reader
        self._canceller = canceller
        self._backend = backend
        self._store = store
        self._index = index
        self._sessions = sessions
        self._retention = retention_seconds

    async def delete(self, run_id: str, *, caller: Caller = OPERATOR) -> str:
        """Delete the run; returns its id. NotFound if the caller cannot see it."""
        run = await self._reader.get(run_id, caller=caller)
        if run.is_active:
            run = await self._canceller.cancel(run_id, caller=caller)
        if run.response_id:
            try:
                await self._backend.delete(run.response_id, deployment=run.at)
            except ProviderError as error:
                if error.transient:
                    raise Unavailable(
                        "provider_unavailable",
                        f"Could not delete at the provider: {error.message}",
                        retry_after=max(1, round(error.retry_after or 2)),
                    ) from None
                # Refused for good (e.g. the provider keeps no such response): ours goes anyway.
                log.warning(
                    "run %s: the provider refused to delete %s (%s): %s",
                    run.id,
                    run.response_id,
                    error.status,
                    error.message,
                )
        await self._forget_rows(run)
        await self._store.purge(run.id)
        await self._forget_rows(run)  # again: what an end racing this DELETE wrote back meanwhile
        await self._index.mark_done(run.id)
        return run.id

    async def _forget_rows(self, run: Run) -> None:
        await self._index.unlist(run)
        if run.response_id:
            await self._index.forget_response(run.response_id)
        if run.completed_at is not None:
            await self._index.forget_expiry("run", run.id, run.completed_at + self._retention)
        if run.session_id:
            await self._sessions.remove_run(run.session_id, run.id, run.created_at)
