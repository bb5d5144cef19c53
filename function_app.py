"""Azure Functions entry point: registers the triggers and delegates to shared/.

HTTP triggers use the FastAPI types of azurefunctions-extensions-http-fastapi (SSE streaming needs
them, and one app cannot mix them with func.HttpRequest). Queue triggers read base64 text
(host.json messageEncoding) that shared.storage writes with TextBase64EncodePolicy.
"""
import json
import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared import api
from shared.context import get_context
from shared.poller import poll_step, sweep
from shared.settings import POLL_QUEUE, STORAGE_CONNECTION, WEBHOOK_QUEUE
from shared.webhook_delivery import deliver_step

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _message_json(msg: func.QueueMessage) -> dict:
    """The message's JSON object, or {} (which the handlers drop as malformed, never poison)."""
    try:
        data = json.loads(msg.get_body())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@app.route(route="runs", methods=["POST"])
async def create_run(req: Request) -> Response:
    return await api.create_run(req)


@app.route(route="runs/{run_id}", methods=["GET"])
async def get_run(req: Request) -> Response:
    return await api.get_run(req)


@app.route(route="runs/{run_id}/cancel", methods=["POST"])
async def cancel_run(req: Request) -> Response:
    return await api.cancel_run(req)


@app.route(route="runs/{run_id}/stream", methods=["GET"])
async def stream_run(req: Request) -> Response:
    return await api.stream_run(req)


@app.route(route="runs/{run_id}/webhook/redeliver", methods=["POST"])
async def redeliver_webhook(req: Request) -> Response:
    return await api.redeliver_webhook(req)


@app.route(route="sessions", methods=["POST"])
async def create_session(req: Request) -> Response:
    return await api.create_session(req)


@app.route(route="sessions/{session_id}", methods=["GET"])
async def get_session(req: Request) -> Response:
    return await api.get_session(req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: Request) -> Response:
    return await api.health(req)


@app.route(route="metrics", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
async def metrics(req: Request) -> Response:
    return await api.metrics(req)


@app.route(route="ui", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ui(req: Request) -> Response:
    return await api.ui(req)


@app.queue_trigger(arg_name="msg", queue_name=POLL_QUEUE, connection=STORAGE_CONNECTION)
async def poll_run(msg: func.QueueMessage) -> None:
    ctx = await get_context()
    outcome = await poll_step(ctx.service, _message_json(msg), msg.dequeue_count or 1)
    logging.debug("poll %s: %s", msg.id, outcome)


@app.queue_trigger(arg_name="msg", queue_name=WEBHOOK_QUEUE, connection=STORAGE_CONNECTION)
async def deliver_webhook(msg: func.QueueMessage) -> None:
    ctx = await get_context()
    await deliver_step(ctx.service, ctx.webhooks, _message_json(msg))


@app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False)
async def sweep_runs(timer: func.TimerRequest) -> None:
    ctx = await get_context()
    await sweep(ctx.service)
