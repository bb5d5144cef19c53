"""The poll chain's queue trigger: one step per message (shared.runs.polling)."""

from __future__ import annotations

import azure.functions as func

from .. import telemetry
from ..composition import services
from ..settings import POLL_QUEUE, STORAGE_CONNECTION
from ..storage import counting_as
from .queue_messages import message_json

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name=POLL_QUEUE, connection=STORAGE_CONNECTION)
async def poll_run(msg: func.QueueMessage) -> None:
    counting_as("poll_run")
    data = message_json(msg)
    with telemetry.consumed(
        "poll run",
        data,
        queue=POLL_QUEUE,
        enqueued_at=msg.insertion_time,
        logger="bgruns.polling",
        counter="poll_steps",
    ) as step:
        step.set(outcome=await (await services()).poll_step.handle(data, msg.dequeue_count or 1))
