"""The provider's events pushed in (OpenAI / Azure OpenAI `response.*` webhooks): shared.runs.provider_event_inbox.

Anonymous at the Functions level, because the provider cannot send a function key: every delivery is verified
against PROVIDER_WEBHOOK_SECRETS (Standard Webhooks signature, 300 s tolerance) before anything is read or
written; a body over 64 KiB is refused before it is read. Register `https://<app>/api/provider/webhooks` with
the provider (infra/README.md).
"""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from .. import telemetry
from ..api.bodies import read_body
from ..api.errors import handler
from ..composition import services
from ..errors import NotFound
from ..storage import counting_as

bp = func.Blueprint()
MAX_EVENT_BYTES = 64 * 1024  # the events carry an id; anything this large is not one


@bp.route(route="provider/webhooks", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@telemetry.http_entry("POST /api/provider/webhooks", logger="bgruns.provider_events")
@handler
async def receive_provider_webhook(req: Request) -> Response:
    counting_as("receive_provider_webhook")
    inbox = (await services()).provider_events
    if inbox is None:
        raise NotFound("provider_webhooks_off", "Provider webhooks are not configured (PROVIDER_WEBHOOK_SECRETS).")
    body = await read_body(req, MAX_EVENT_BYTES, code="event_too_large")  # refused before it is read
    outcome = await inbox.receive(body, dict(req.headers))
    return JSONResponse({"received": True, "outcome": outcome})
