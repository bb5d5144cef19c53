"""The composition root: settings read once, clients created once and reused, and each collaborator built
once with exactly what it uses (a few values of the settings, never the whole; the clients it calls, as the
protocols it needs). Entry points ask for the collaborator they serve (`services().poll_step`) and nothing
reaches through one object into another: `Services` holds no settings and no raw client.

Built lazily on the first invocation (inside the worker's event loop, which the async clients bind to). A bad
setting fails that first invocation with a message naming the setting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from openai import AsyncOpenAI
from openai.resources.webhooks.webhooks import AsyncWebhooks  # the type client.webhooks declares

from . import telemetry
from .api.operations import HealthCheck, configuration
from .executor.attempts import Executor
from .executor.backend import BackendRouter, ExecutorBackend
from .executor.event_log import EventLog
from .executor.model_client import Model, ModelClient
from .executor.model_pool import ModelPool, ModelServer
from .provider import DeploymentPool, Member, ResponsesBackend, RunBackend, open_provider
from .provider.incoming_events import ProviderEventVerifier
from .runs.admission import AdmissionRules, RunAdmission
from .runs.callers import CallerKeys
from .runs.cancelling import RunCanceller
from .runs.deleting import RunDeleter
from .runs.ending import RunEnding
from .runs.expiry import RunExpiry
from .runs.idempotency import IdempotencyStore
from .runs.index import RunIndex
from .runs.lifecycle import RunLifecycle
from .runs.listing import RunLister
from .runs.overview import RunOverview
from .runs.pacing import ProviderPacing
from .runs.poll_chain import Backoff, PollScheduler
from .runs.polling import Observer, PollStep, RetrieveObserver, StreamWatcher
from .runs.provider_event_inbox import ProviderEventInbox
from .runs.quotas import CallerQuotas
from .runs.reading import RunReader
from .runs.relay import RelayFactory
from .runs.retention import RetentionPurger
from .runs.sessions import SessionStore
from .runs.starting import RunStarter, StartRules
from .runs.store import RunStore
from .runs.sweeping import Sweeper
from .runs.tokens import TokenCodec
from .runs.views import RunViews
from .runs.waiting import RunWaiter
from .runs.webhook_outbox import WebhookOutbox, WebhookUrls
from .settings import DeploymentSettings, Settings
from .storage import Storage, open_storage
from .webhooks import WebhookSender

log = logging.getLogger("bgruns.composition")
# The HTTP clients log every request at INFO; in Azure each line is an Application Insights record (cost) and on
# the hot paths formatting them is CPU. Our own loggers (bgruns.*) say what matters.
for _chatty in ("httpx", "httpx2", "azure.core.pipeline.policies.http_logging_policy"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)


@dataclass(frozen=True)
class RequestLimits:
    """What the HTTP entry points read of the settings."""

    max_request_bytes: int  # a JSON body's limit (MAX_REQUEST_BYTES)
    max_prefer_wait: float  # the longest `Prefer: wait` holds a start's answer (MAX_PREFER_WAIT_SECONDS)
    max_read_wait: float  # the longest `Prefer: wait` holds a read of a run (MAX_READ_WAIT_SECONDS)
    facade_max_wait: float  # the longest the facade waits for a foreground run (RESPONSES_MAX_WAIT_SECONDS)


@dataclass
class Services:
    """What the entry points serve, each built once: an entry point takes the one it serves. Nothing here is a raw
    client or the settings: those stay inside the collaborators that use them."""

    # the HTTP APIs (shared/functions/runs_api, responses_api, console)
    starter: RunStarter
    reader: RunReader
    waiter: RunWaiter  # long polling: holds a read until its run changes
    views: RunViews
    canceller: RunCanceller
    deleter: RunDeleter
    lister: RunLister
    overview: RunOverview  # the console's extras: webhook lag per run, runs in flight per caller
    relays: RelayFactory
    callers: CallerKeys  # the Responses API facade's callers, by key
    limits: RequestLimits
    health: HealthCheck
    # the triggers (poll, executor, webhook_delivery, provider_events, sweep, retention)
    poll_step: PollStep
    executor: Executor
    outbox: WebhookOutbox
    provider_events: ProviderEventInbox | None  # None: no provider webhook secret configured
    sweeper: Sweeper
    purger: RetentionPurger
    _closers: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def close(self) -> None:
        for close in self._closers:
            await close()


def build(
    settings: Settings,
    storage: Storage,
    backend: RunBackend,
    *,
    model: Model,
    sender: WebhookSender | None = None,
    provider_webhooks: AsyncWebhooks | None = None,
    closers: tuple[Callable[[], Awaitable[None]], ...] = (),
) -> Services:
    """Every collaborator, built once. `backend` is the provider's background mode; `model` the streaming call the
    executor makes (executor.model_client.ModelClient); runs go to one or the other by RUN_BACKEND (and, once
    started, by their response id). `sender` delivers webhooks (built from the settings when not given; none
    when no signing secret is set); `provider_webhooks` is the openai client's webhook helper resource (verifies
    the provider's events); `closers` release the clients."""
    traced = telemetry.traced_backend(backend, settings.provider.kind)  # a span and a count per provider call
    store = RunStore(storage.runs, storage.payloads)
    sessions = SessionStore(storage.sessions)
    idempotency = IdempotencyStore(storage.idempotency)
    index = RunIndex(storage.index)
    tokens = TokenCodec(settings.token_keys)
    events = EventLog(storage.events, storage.payloads)
    executor_backend = ExecutorBackend(
        events, store, storage.execute_queue, model, stale_seconds=settings.executor.stale_seconds
    )
    router = BackendRouter(traced, executor_backend, settings.executor.backend)
    backoff = Backoff(settings.poll_initial_delay, settings.poll_max_delay, settings.poll_multiplier)
    chain_backoff, observer = _completion_strategy(settings, router, backoff)
    scheduler = PollScheduler(store, storage.poll_queue)
    start_grace = 2 * settings.provider.timeout_seconds + 5
    quotas = CallerQuotas(storage.index, settings.quotas, start_grace=start_grace)
    lifecycle = RunLifecycle(
        store,
        sessions,
        index,
        storage.webhook_queue,
        settings.retention_seconds,
        inline_safety_delay=settings.webhook_timeout + 5,
        quotas=quotas,
    )
    views = RunViews(
        tokens,
        poll_initial_delay=settings.poll_initial_delay,
        poll_max_delay=settings.poll_max_delay,
        ends_seen_at_once=settings.completion.strategy in ("push", "watch"),
    )
    reader = RunReader(store, sessions, tokens, settings.retention_seconds)
    if sender is None and settings.webhook_secrets:
        sender = WebhookSender(
            settings.webhook_secrets,
            timeout=settings.webhook_timeout,
            allow_http=settings.webhook_allow_http,
            allow_private=settings.webhook_allow_private,
        )
    outbox = WebhookOutbox(store, reader, index, sender, storage.webhook_queue, views, settings.webhook_schedule)
    ending = RunEnding(lifecycle, outbox)
    expiry = RunExpiry(router, ending, scheduler, backoff)
    rules = StartRules(
        default_model=settings.provider.default_model,
        run_deadline=settings.run_deadline,
        max_prefer_wait=settings.max_prefer_wait,
        retention_seconds=settings.retention_seconds,
        start_grace=start_grace,
        create_streaming=settings.completion.strategy == "watch",
        remember_responses=settings.completion.strategy == "push",
    )
    webhook_urls = WebhookUrls(
        enabled=bool(settings.webhook_secrets),
        allow_http=settings.webhook_allow_http,
        allow_private=settings.webhook_allow_private,
    )
    pacing = ProviderPacing(
        storage.index,
        settings.pacing,
        row_budgets={d.name: (d.requests_per_minute, d.tokens_per_minute) for d in settings.deployments},
        weight_of=lambda caller: settings.quotas.of(caller).weight,
    )
    admission = RunAdmission(
        AdmissionRules(
            settings.admission_max_wait, rules.start_grace, rules.create_streaming, rules.remember_responses
        ),
        store,
        router,
        index,
        scheduler,
        backoff,
        ending,
        pacing,
    )
    starter = RunStarter(
        rules,
        store,
        sessions,
        idempotency,
        index,
        router,
        webhook_urls,
        scheduler,
        chain_backoff,
        ending,
        lifecycle,
        quotas,
        admission,
    )
    canceller = RunCanceller(reader, router, ending, store)
    lister = RunLister(index, store)
    secrets = settings.completion.provider_webhook_secrets
    inbox = (
        ProviderEventInbox(ProviderEventVerifier(provider_webhooks, secrets), index, store, router, ending, scheduler)
        if secrets and provider_webhooks is not None
        else None
    )
    return Services(
        starter=starter,
        reader=reader,
        waiter=RunWaiter(store.changes),
        views=views,
        canceller=canceller,
        deleter=RunDeleter(reader, canceller, router, store, index, sessions, settings.retention_seconds),
        lister=lister,
        overview=RunOverview(lister, store, index, quotas, pacing),
        relays=RelayFactory(
            store,
            router,
            ending,
            views,
            max_seconds=settings.stream_max_seconds,
            keepalive_seconds=settings.stream_keepalive_seconds,
            fallback_max_delay=settings.poll_max_delay,
        ),
        callers=CallerKeys(settings.facade.api_keys),
        limits=RequestLimits(
            max_request_bytes=settings.max_request_bytes,
            max_prefer_wait=settings.max_prefer_wait,
            max_read_wait=settings.max_read_wait,
            facade_max_wait=settings.facade.max_wait_seconds,
        ),
        health=HealthCheck(configuration(settings), storage.runs, _breakers(settings, backend, model)),
        poll_step=PollStep(
            store, observer, expiry, ending, scheduler, chain_backoff, retry_backoff=backoff, admission=admission
        ),
        executor=Executor(store, events, ending, model, settings.executor),
        outbox=outbox,
        provider_events=inbox,
        sweeper=Sweeper(
            store,
            index,
            ending,
            expiry,
            lifecycle,
            scheduler,
            storage.webhook_queue,
            grace=settings.sweep_grace,
            start_grace=rules.start_grace,
            webhook_slack=settings.webhook_timeout + settings.sweep_grace,
            quotas=quotas,
        ),
        purger=RetentionPurger(store, sessions, idempotency, index, settings.retention_seconds, events=events),
        _closers=(*((sender.aclose,) if sender else ()), *closers),
    )


def _completion_strategy(settings: Settings, backend: RunBackend, poll_backoff: Backoff) -> tuple[Backoff, Observer]:
    """How the poll chain learns that a response ended: the spacing of its steps and its observer."""
    completion = settings.completion
    if completion.strategy == "push":  # the provider's webhooks end runs; the chain is a slow safety net, after one
        # early look (the provider sends no event when it begins a run: that look is what moves it to in_progress)
        return (
            Backoff(
                completion.safety_poll_initial,
                completion.safety_poll_max,
                settings.poll_multiplier,
                first=settings.poll_initial_delay,
            ),
            RetrieveObserver(backend),
        )
    if completion.strategy == "watch":  # each step holds the stream for a window; the next starts at once
        return Backoff(0.0, 0.0, 1.0), StreamWatcher(backend, completion.watch_window)
    return poll_backoff, RetrieveObserver(backend)


def _breakers(settings: Settings, backend: RunBackend, model: Model) -> Callable[[], dict[str, str]] | None:
    """What health shows as the circuit breakers: those of the pool new runs go to (the executor's servers, or the
    background deployments)."""
    if settings.executor.backend == "executor" and isinstance(model, ModelPool):
        return model.state
    return backend.state if isinstance(backend, DeploymentPool) else None


def open_clients(settings: Settings, provider: AsyncOpenAI) -> dict[str, AsyncOpenAI]:
    """A client per deployment of PROVIDER_DEPLOYMENTS (created once, shared by the background pool and the
    executor's); unset: the one deployment, `default`, on the service's own provider client."""
    return {d.name: provider if d.implicit else open_provider(d.provider) for d in settings.deployments}


def open_model_pool(settings: Settings, clients: dict[str, AsyncOpenAI]) -> ModelPool:
    """The executor's model servers: a ModelClient per deployment (executor.model_pool); one deployment alone is
    the simple default (its breaker never opens)."""

    def model_client(d: DeploymentSettings) -> ModelClient:
        return ModelClient(
            clients[d.name],
            api=settings.executor.api,
            idle_timeout=settings.executor.idle_timeout_seconds,
            connect_timeout=d.provider.timeout_seconds,
            emulator_knobs=d.provider.kind == "emulator",
        )

    if any(d.implicit for d in settings.deployments):
        (only,) = settings.deployments
        return ModelPool.single(model_client(only), only.name)
    return ModelPool(
        [ModelServer(d.name, model_client(d), d.model, d.priority, d.weight) for d in settings.deployments]
    )


def open_pool(
    settings: Settings, clients: dict[str, AsyncOpenAI]
) -> tuple[DeploymentPool, tuple[Callable[[], Awaitable[None]], ...]]:
    """The pool of PROVIDER_DEPLOYMENTS on their clients (open_clients). Also the closers of the clients that are
    not the service's own provider client."""
    members = [
        Member(
            d.name,
            ResponsesBackend(clients[d.name]),
            model=d.model,
            priority=d.priority,
            weight=d.weight,
            requests_per_minute=d.requests_per_minute,
            tokens_per_minute=d.tokens_per_minute,
        )
        for d in settings.deployments
    ]
    implicit = any(d.implicit for d in settings.deployments)
    closers = tuple(clients[d.name].close for d in settings.deployments if not d.implicit)
    return DeploymentPool(members, implicit=implicit), closers


_services: Services | None = None
_lock = asyncio.Lock()


async def services() -> Services:
    global _services
    if _services is None:
        async with _lock:
            if _services is None:
                settings = Settings.from_env()
                storage = open_storage(settings.storage)
                provider = open_provider(settings.provider)
                try:
                    await storage.ensure_resources()
                except BaseException:  # a failed cold start leaks nothing: the next invocation builds afresh
                    await provider.close()
                    await storage.close()
                    raise
                clients = open_clients(settings, provider)
                model = open_model_pool(settings, clients)
                pool, pool_closers = open_pool(settings, clients)
                _services = build(
                    settings,
                    storage,
                    pool,
                    model=model,
                    provider_webhooks=provider.webhooks,
                    closers=(provider.close, *pool_closers, storage.close),
                )
                log.info(
                    "service ready: provider=%s model=%s backend=%s completion=%s webhooks=%s",
                    settings.provider.kind,
                    settings.provider.default_model,
                    settings.executor.backend,
                    settings.completion.strategy,
                    "on" if settings.webhook_secrets else "off",
                )
    return _services
