"""Async Azure Storage clients (Table, Queue, Blob), built once from the AzureWebJobsStorage settings.

The same settings the Functions host uses for its triggers: a connection string (Azurite) or identity-based
service URIs with a managed identity. Queue messages are base64 text on both sides (TextBase64EncodePolicy
here, the trigger's default `messageEncoding: base64` in host.json).

Every storage request is counted by the function that made it (`counting_as`), because on Flex
Consumption HTTP, queue and timer functions run on separate instances: a process's counts describe only
the functions it served.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.transport import AsyncHttpResponse, HttpRequest
from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from .settings import (
    EVENTS_TABLE,
    EXECUTE_QUEUE,
    IDEMPOTENCY_TABLE,
    INDEX_TABLE,
    PAYLOAD_CONTAINER,
    POLL_QUEUE,
    RUNS_TABLE,
    SESSIONS_TABLE,
    WEBHOOK_QUEUE,
    StorageSettings,
)
from .telemetry import storage_response_hook

# Storage requests of this process: (function, "service.METHOD") -> count (benchmarks and /api/metrics read it).
STORAGE_REQUESTS: Counter[tuple[str, str]] = Counter()
_FUNCTION: ContextVar[str] = ContextVar("storage_counted_function", default="(startup)")


def counting_as(function_name: str) -> None:
    """Attribute this task's storage requests to `function_name` (set by each entry point)."""
    _FUNCTION.set(function_name)


def _counter(service: str) -> Callable[[PipelineRequest[HttpRequest]], None]:
    """An azure-core `raw_request_hook` (every storage client honours it, unlike per_call_policies)."""

    def count(request: PipelineRequest[HttpRequest]) -> None:
        STORAGE_REQUESTS[(_FUNCTION.get(), f"{service}.{request.http_request.method}")] += 1

    return count


def _credential(settings: StorageSettings) -> AsyncTokenCredential:
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if settings.client_id:
        return ManagedIdentityCredential(client_id=settings.client_id)
    return DefaultAzureCredential()


# -- what the service's stores and queues need of storage (the Azure clients; in unit tests, tests/unit/fakes.py) --
class Queue(Protocol):
    """A queue the service sends JSON messages to, optionally invisible for a delay."""

    async def send(self, message: dict[str, Any], delay_seconds: float = 0.0) -> None: ...


class Table(Protocol):
    """The calls the stores make on one table (azure.data.tables.aio.TableClient)."""

    # Plain methods returning awaitables, as the SDK's decorated methods are typed (an `async def` fake fits too).
    def create_entity(self, entity: Mapping[str, Any], **kwargs: Any) -> Awaitable[Mapping[str, Any]]: ...
    def get_entity(self, partition_key: str, row_key: str, **kwargs: Any) -> Awaitable[Any]: ...
    def update_entity(
        self, entity: Mapping[str, Any], mode: Any = ..., **kwargs: Any
    ) -> Awaitable[Mapping[str, Any]]: ...
    def upsert_entity(
        self, entity: Mapping[str, Any], mode: Any = ..., **kwargs: Any
    ) -> Awaitable[Mapping[str, Any]]: ...
    def delete_entity(self, partition_key: str, row_key: str, **kwargs: Any) -> Awaitable[None]: ...
    def query_entities(self, query_filter: str, **kwargs: Any) -> AsyncIterator[Any]: ...
    def submit_transaction(self, operations: Iterable[Any], **kwargs: Any) -> Awaitable[list[Mapping[str, Any]]]: ...


class BlobContainer(Protocol):
    """The calls the stores make on the payload container (azure.storage.blob.aio.ContainerClient)."""

    def upload_blob(self, name: str, data: bytes, **kwargs: Any) -> Awaitable[Any]: ...
    def download_blob(self, blob: str, **kwargs: Any) -> Awaitable[Any]: ...
    def delete_blob(self, blob: str, **kwargs: Any) -> Awaitable[None]: ...
    def list_blobs(self, name_starts_with: str | None = None, **kwargs: Any) -> AsyncIterator[Any]: ...


class _Closeable(Protocol):
    async def close(self) -> None: ...


class _Policies(TypedDict):
    """The azure-core options every storage client gets (they reach the pipeline through **kwargs)."""

    raw_request_hook: Callable[[PipelineRequest[HttpRequest]], None]
    raw_response_hook: Callable[[PipelineResponse[HttpRequest, AsyncHttpResponse]], None]
    use_env_settings: bool


class _Codec(TypedDict):
    message_encode_policy: TextBase64EncodePolicy
    message_decode_policy: TextBase64DecodePolicy


class MessageQueue:
    """One queue the service sends JSON messages to, optionally invisible for a delay (whole seconds)."""

    def __init__(self, client: QueueClient) -> None:
        self.client = client

    async def send(self, message: dict[str, Any], delay_seconds: float = 0.0) -> None:
        await self.client.send_message(
            json.dumps(message, separators=(",", ":")), visibility_timeout=max(0, math.ceil(delay_seconds)) or None
        )


@dataclass
class Storage:
    runs: TableClient
    sessions: TableClient
    idempotency: TableClient
    index: TableClient
    poll_queue: MessageQueue
    webhook_queue: MessageQueue
    payloads: ContainerClient
    events: TableClient  # executor runs' event logs
    execute_queue: MessageQueue  # executor runs to (re)start
    _closeables: tuple[_Closeable, ...]

    async def close(self) -> None:
        for client in self._closeables:
            await client.close()

    async def ensure_resources(self) -> None:
        """Create tables, queues and the container if missing (Bicep creates them in Azure)."""

        async def quietly(coro: Awaitable[object]) -> None:
            try:
                await coro
            except ResourceExistsError:
                pass

        await asyncio.gather(
            *(quietly(t.create_table()) for t in (self.runs, self.sessions, self.idempotency, self.index, self.events)),
            *(quietly(q.client.create_queue()) for q in (self.poll_queue, self.webhook_queue, self.execute_queue)),
            quietly(self.payloads.create_container()),
        )


def open_storage(settings: StorageSettings) -> Storage:
    def policies(service: str) -> _Policies:
        # use_env_settings=False: with it on, aiohttp reads ~/.netrc and the proxy environment in a worker
        # thread on every request (two thread hops per storage call, measured at ~3 ms of CPU per poll step).
        return _Policies(
            raw_request_hook=_counter(service), raw_response_hook=storage_response_hook(service), use_env_settings=False
        )

    codec = _Codec(message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())
    if settings.connection_string:
        conn = settings.connection_string
        tables = TableServiceClient.from_connection_string(conn, **policies("table"))
        blobs = BlobServiceClient.from_connection_string(conn, **policies("blob"))
        poll = QueueClient.from_connection_string(conn, POLL_QUEUE, **codec, **policies("queue"))
        hooks = QueueClient.from_connection_string(conn, WEBHOOK_QUEUE, **codec, **policies("queue"))
        execute = QueueClient.from_connection_string(conn, EXECUTE_QUEUE, **codec, **policies("queue"))
        extra: tuple[_Closeable, ...] = ()
    else:
        cred = _credential(settings)
        blob_uri, queue_uri, table_uri = settings.service_uris()
        tables = TableServiceClient(table_uri, credential=cred, **policies("table"))
        blobs = BlobServiceClient(blob_uri, credential=cred, **policies("blob"))
        poll = QueueClient(queue_uri, POLL_QUEUE, credential=cred, **codec, **policies("queue"))
        hooks = QueueClient(queue_uri, WEBHOOK_QUEUE, credential=cred, **codec, **policies("queue"))
        execute = QueueClient(queue_uri, EXECUTE_QUEUE, credential=cred, **codec, **policies("queue"))
        extra = (cred,)
    return Storage(
        runs=tables.get_table_client(RUNS_TABLE),
        sessions=tables.get_table_client(SESSIONS_TABLE),
        idempotency=tables.get_table_client(IDEMPOTENCY_TABLE),
        index=tables.get_table_client(INDEX_TABLE),
        poll_queue=MessageQueue(poll),
        webhook_queue=MessageQueue(hooks),
        payloads=blobs.get_container_client(PAYLOAD_CONTAINER),
        events=tables.get_table_client(EVENTS_TABLE),
        execute_queue=MessageQueue(execute),
        _closeables=(tables, blobs, poll, hooks, execute, *extra),
    )
