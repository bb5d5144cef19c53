"""The poll chain's queue trigger: one step per message (shared.runs.polling)."""
from __future__ import annotations

import logging

import azure.functions as func

from ..composition import services
from ..settings import POLL_QUEUE, STORAGE_CONNECTION
from ..storage import counting_as
from .queue_messages import message_json

bp = func.Blueprint()
log = logging.getLogger("bgruns.functions.poll")


@bp.queue_trigger(arg_name="msg", queue_name=POLL_QUEUE, connection=STORAGE_CONNECTION)
async def poll_run(msg: func.QueueMessage) -> None:
    counting_as("poll_run")
    outcome = await (await services()).poll_step.handle(message_json(msg), msg.dequeue_count or 1)
    log.debug("poll %s: %s", msg.id, outcome)
