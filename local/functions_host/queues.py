"""Queue trigger listener with the storage extension's semantics (QueueListener.cs / QueueProcessor.cs).

Per queue-triggered function:
- receive up to `batchSize` messages with a long visibility (the real host: 10 min; here
  FUNCTIONS_HOST_QUEUE_LEASE_SECONDS, default 600) and renew it every half period while the function runs,
  tracking the new pop receipt, so a long invocation is never delivered twice;
- fetch the next batch once in-flight invocations drop to `newBatchThreshold` (max concurrency =
  batchSize + newBatchThreshold);
- idle polling backs off (randomised exponential, 100 ms .. maxPollingInterval) and resets to the minimum as
  soon as a poll finds messages;
- success: delete. Failure: if dequeueCount >= maxDequeueCount copy the BODY to `<queue>-poison` (created if
  missing) and delete, else make it visible again after `visibilityTimeout`;
- dequeueCount > maxDequeueCount before invoking, or a body that is not valid base64 with
  messageEncoding=base64: straight to poison, the function is not invoked.
Poison copies are written with the same encoding as the trigger queue, so read them with the same decode policy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import random
import re
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage

from .errors import StartupError
from .invoker import Invoker
from .loader import FunctionSpec
from .settings import QueueOptions

log = logging.getLogger("functions_host")

MIN_POLL = 0.1
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def validate_queue_name(name: str, function: str) -> str:
    if not _QUEUE_NAME.match(name):
        raise StartupError(
            f"Function {function}: invalid queue name {name!r} (3-63 characters: lowercase letters, digits, "
            f"single hyphens; the real host refuses it too)"
        )
    return name


def _setting(environ, conn: str, suffix: str) -> str | None:
    for prefix in (conn, f"AzureWebJobs{conn}"):
        for sep in ("__", ":"):
            v = environ.get(f"{prefix}{sep}{suffix}")
            if v:
                return v
    return None


def make_service_client(connection: str, environ=None):
    """An azure.storage.queue.aio QueueServiceClient for a binding `connection` setting name.

    Resolution like the host: the setting itself (or AzureWebJobs<name>) as a connection string, else the
    identity-based prefix `<name>__queueServiceUri` / `__serviceUri` / `__accountName` with `__credential`
    (`managedidentity` -> ManagedIdentityCredential) and `__clientId`; otherwise DefaultAzureCredential.
    """
    from azure.storage.queue.aio import QueueServiceClient

    environ = os.environ if environ is None else environ
    conn = connection or "AzureWebJobsStorage"
    for name in (conn, f"AzureWebJobs{conn}"):
        value = environ.get(name)
        if value:
            return QueueServiceClient.from_connection_string(value), None
    uri = _setting(environ, conn, "queueServiceUri") or _setting(environ, conn, "serviceUri")
    account = _setting(environ, conn, "accountName")
    if not uri and account:
        uri = f"https://{account}.queue.core.windows.net"
    if not uri:
        raise StartupError(
            f"Storage connection '{conn}' is not configured: set app setting {conn} (a connection string) or "
            f"{conn}__queueServiceUri (identity-based)."
        )
    client_id = _setting(environ, conn, "clientId")
    kind = (_setting(environ, conn, "credential") or "").lower()
    if kind == "managedidentity":
        from azure.identity.aio import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    else:
        from azure.identity.aio import DefaultAzureCredential

        credential = (
            DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()
        )
    return QueueServiceClient(account_url=uri, credential=credential), credential


class _Backoff:
    """RandomizedExponentialBackoffStrategy: minimum on success, growing random delays when idle."""

    def __init__(self, maximum: float) -> None:
        self.maximum = max(maximum, MIN_POLL)
        self.current = MIN_POLL
        self.exponent = 0

    def next(self, found: bool) -> float:
        if found:
            self.current, self.exponent = MIN_POLL, 0
            return MIN_POLL
        if self.current < self.maximum:
            self.exponent += 1
            delta = (2**self.exponent - 1) * random.uniform(0.8, 1.2) * MIN_POLL
            self.current = min(self.maximum, MIN_POLL + delta)
        return self.current


class QueueListener:
    def __init__(
        self,
        spec: FunctionSpec,
        queue_name: str,
        connection: str,
        options: QueueOptions,
        invoker: Invoker,
        service_client,
        credential=None,
    ) -> None:
        self.spec = spec
        self.queue_name = queue_name
        self.poison_name = f"{queue_name}-poison"
        self.has_poison = not queue_name.endswith("-poison") and len(self.poison_name) <= 63
        self.options = options
        self.invoker = invoker
        self.service = service_client
        self.credential = credential
        self.queue = service_client.get_queue_client(queue_name)
        self.poison = service_client.get_queue_client(self.poison_name) if self.has_poison else None
        self._poison_ready = False
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self.inflight: dict[asyncio.Task, dict] = {}
        self._task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.queue.create_queue()
        except ResourceExistsError:
            pass
        self._task = asyncio.create_task(self._run(), name=f"queue-listener-{self.spec.name}")
        self._task.add_done_callback(_log_crash)

    def stop_polling(self) -> None:
        self._stop.set()
        self._changed.set()

    async def wait_polling_stopped(self) -> None:
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        await self.service.close()
        if self.credential is not None:
            await self.credential.close()

    # -- polling --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = _Backoff(self.options.max_polling_interval)
        lease = int(self.options.lease_seconds)
        while not self._stop.is_set():
            if len(self.inflight) > self.options.new_batch_threshold:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                batch = []
                async for m in self.queue.receive_messages(
                    messages_per_page=self.options.batch_size,
                    max_messages=self.options.batch_size,
                    visibility_timeout=lease,
                ):
                    batch.append(m)
            except ResourceNotFoundError:
                batch = []
                try:
                    await self.queue.create_queue()
                except ResourceExistsError:
                    pass
            except Exception as exc:  # noqa: BLE001 - keep polling like the host does
                log.warning("Queue '%s': receive failed: %s", self.queue_name, exc)
                batch = []
            if self._stop.is_set() and batch:
                # Stopped while receiving: hand them back untouched (visible again now).
                for m in batch:
                    try:
                        await self.queue.update_message(m.id, m.pop_receipt, visibility_timeout=0)
                    except Exception:  # noqa: BLE001
                        pass
                break
            for m in batch:
                state = {"receipt": m.pop_receipt}
                task = asyncio.create_task(self._process(m, state), name=f"queue-{self.spec.name}-{m.id}")
                self.inflight[task] = state
                task.add_done_callback(self._done)
            delay = backoff.next(bool(batch))
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    def _done(self, task: asyncio.Task) -> None:
        _log_crash(task)
        self.inflight.pop(task, None)
        self._changed.set()

    # -- one message ----------------------------------------------------------------------------------
    def _decode(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            content = content.decode("utf-8")
        content = content or ""
        if self.options.message_encoding == "none":
            return content.encode("utf-8")
        return base64.b64decode("".join(content.split()), validate=True)

    def _encode(self, body: bytes) -> str:
        if self.options.message_encoding == "none":
            return body.decode("utf-8", errors="replace")
        return base64.b64encode(body).decode("ascii")

    async def _process(self, raw, state: dict) -> None:
        max_dq = self.options.max_dequeue_count
        if raw.dequeue_count and raw.dequeue_count > max_dq:
            body = self._safe_decode(raw.content)
            log.warning(
                "Message %s has a dequeue count of %s > MaxDequeueCount %s; moving it to queue '%s' "
                "without invoking the function.",
                raw.id,
                raw.dequeue_count,
                max_dq,
                self.poison_name,
            )
            await self._to_poison(raw, state, body if body is not None else _raw_bytes(raw.content))
            return
        try:
            body = self._decode(raw.content)
        except (binascii.Error, ValueError):
            log.error(
                "Message decoding has failed! Check MessageEncoding settings. MessageId=%s (queue '%s'); "
                "moving it to queue '%s' without invoking the function.",
                raw.id,
                self.queue_name,
                self.poison_name,
            )
            await self._to_poison(raw, state, _raw_bytes(raw.content))
            return
        message = QueueMessage(
            id=raw.id,
            body=body,
            dequeue_count=raw.dequeue_count,
            expiration_time=raw.expires_on,
            insertion_time=raw.inserted_on,
            time_next_visible=raw.next_visible_on,
            pop_receipt=raw.pop_receipt,
        )
        done = asyncio.Event()
        renew = asyncio.create_task(self._keep_invisible(raw.id, state, done))
        ok = False
        try:
            await self.invoker.invoke(self.spec, message, reason=f"New queue message detected on '{self.queue_name}'.")
            ok = True
        except BaseException:  # noqa: BLE001 - logged by the invoker; a failed/cancelled/timed-out run
            ok = False
        finally:
            done.set()  # let an in-flight renewal finish so the pop receipt we hold stays current
            await asyncio.gather(renew, return_exceptions=True)
        try:
            if ok:
                await self.queue.delete_message(raw.id, state["receipt"])
            elif (raw.dequeue_count or 0) >= max_dq:
                if self.has_poison:
                    log.warning(
                        "Message has reached MaxDequeueCount of %s. Moving message to queue '%s'.",
                        max_dq,
                        self.poison_name,
                    )
                    await self._to_poison(raw, state, body)
                # No poison queue possible: leave it invisible, like the host.
            else:
                await self.queue.update_message(
                    raw.id, state["receipt"], visibility_timeout=int(self.options.visibility_timeout)
                )
        except Exception as exc:  # noqa: BLE001
            log.error("Queue '%s': completing message %s failed: %s", self.queue_name, raw.id, exc)

    def _safe_decode(self, content) -> bytes | None:
        try:
            return self._decode(content)
        except (binascii.Error, ValueError):
            return None

    async def _to_poison(self, raw, state: dict, body: bytes) -> None:
        if not self.has_poison:
            return
        if not self._poison_ready:
            try:
                await self.poison.create_queue()
            except ResourceExistsError:
                pass
            self._poison_ready = True
        await self.poison.send_message(self._encode(body))
        await self.queue.delete_message(raw.id, state["receipt"])

    async def _keep_invisible(self, message_id: str, state: dict, done: asyncio.Event) -> None:
        lease = int(self.options.lease_seconds)
        interval = max(self.options.lease_seconds / 2, 0.5)
        while True:
            try:
                await asyncio.wait_for(done.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                updated = await self.queue.update_message(message_id, state["receipt"], visibility_timeout=lease)
                state["receipt"] = updated.pop_receipt
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "Queue '%s': renewing visibility of message %s failed: %s", self.queue_name, message_id, exc
                )


def _raw_bytes(content) -> bytes:
    if isinstance(content, bytes):
        return content
    return (content or "").encode("utf-8")


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Task %s crashed", task.get_name(), exc_info=task.exception())
