"""The sweeper's timer (shared.runs.sweeping), on SWEEP_SCHEDULE."""

from __future__ import annotations

import azure.functions as func

from .. import telemetry
from ..composition import services
from ..storage import counting_as

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False)
async def sweep_runs(timer: func.TimerRequest) -> None:
    counting_as("sweep_runs")
    with telemetry.timed("sweep runs", logger="bgruns.sweeping") as step:
        step.set(**{f"runs_{k}": v for k, v in (await (await services()).sweeper.sweep()).items()})
