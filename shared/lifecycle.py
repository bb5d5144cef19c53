"""How a run moves: scheduling the next poll, and ending a run (result stored, token cleared,
session advanced, webhook queued). Shared by the poller, cancel, the sweeper and the stream relay.

The poll chain is guarded by (poll_seq, poll_nonce) on the run: a message is acted on only if it
carries the run's current pair. The next message is sent *before* the run is saved with the new pair,
so a crash in between leaves the old message (not yet deleted by the host) to be redelivered and
retried, and the unsaved new message is dropped as stale. At-least-once delivery can never fork a chain.
"""
from __future__ import annotations

import logging
import math
import random
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .runs import Conflict, Run, RunStore, TERMINAL_STATUSES, now
from .sessions import SessionConflict, SessionStore
from .settings import Settings
from .storage import Storage

log = logging.getLogger("runs.lifecycle")


@dataclass(frozen=True)
class PollMessage:
    run_id: str
    seq: int
    nonce: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, "nonce": self.nonce}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "PollMessage":
        return cls(str(data["run_id"]), int(data["seq"]), str(data["nonce"]))


def next_poll_delay(settings: Settings, poll_count: int, *, retry_after: float | None = None,
                    rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with ±20% jitter, from the initial delay to the cap; a provider's
    Retry-After is honoured (bounded by 10 minutes so one bad header cannot stall a run)."""
    base = min(settings.poll_max_delay, settings.poll_initial_delay * settings.poll_multiplier ** poll_count)
    delay = base * (0.8 + 0.4 * rng())
    if retry_after is not None:
        delay = max(delay, min(retry_after, 600.0))
    return delay


def result_from_response(response: Any) -> tuple[str, dict[str, Any]]:
    """Our status and stored result for a terminal provider response.

    A completed response whose output asks for function calls becomes `requires_action`: the caller
    answers with `function_call_output` items in a new run of the same session."""
    data = response.model_dump(mode="json", exclude_none=False) if hasattr(response, "model_dump") else dict(response)
    output = data.get("output") or []
    calls = [{"call_id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments")}
             for item in output if isinstance(item, dict) and item.get("type") == "function_call"]
    status = data.get("status") or "failed"
    if status == "completed" and calls:
        status = "requires_action"
    text = "".join(part.get("text", "") for item in output if isinstance(item, dict) and item.get("type") == "message"
                   for part in item.get("content") or [] if isinstance(part, dict) and part.get("type") == "output_text")
    return status, {
        "output": output,
        "output_text": text,
        "error": data.get("error"),
        "incomplete_details": data.get("incomplete_details"),
        "usage": data.get("usage"),
        "required_action": {"type": "function_calls", "calls": calls} if status == "requires_action" else None,
    }


def failure_result(code: str, message: str) -> dict[str, Any]:
    return {"output": [], "output_text": "", "error": {"code": code, "message": message},
            "incomplete_details": None, "usage": None, "required_action": None}


class Lifecycle:
    def __init__(self, settings: Settings, storage: Storage, store: RunStore, sessions: SessionStore) -> None:
        self.settings = settings
        self.storage = storage
        self.store = store
        self.sessions = sessions

    async def schedule_poll(self, run: Run, delay: float, *, status: str | None = None) -> bool:
        """Send the next poll message, then save the run with the new chain position.

        Returns False if the run changed meanwhile (the other writer owns the chain now)."""
        delay = max(0.0, min(delay, max(0.0, run.deadline_at - now()) + 0.5))
        message = PollMessage(run.id, run.poll_seq + 1, secrets.token_hex(6))
        await self.storage.enqueue(self.storage.poll_queue, message.to_dict(), math.ceil(delay))
        run.poll_seq, run.poll_nonce = message.seq, message.nonce
        run.poll_count += 1
        run.next_poll_at = now() + delay
        if status:
            run.status = status
        try:
            await self.store.save(run)
        except Conflict:
            log.info("run %s changed while scheduling poll %s; that message is stale", run.id, message.seq)
            return False
        return True

    async def finish(self, run: Run, status: str, result: dict[str, Any]) -> Run:
        """End the run once: store the result, clear the token, advance the session, queue the webhook.

        If another writer ended it first (a cancel racing a completion), theirs stands: terminal is sticky."""
        while True:
            if run.is_terminal:
                return run
            run.status, run.result, run.completed_at = status, result, now()
            run.poll_seq += 1  # every outstanding poll message is now stale
            run.result_stored = False
            if run.webhook_url:
                run.webhook = {"state": "pending", "id": "msg_" + secrets.token_hex(12), "attempts": [], "seq": 0}
                run.webhook_due_at = now()
            try:
                await self.store.save(run)
                break
            except Conflict:
                fresh = await self.store.get(run.id)
                if fresh is None:
                    return run
                run = fresh
        log.info("run %s ended %s", run.id, status)
        await self.advance_session(run)
        if run.webhook:
            await self.enqueue_webhook(run)
        return run

    async def enqueue_webhook(self, run: Run, delay: float = 0.0) -> None:
        await self.storage.enqueue(self.storage.webhook_queue, {"run_id": run.id, "seq": run.webhook["seq"]},
                                   math.ceil(delay))

    async def advance_session(self, run: Run) -> None:
        """The session continues from this run's response (only when it produced one worth continuing)."""
        if not run.session_id:
            return
        for _ in range(5):
            session = await self.sessions.get(run.session_id)
            if session is None:
                return
            changed = False
            if run.status in ("completed", "requires_action", "incomplete") and run.response_id:
                if session.active_run_id in (run.id, None):
                    session.last_response_id, changed = run.response_id, True
            if session.active_run_id == run.id:
                session.active_run_id, changed = None, True
            if not changed:
                return
            try:
                await self.sessions.save(session)
                return
            except SessionConflict:
                continue

    async def with_fresh_run(self, run_id: str, change: Callable[[Run], Awaitable[bool]]) -> Run | None:
        """Apply `change` to the current run, re-reading and retrying on ETag conflicts."""
        for _ in range(5):
            run = await self.store.get(run_id)
            if run is None or not await change(run):
                return run
            try:
                return await self.store.save(run)
            except Conflict:
                continue
        raise Conflict(run_id)


__all__ = ["Lifecycle", "PollMessage", "next_poll_delay", "result_from_response", "failure_result",
           "TERMINAL_STATUSES"]
