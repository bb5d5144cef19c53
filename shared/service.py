"""The background-runs service: start, read, poll by token, cancel, sessions.

Start order (so no run is ever lost or silent): record the run, create the provider response
(background, our run id in its metadata, never retried by the SDK), save the response id, queue the
first poll. A start cut between those steps is found by the sweeper and ends `failed`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from .errors import ApiError, not_found
from .idempotency import IdempotencyStore
from .lifecycle import Lifecycle, failure_result, next_poll_delay, result_from_response
from .provider import classify
from .run_requests import RunRequest
from .runs import Run, RunStore, now
from .sessions import SessionConflict, SessionStore
from .settings import Settings
from .storage import Storage
from .tokens import TokenCodec
from .webhooks import DestinationRefused, check_url, resolve_and_vet

log = logging.getLogger("runs.service")

RUN_ID_PREFIX = "run_"


@dataclass
class Outcome:
    """The started (or, for a repeated Idempotency-Key, the existing) run."""

    run: Run
    provider_stream: Any = None  # for stream=true starts: the create call's open event stream


class PrefixedStream:
    """The provider's create stream with its already-read first event put back in front."""

    def __init__(self, first: Any, stream: Any) -> None:
        self._first, self._stream = first, stream

    async def __aenter__(self) -> "PrefixedStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stream.close()

    async def __aiter__(self):
        yield self._first
        async for event in self._stream:
            yield event


class RunService:
    def __init__(self, settings: Settings, storage: Storage, provider: AsyncOpenAI) -> None:
        self.settings = settings
        self.storage = storage
        self.provider = provider
        self.tokens = TokenCodec(settings.token_key)
        self.store = RunStore(storage)
        self.sessions = SessionStore(storage.sessions)
        self.idempotency = IdempotencyStore(storage.idempotency)
        self.lifecycle = Lifecycle(settings, storage, self.store, self.sessions)
        # A start takes at most one provider call plus a few storage writes; a run still without a
        # provider response well after that was interrupted (crash) and is failed by the sweeper.
        self.start_grace = 2 * settings.provider.timeout_seconds + 5

    # -- views ---------------------------------------------------------------------------------------
    def view(self, run: Run) -> dict[str, Any]:
        """The run as the API shows it."""
        result = run.result or {}
        view = {
            "id": run.id, "object": "run", "status": run.status,
            "continuation_token": None if run.is_terminal else self.tokens.encode(run.id),
            "session_id": run.session_id, "model": run.model,
            "created_at": run.created_at, "completed_at": run.completed_at,
            "output_text": result.get("output_text", "") if run.is_terminal else None,
            "output": result.get("output", []) if run.is_terminal else [],
            "error": result.get("error"), "incomplete_details": result.get("incomplete_details"),
            "usage": result.get("usage"), "metadata": run.metadata,
            "required_action": result.get("required_action"),
            "provider_response_id": run.response_id,
            "stream": run.stream,
        }
        if run.webhook_url:
            webhook = run.webhook or {"state": "waiting", "attempts": []}
            view["webhook"] = {"url": run.webhook_url, "state": webhook["state"], "id": webhook.get("id"),
                               "attempts": webhook.get("attempts", [])}
        return view

    def retry_after(self, run: Run) -> int:
        """Seconds until the poller will next look (what a polling caller should wait)."""
        if run.next_poll_at is None:
            return max(1, round(self.settings.poll_initial_delay))
        return max(1, min(round(run.next_poll_at - now() + 0.5), int(self.settings.poll_max_delay)))

    # -- reads ---------------------------------------------------------------------------------------
    async def get(self, run_id: str) -> Run:
        run = await self.store.get(run_id) if _valid_id(RUN_ID_PREFIX, run_id) else None
        if run is None:
            raise not_found("run", run_id)
        return run

    async def get_by_token(self, token: str) -> Run:
        claims = self.tokens.decode(token)
        return await self.get(claims.run_id)

    # -- start ---------------------------------------------------------------------------------------
    async def start(self, request: RunRequest, *, idempotency_key: str | None = None,
                    wait_seconds: float = 0.0) -> Outcome:
        if request.webhook_url:
            if not self.settings.webhook_secrets:
                raise ApiError(400, "webhooks_disabled", "This service has no webhook signing secret configured, "
                               "so it cannot send webhooks.", param="webhook_url")
            await self._vet_webhook(request.webhook_url)
        run_id = RUN_ID_PREFIX + secrets.token_hex(12)
        if idempotency_key is not None:
            existing = await self._claim(idempotency_key, request, run_id)
            if existing is not None:
                return Outcome(existing)
        try:
            run, stream = await self._start(run_id, request)
        except BaseException:
            if idempotency_key is not None:
                try:
                    await self.idempotency.release(idempotency_key)
                except Exception:  # noqa: BLE001 - the key is taken over after the start grace anyway
                    log.warning("could not release Idempotency-Key of failed start %s", run_id)
            raise
        if wait_seconds > 0 and not run.is_terminal:
            run = await self._wait_briefly(run, min(wait_seconds, self.settings.max_prefer_wait))
        return Outcome(run, provider_stream=stream)

    async def _claim(self, key: str, request: RunRequest, run_id: str) -> Run | None:
        """Claim the Idempotency-Key for `run_id`; the run that already holds it, if any."""
        claim = await self.idempotency.claim(key, request.fingerprint(), run_id)
        if claim.is_new:
            return None
        existing = await self.store.get(claim.run_id)
        if existing is not None:
            return existing
        # The key is held by a start that has not recorded its run. Right after the claim that is a
        # start in progress; after the start grace it is a start that died, and the key is free again.
        if now() - claim.claimed_at > self.start_grace and await self.idempotency.take_over(
                key, request.fingerprint(), run_id, claim):
            return None
        raise ApiError(409, "idempotency_key_busy", "A run with this Idempotency-Key is being started; retry shortly.",
                       param="Idempotency-Key", headers={"Retry-After": "1"})

    async def _start(self, run_id: str, request: RunRequest) -> tuple[Run, Any]:
        session = await self._reserve_session(request.session_id, run_id) if request.session_id else None
        created_at = now()
        params = self._provider_params(request, run_id, session.last_response_id if session else None)
        run = Run(id=run_id, status="queued", created_at=created_at, model=params["model"], request=params,
                  session_id=request.session_id, metadata=request.metadata, stream=request.stream,
                  next_poll_at=created_at + self.start_grace,
                  deadline_at=created_at + min(request.deadline_seconds or self.settings.run_deadline,
                                               self.settings.run_deadline),
                  webhook_url=request.webhook_url)
        await self.store.create(run)
        if session:
            await self.sessions.add_run(session.id, run_id, created_at)
        stream = None
        try:
            response = await self.provider.responses.create(**params, background=True)
            if request.stream:  # the reply is an event stream; its first event carries the response
                stream, first = response, await response.__anext__()
                response, stream = first.response, PrefixedStream(first, response)
        except Exception as error:  # noqa: BLE001 - every provider failure is mapped below
            if stream is not None:
                await stream.close()
            await self._abandon(run)
            raise self._start_error(error) from None
        run.response_id = response.id
        try:
            if response.status in ("queued", "in_progress"):
                delay = next_poll_delay(self.settings, 0)
                if not await self.lifecycle.schedule_poll(run, delay, status=response.status):
                    run = await self.get(run_id)  # cancelled while starting: stop the provider run too
                    if run.status == "cancelled":
                        await self._cancel_at_provider(response.id)
                return run, stream
            status, result = result_from_response(response)
            return await self.lifecycle.finish(run, status, result), stream
        except Exception:
            # Storage failed after the provider accepted: stop that response rather than leave an orphan;
            # the run (never saved with its response id) is failed by the sweeper as an interrupted start.
            log.warning("run %s: storage failed after the provider accepted %s; cancelling it", run_id, response.id)
            try:
                await self._cancel_at_provider(response.id)
            except Exception:  # noqa: BLE001 - best effort
                pass
            if stream is not None:
                await stream.__aexit__(None, None, None)
            raise

    def _provider_params(self, request: RunRequest, run_id: str, previous_response_id: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.settings.provider.default_model,
            "input": request.input,
            "metadata": {**request.metadata, "bg_run_id": run_id},
            "store": True,
        }
        optional = {"instructions": request.instructions, "tools": request.tools or None,
                    "max_output_tokens": request.max_output_tokens, "reasoning": request.reasoning,
                    "previous_response_id": previous_response_id}
        params.update({k: v for k, v in optional.items() if v is not None})
        if request.stream:
            params["stream"] = True
        return params

    async def _abandon(self, run: Run) -> None:
        """The provider refused the create: leave nothing half-written."""
        await self.store.delete(run.id)
        if run.session_id:
            await self.lifecycle.advance_session(run)

    @staticmethod
    def _start_error(error: Exception) -> ApiError:
        if not isinstance(error, openai.OpenAIError):  # e.g. the create stream ended before its first event
            return ApiError(503, "provider_unavailable", f"The model provider did not answer ({type(error).__name__}).",
                            headers={"Retry-After": "5"})
        failure = classify(error)
        if failure.transient:
            retry = str(max(1, round(failure.retry_after or 5)))
            return ApiError(503, "provider_unavailable", f"The model provider is unavailable: {failure.message}",
                            headers={"Retry-After": retry})
        if failure.status in (400, 404, 422):
            return ApiError(400, "provider_rejected", f"The model provider rejected the request: {failure.message}")
        return ApiError(502, "provider_error", f"The model provider refused the request ({failure.status}): "
                        f"{failure.message}")

    async def _vet_webhook(self, url: str) -> None:
        try:
            parsed = check_url(url, allow_http=self.settings.webhook_allow_http,
                               allow_private=self.settings.webhook_allow_private)
            await resolve_and_vet(parsed, allow_private=self.settings.webhook_allow_private)
        except DestinationRefused as refused:
            raise ApiError(400, "invalid_webhook_url", f"webhook_url refused: {refused}", param="webhook_url") from None

    async def _reserve_session(self, session_id: str, run_id: str):
        for _ in range(5):
            session = await self.sessions.get(session_id)
            if session is None:
                raise not_found("session", session_id)
            if session.active_run_id:
                active = await self.store.get(session.active_run_id)
                if active is not None and not active.is_terminal:
                    raise ApiError(409, "session_busy", f"Session {session_id!r} has a run in progress "
                                   f"({active.id}); wait for it or cancel it.", param="session_id")
                if active is not None:  # ended but the session was not advanced (crash): repair it now
                    await self.lifecycle.advance_session(active)
                    continue
            session.active_run_id = run_id
            try:
                await self.sessions.save(session)
                return session
            except SessionConflict:
                continue
        raise ApiError(409, "session_busy", f"Session {session_id!r} is being changed concurrently; retry.",
                       param="session_id")

    async def _wait_briefly(self, run: Run, seconds: float) -> Run:
        """`Prefer: wait=N`: look at the provider a few times so a quick run answers 200 at once."""
        deadline = now() + seconds
        delay = 0.25
        while now() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - now())))
            delay = min(delay * 1.5, 2.0)
            try:
                response = await self.provider.responses.retrieve(run.response_id)
            except Exception:  # noqa: BLE001 - the poller will retry; this is only a shortcut
                break
            if response.status not in ("queued", "in_progress"):
                fresh = await self.store.get(run.id)
                if fresh is None or fresh.is_terminal:
                    return fresh or run
                status, result = result_from_response(response)
                return await self.lifecycle.finish(fresh, status, result)
        return await self.get(run.id)

    # -- cancel --------------------------------------------------------------------------------------
    async def _cancel_at_provider(self, response_id: str) -> Any:
        """The provider's view after a cancel; None when it no longer knows the response (404)."""
        try:
            return await self.provider.responses.cancel(response_id)
        except Exception as error:  # noqa: BLE001
            failure = classify(error)
            if failure.transient:
                raise ApiError(503, "provider_unavailable", f"Could not cancel at the provider: {failure.message}",
                               headers={"Retry-After": str(max(1, round(failure.retry_after or 2)))}) from None
            return None

    async def cancel(self, run_id: str) -> Run:
        run = await self.get(run_id)
        if run.is_terminal:
            return run
        if run.response_id:
            response = await self._cancel_at_provider(run.response_id)
            if response is not None and response.status not in ("queued", "in_progress", "cancelled"):
                status, result = result_from_response(response)  # it finished before the cancel landed
                return await self.lifecycle.finish(run, status, result)
        return await self.lifecycle.finish(run, "cancelled", {**failure_result("cancelled", "Cancelled by the caller."),
                                                              "error": None})

    # -- sessions ------------------------------------------------------------------------------------
    async def create_session(self) -> dict[str, Any]:
        session = await self.sessions.create()
        return {"id": session.id, "object": "session", "created_at": session.created_at}

    async def session_view(self, session_id: str) -> dict[str, Any]:
        session = await self.sessions.get(session_id) if _valid_id("sess_", session_id) else None
        if session is None:
            raise not_found("session", session_id)
        runs = await asyncio.gather(*(self.store.get(rid) for rid in await self.sessions.run_ids(session_id)))
        return {"id": session.id, "object": "session", "created_at": session.created_at,
                "last_response_id": session.last_response_id, "active_run_id": session.active_run_id,
                "runs": [self.view(r) for r in runs if r is not None]}


def _valid_id(prefix: str, value: str) -> bool:
    """Our ids are a prefix and hex; anything else cannot exist (and never reaches storage keys)."""
    return value.startswith(prefix) and len(value) <= 64 and value.replace("_", "").isalnum()


__all__ = ["RunService", "Outcome"]
