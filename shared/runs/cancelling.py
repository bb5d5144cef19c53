"""Cancelling a run: at the provider first, then here. What the API reports must be true: if the provider
refuses the cancel, the run goes on and the caller is told why; if the run finished before the cancel
landed, it ends with its real result."""

from __future__ import annotations

import logging

from .. import telemetry
from ..errors import Unavailable, UpstreamError
from ..provider import ProviderError, RunBackend
from ..responses_vocabulary import RunStatus
from .callers import OPERATOR, Caller
from .ending import Cancelled, Observed, ProviderEnded, RunEnding
from .model import Run
from .reading import RunReader
from .store import RunStore

log = logging.getLogger("bgruns.cancelling")


class RunCanceller:
    def __init__(self, reader: RunReader, backend: RunBackend, ending: RunEnding, store: RunStore) -> None:
        self._reader = reader
        self._backend = backend
        self._ending = ending
        self._store = store  # for the timeline note of a refused cancel

    async def cancel(self, run_id: str, *, caller: Caller = OPERATOR) -> Run:
        run = await self._reader.get(run_id, caller=caller)
        if run.is_terminal:
            return run
        with telemetry.run_step("cancel run", run, logger=log.name):
            telemetry.record(run, "cancel_requested")
            observed: Observed = Cancelled()
            if run.response_id:  # a run still starting has none yet: its start cancels the response it gets
                try:
                    state = await self._backend.cancel(run.response_id, deployment=run.at)
                except ProviderError as error:
                    await self._note_refusal(run, error)
                    raise self._refused(run, error) from None
                if state is not None and not state.is_active and state.status != RunStatus.CANCELLED:
                    observed = ProviderEnded(state.response)  # it finished before the cancel landed
            # The caller's answer does not wait on its webhook receiver: the queue delivers at once.
            return await self._ending.end(run, observed, deliver_now=False)

    async def _note_refusal(self, run: Run, error: ProviderError) -> None:
        """Best effort: the run's timeline shows the refused cancel (the poll chain keeps such a note when it
        saves next; if the run changed meanwhile, the note is left out)."""
        telemetry.record(
            run, "cancel_refused" if not error.transient else "cancel_failed", provider_status_code=error.status
        )
        try:
            await self._store.save(run)
        except Exception:  # noqa: BLE001 - a diary entry never changes the answer
            log.info("run %s: the cancel's timeline note was not saved (the run changed)", run.id)

    @staticmethod
    def _refused(run: Run, error: ProviderError) -> Exception:
        if error.transient:
            return Unavailable(
                "provider_unavailable",
                f"Could not cancel at the provider: {error.message}",
                retry_after=max(1, round(error.retry_after or 2)),
            )
        log.warning(
            "run %s: the provider refused to cancel %s (%s): %s", run.id, run.response_id, error.status, error.message
        )
        return UpstreamError(
            "cancel_refused",
            f"The provider refused to cancel the run ({error.status}): "
            f"{error.message}. The run was not cancelled and goes on.",
        )
