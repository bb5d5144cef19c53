"""The webhook queue's trigger: one delivery attempt per message (shared.runs.webhook_outbox)."""

from __future__ import annotations

import azure.functions as func

from .. import telemetry
from ..composition import services
from ..settings import STORAGE_CONNECTION, WEBHOOK_QUEUE
from ..storage import counting_as
from .queue_messages import message_json

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name=WEBHOOK_QUEUE, connection=STORAGE_CONNECTION)
async def deliver_webhook(msg: func.QueueMessage) -> None:
    counting_as("deliver_webhook")
    data = message_json(msg)
    with telemetry.consumed(
        "deliver webhook", data, queue=WEBHOOK_QUEUE, enqueued_at=msg.insertion_time, logger="bgruns.webhook_outbox"
    ) as step:
        step.set(outcome=await (await services()).outbox.deliver(data))
