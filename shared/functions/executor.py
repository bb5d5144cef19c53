"""The executor's queue trigger: one model call per message, for runs the function app executes itself
(shared.executor.attempts). The invocation lasts as long as the call, bounded by host.json functionTimeout."""

from __future__ import annotations

import logging

import azure.functions as func

from ..composition import services
from ..settings import EXECUTE_QUEUE, STORAGE_CONNECTION
from ..storage import counting_as
from .queue_messages import message_json

bp = func.Blueprint()
log = logging.getLogger("bgruns.functions.executor")


@bp.queue_trigger(arg_name="msg", queue_name=EXECUTE_QUEUE, connection=STORAGE_CONNECTION)
async def execute_run(msg: func.QueueMessage) -> None:
    counting_as("execute_run")
    outcome = await (await services()).executor.handle(
        message_json(msg), message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1
    )
    log.info("execute %s: %s", msg.id, outcome)
