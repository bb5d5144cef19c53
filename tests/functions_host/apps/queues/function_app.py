"""Sample queue-triggered app for the local Functions host tests.

Every queue name is an app setting expression (%NAME%) so each test host uses its own queues. Functions
append one JSON line per event to $RESULTS_FILE.
"""

import asyncio
import json
import os
import threading

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_active = 0


def record(**fields) -> None:
    with open(os.environ["RESULTS_FILE"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(fields) + "\n")


def _meta(msg: func.QueueMessage) -> dict:
    return {
        "id": msg.id,
        "body": msg.get_body().decode("utf-8"),
        "dequeue_count": msg.dequeue_count,
        "type": f"{type(msg).__module__}.{type(msg).__qualname__}",
        "has_times": all([msg.insertion_time, msg.expiration_time, msg.time_next_visible]),
        "has_pop_receipt": bool(msg.pop_receipt),
    }


@app.queue_trigger(arg_name="msg", queue_name="%ECHO_QUEUE%", connection="AzureWebJobsStorage")
async def echo(msg: func.QueueMessage) -> None:
    record(fn="echo", loop=id(asyncio.get_running_loop()), **_meta(msg))


@app.queue_trigger(arg_name="msg", queue_name="%FAIL_QUEUE%", connection="AzureWebJobsStorage")
def always_fails(msg: func.QueueMessage) -> None:  # sync: runs in the thread pool
    record(fn="always_fails", thread=threading.current_thread().name, **_meta(msg))
    raise RuntimeError("always fails")


@app.queue_trigger(arg_name="msg", queue_name="%SLOW_QUEUE%", connection="AzureWebJobsStorage")
async def slow(msg: func.QueueMessage) -> None:
    """Body = seconds to run, or 'kill' = hang on the first delivery only (for the SIGKILL test)."""
    meta = _meta(msg)
    record(fn="slow", phase="start", **meta)
    if meta["body"] == "kill":
        if msg.dequeue_count == 1:
            await asyncio.sleep(3600)
    else:
        await asyncio.sleep(float(meta["body"]))
    record(fn="slow", phase="end", **meta)


@app.queue_trigger(arg_name="msg", queue_name="%CONC_QUEUE%", connection="AzureWebJobsStorage")
async def concurrent(msg: func.QueueMessage) -> None:
    global _active
    _active += 1  # safe: every async function runs on the host's single event loop
    record(fn="concurrent", phase="start", active=_active, **_meta(msg))
    try:
        while not os.path.exists(os.environ["RESULTS_FILE"] + ".release"):  # the test opens the gate
            await asyncio.sleep(0.05)
    finally:
        _active -= 1


@app.route(route="loop")
async def loop_id(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(id(asyncio.get_running_loop())))
