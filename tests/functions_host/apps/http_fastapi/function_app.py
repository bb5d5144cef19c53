"""Sample app using the FastAPI types (azurefunctions-extensions-http-fastapi): the whole app is HTTP "v2".

Route parameters: read them from `req.path_params` (the worker copies the host's route values there),
the query from `req.query_params`.
"""

import asyncio
import logging
import threading

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

_gates: dict[str, asyncio.Event] = {}


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


@app.route(route="runs/{run_id}", methods=["GET"])
async def get_run(req: Request) -> JSONResponse:
    return JSONResponse(
        {
            "run_id": req.path_params["run_id"],
            "path_params": dict(req.path_params),
            "query": dict(req.query_params),
            "path": req.url.path,
            "loop": id(asyncio.get_running_loop()),
        }
    )


@app.route(route="echo", methods=["POST"])
async def echo(req: Request) -> Response:
    body = await req.body()
    return Response(content=body[::-1], media_type="application/octet-stream", status_code=201)


@app.route(route="plain/{name}")
def plain(req: Request) -> dict:
    # A sync handler returning a dict: FastAPI JSON-encodes it (the worker's catch-all route does the same).
    return {"hello": req.path_params["name"], "thread": threading.current_thread().name}


@app.route(route="stream/{gate}")
async def stream(req: Request) -> StreamingResponse:
    gate = _gate(req.path_params["gate"])

    async def body():
        yield b"first chunk\n"
        logging.info("stream %s: first chunk sent, waiting for release", req.path_params["gate"])  # noqa: LOG015 - as users' apps log
        await gate.wait()  # blocked until POST /api/release/{gate} (deterministic, no sleeps)
        yield b"second chunk\n"

    return StreamingResponse(body(), media_type="text/plain")


@app.route(route="release/{gate}", methods=["POST"])
async def release(req: Request) -> JSONResponse:
    _gate(req.path_params["gate"]).set()
    return JSONResponse({"released": req.path_params["gate"]})


@app.route(route="fail")
async def fail(req: Request) -> Response:
    raise ValueError("fastapi handler failed")


@app.route(route="broken-stream")
async def broken_stream(req: Request) -> StreamingResponse:
    async def body():
        yield b"one chunk\n"
        raise RuntimeError("the stream's generator failed")

    return StreamingResponse(body(), media_type="text/plain")
