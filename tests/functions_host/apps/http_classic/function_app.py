"""Sample app (classic func.HttpRequest/HttpResponse) for the local Functions host tests."""

import json
import logging

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _echo(req: func.HttpRequest, **extra) -> func.HttpResponse:
    body = {
        "method": req.method,
        "route_params": dict(req.route_params),
        "params": dict(req.params),
        "body": req.get_body().decode(),
        **extra,
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    logging.info("get_run called for %s", req.route_params.get("run_id"))  # noqa: LOG015 - as users' apps log
    return _echo(req, fn="get_run")


@app.route(route="runs/latest", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def latest_run(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req, fn="latest_run")


@app.route(route="items/{id:int}", auth_level=func.AuthLevel.ANONYMOUS)
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req, fn="get_item")


@app.route(route="files/{*rest}", auth_level=func.AuthLevel.ANONYMOUS)
def files(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req, fn="files")


@app.route(route="runs", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def start_run(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"got": req.get_json()}),
        status_code=202,
        headers={"Location": "/api/runs/1", "Retry-After": "5"},
        mimetype="application/json",
    )


@app.route(route="secure")  # FUNCTION level (the app default)
def secure(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("secret")


@app.route(route="only-admin", auth_level=func.AuthLevel.ADMIN)
def only_admin(req: func.HttpRequest) -> str:
    return "admin"


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom from the function")


@app.function_name("DefaultRoute")
@app.route(auth_level=func.AuthLevel.ANONYMOUS)
def default_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("default route is the function name")
