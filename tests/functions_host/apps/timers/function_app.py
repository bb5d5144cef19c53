"""Sample timer app for the local Functions host tests (records to $RESULTS_FILE)."""

import asyncio
import json
import os
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def record(**fields) -> None:
    with open(os.environ["RESULTS_FILE"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(fields) + "\n")


@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer", use_monitor=False)
async def tick(timer: func.TimerRequest) -> None:
    record(
        fn="tick",
        t=time.time(),
        past_due=timer.past_due,
        loop=id(asyncio.get_running_loop()),
        next=timer.schedule_status.get("Next"),
    )


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
def on_startup(timer: func.TimerRequest) -> None:
    record(fn="on_startup", t=time.time(), past_due=timer.past_due)


@app.route(route="loop")
async def loop_id(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(id(asyncio.get_running_loop())))
