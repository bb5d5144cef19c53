"""Azure Functions entry point: wiring only. Each entry point lives in shared/functions/ as a Blueprint.

HTTP triggers use the FastAPI types of azurefunctions-extensions-http-fastapi (SSE streaming needs them, and
then every HTTP trigger of the app must use them). Queue triggers read base64 text (host.json
messageEncoding) that shared.storage writes with TextBase64EncodePolicy.
"""

import azure.functions as func

from shared.functions import (
    console,
    executor,
    poll,
    provider_events,
    responses_api,
    retention,
    runs_api,
    sweep,
    webhook_delivery,
)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (
    runs_api.bp,
    responses_api.bp,
    provider_events.bp,
    poll.bp,
    webhook_delivery.bp,
    sweep.bp,
    retention.bp,
    executor.bp,
    console.bp,
):
    app.register_functions(blueprint)
