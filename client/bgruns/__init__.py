"""Client of the background-runs service, shaped like Agent Framework's background responses.

    from bgruns import AsyncClient
    client = AsyncClient("http://127.0.0.1:7071")
    session = await client.create_session()
    response = await client.run("Hello", session=session, options={"background": True})
    while response.continuation_token is not None:
        await asyncio.sleep(2)
        response = await client.run(session=session, options={"continuation_token": response.continuation_token})
    print(response.text)

`Client` is the blocking equivalent. `verify_webhook` checks webhook deliveries.
"""
from ._async_client import AsyncClient, AsyncRunStream
from ._sync_client import Client, RunStream
from .errors import (
    APIConnectionError,
    APIError,
    BgrunsError,
    StreamInterrupted,
    WaitTimeout,
    WebhookVerificationError,
)
from .types import Response, Session, Update
from .webhooks import verify_webhook

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AsyncRunStream",
    "BgrunsError",
    "Client",
    "Response",
    "RunStream",
    "Session",
    "StreamInterrupted",
    "Update",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
