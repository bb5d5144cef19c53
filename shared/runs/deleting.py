"""Deleting a run (the facade's DELETE /responses/{id}): a run still going is cancelled first (the cancel's own
rules apply: a refused cancel deletes nothing), then the provider's stored response goes, then the run with its
blobs and its rows in the run lists."""
from __future__ import annotations

import logging

from ..errors import Unavailable
from ..provider import ProviderError, RunBackend
from .callers import OPERATOR, Caller
from .cancelling import RunCanceller
from .index import RunIndex
from .reading import RunReader
from .store import RunStore

log = logging.getLogger("bgruns.deleting")


class RunDeleter:
    def __init__(self, reader: RunReader, canceller: RunCanceller, backend: RunBackend, store: RunStore,
                 index: RunIndex) -> None:
        self._reader = reader
        self._canceller = canceller
        self._backend = backend
        self._store = store
        self._index = index

    async def delete(self, run_id: str, *, caller: Caller = OPERATOR) -> str:
        """Delete the run; returns its id. NotFound if the caller cannot see it."""
        run = await self._reader.get(run_id, caller=caller)
        if run.is_active:
            run = await self._canceller.cancel(run_id, caller=caller)
        if run.response_id:
            try:
                await self._backend.delete(run.response_id)
            except ProviderError as error:
                if error.transient:
                    raise Unavailable("provider_unavailable", f"Could not delete at the provider: {error.message}",
                                      retry_after=max(1, round(error.retry_after or 2))) from None
                # Refused for good (e.g. the provider keeps no such response): ours goes anyway.
                log.warning("run %s: the provider refused to delete %s (%s): %s", run.id, run.response_id,
                            error.status, error.message)
        await self._index.unlist(run)
        await self._store.purge(run.id)
        await self._index.mark_done(run.id)
        return run.id
