"""The retention timer (shared.runs.retention): once a day, at a quiet minute (UTC)."""

from __future__ import annotations

import azure.functions as func

from .. import telemetry
from ..composition import services
from ..storage import counting_as

bp = func.Blueprint()
# A fixed schedule: nothing depends on when in the day it runs, so it is not one more setting to provide.
PURGE_SCHEDULE = "0 17 3 * * *"


@bp.timer_trigger(arg_name="timer", schedule=PURGE_SCHEDULE, run_on_startup=False)
async def purge_expired(timer: func.TimerRequest) -> None:
    counting_as("purge_expired")
    with telemetry.timed("purge expired", logger="bgruns.retention"):
        await (await services()).purger.purge()
