"""Cancelling a run: at the provider first, then here. What the API reports must be true: if the provider
refuses the cancel, the run goes on and the caller is told why; if the run finished before the cancel
landed, it ends with its real result."""
from __future__ import annotations

import logging

from ..errors import Unavailable, UpstreamError
from ..provider import ProviderError, RunBackend
from .callers import OPERATOR, Caller
from .lifecycle import RunLifecycle
from .model import Run
from .reading import RunReader
from .results import cancelled_result, result_from_response

log = logging.getLogger("bgruns.cancelling")


class RunCanceller:
    def __init__(self, reader: RunReader, backend: RunBackend, lifecycle: RunLifecycle) -> None:
        self._reader = reader
        self._backend = backend
        self._lifecycle = lifecycle

    async def cancel(self, run_id: str, *, caller: Caller = OPERATOR) -> Run:
        run = await self._reader.get(run_id, caller=caller)
        if run.is_terminal:
            return run
        if run.response_id:  # a run still starting has none yet: its start cancels the response it gets
            try:
                state = await self._backend.cancel(run.response_id)
            except ProviderError as error:
                raise self._refused(run, error) from None
            if state is not None and not state.is_active and state.status != "cancelled":
                status, result = result_from_response(state.response)  # it finished before the cancel landed
                return await self._lifecycle.finish(run, status, result)
        return await self._lifecycle.finish(run, "cancelled", cancelled_result())

    @staticmethod
    def _refused(run: Run, error: ProviderError) -> Exception:
        if error.transient:
            return Unavailable("provider_unavailable", f"Could not cancel at the provider: {error.message}",
                               retry_after=max(1, round(error.retry_after or 2)))
        log.warning("run %s: the provider refused to cancel %s (%s): %s", run.id, run.response_id, error.status,
                    error.message)
        return UpstreamError("cancel_refused", f"The provider refused to cancel the run ({error.status}): "
                             f"{error.message}. The run was not cancelled and goes on.")
