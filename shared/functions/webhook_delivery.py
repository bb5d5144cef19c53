"""The webhook queue's trigger: one delivery attempt per message (shared.runs.webhook_outbox)."""
from __future__ import annotations

import azure.functions as func

from ..composition import services
from ..settings import STORAGE_CONNECTION, WEBHOOK_QUEUE
from ..storage import counting_as
from .queue_messages import message_json

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name=WEBHOOK_QUEUE, connection=STORAGE_CONNECTION)
async def deliver_webhook(msg: func.QueueMessage) -> None:
    counting_as("deliver_webhook")
    await (await services()).outbox.deliver(message_json(msg))
