"""Run one function invocation the way the worker does, with the host's log lines.

- `async def` functions run on the host's single event loop (so SDK clients created once stay usable);
- plain functions run in a thread pool (PYTHON_THREADPOOL_THREAD_COUNT, like the worker);
- host.json `functionTimeout` cancels an async invocation (a sync one keeps its thread but is reported failed);
- `deliver` (HTTP v2) sends the response inside the invocation: a streamed response keeps the invocation
  running until the stream ends (functionTimeout included), and a failed delivery fails the invocation, as in
  Azure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import azure.functions as func
from azure.functions import _abc as azf_abc

from .loader import FunctionSpec

log = logging.getLogger("functions_host")


class _TraceContext(azf_abc.TraceContext):
    def __init__(self) -> None:
        self._traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._traceparent

    @property
    def attributes(self) -> dict:
        return {}


class _RetryContext(azf_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self):
        return None


class InvocationContext(func.Context):
    _tls = threading.local()

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._trace = _TraceContext()
        self._retry = _RetryContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self):
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self):
        return self._trace

    @property
    def retry_context(self):
        return self._retry


_HOST_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_traceback(exc: BaseException) -> str:
    """The exception with the host's own frames (and the thread pool's) left out."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [
            f
            for f in te.stack
            if not f.filename.startswith(_HOST_DIR)
            and "concurrent/futures" not in f.filename
            and "/asyncio/" not in f.filename
        ]
    )
    return "".join(te.format()).rstrip()


class FunctionTimeoutError(Exception):
    pass


class Invoker:
    def __init__(self, *, function_timeout: float | None) -> None:
        threads = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT")
        self.executor = ThreadPoolExecutor(
            max_workers=int(threads) if threads else None, thread_name_prefix="functions-sync"
        )
        self.function_timeout = function_timeout
        self.running: set[asyncio.Task] = set()
        self.executed: Counter = Counter()  # (function, "succeeded" | "failed") -> invocations ended
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return len(self.running)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def invoke(
        self,
        spec: FunctionSpec,
        trigger_value: Any,
        *,
        reason: str,
        deliver: Callable[[Any], Awaitable[None]] | None = None,
    ) -> Any:
        """Invoke and return the function's result; raise its exception (already logged) on failure.

        With `deliver`, the invocation ends when `deliver(result)` returns (the response is sent).
        """
        invocation_id = str(uuid.uuid4())
        kwargs = {spec.trigger_arg: trigger_value}
        if spec.wants_context:
            kwargs["context"] = InvocationContext(invocation_id, spec.name, spec.directory)
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
        started = time.monotonic()
        task = asyncio.ensure_future(self._call(spec, kwargs, invocation_id, deliver))
        self.running.add(task)
        self._idle.clear()
        try:
            if self.function_timeout is not None:
                try:
                    result = await asyncio.wait_for(asyncio.shield(task), self.function_timeout)
                except TimeoutError:
                    task.cancel()
                    raise FunctionTimeoutError(
                        f"Timeout value of {self.function_timeout:g}s exceeded by function 'Functions.{spec.name}' "
                        f"(Id: '{invocation_id}')."
                    ) from None
            else:
                result = await asyncio.shield(task)
        except BaseException as exc:
            if not task.done() and not isinstance(exc, FunctionTimeoutError):
                task.cancel()  # the waiter was cancelled (host stopping): cancel an async invocation too
            ms = int((time.monotonic() - started) * 1000)
            self.executed[spec.name, "failed"] += 1
            log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", spec.name, invocation_id, ms)
            if isinstance(exc, asyncio.CancelledError):
                log.error("Invocation %s was cancelled (host stopping).", invocation_id)
            else:
                log.error("System.Exception: Result: Failure\nException: %s", _user_traceback(exc))
            raise
        finally:
            self._forget(task)
        ms = int((time.monotonic() - started) * 1000)
        self.executed[spec.name, "succeeded"] += 1
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", spec.name, invocation_id, ms)
        return result

    def counts(self) -> dict[str, dict[str, int]]:
        """Invocations ended since the host started, per function: {"poll_run": {"succeeded": n, "failed": m}}."""
        out: dict[str, dict[str, int]] = {}
        for (name, outcome), count in sorted(self.executed.items()):
            out.setdefault(name, {"succeeded": 0, "failed": 0})[outcome] = count
        return out

    def _forget(self, task: asyncio.Task) -> None:
        if task.done():
            self.running.discard(task)
        else:
            task.add_done_callback(self._discard)
        if not self.running:
            self._idle.set()

    def _discard(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        if not self.running:
            self._idle.set()

    async def _call(
        self, spec: FunctionSpec, kwargs: dict, invocation_id: str, deliver: Callable[[Any], Awaitable[None]] | None
    ) -> Any:
        result = await self._run_user_function(spec, kwargs, invocation_id)
        if deliver is not None:
            await deliver(result)
        return result

    async def _run_user_function(self, spec: FunctionSpec, kwargs: dict, invocation_id: str) -> Any:
        if spec.is_async:
            InvocationContext._tls.invocation_id = invocation_id
            return await spec.user_function(**kwargs)
        loop = asyncio.get_running_loop()

        def run() -> Any:
            InvocationContext._tls.invocation_id = invocation_id
            return spec.user_function(**kwargs)

        return await loop.run_in_executor(self.executor, run)

    def cancel_all(self) -> int:
        for task in list(self.running):
            task.cancel()
        return len(self.running)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
