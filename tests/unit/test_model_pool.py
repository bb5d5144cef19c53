"""The executor's model servers on fakes (executor.model_pool): PROVIDER_DEPLOYMENTS read for the executor, each call
placed on the highest-priority server with room (weights within a priority), spilling before output on 429/503 or
no connection and never on an unclear failure, the servers' circuit breakers (provider.pool's), and the run
recording the server of its last attempt."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from openai import AsyncOpenAI

from shared import clock
from shared.composition import open_clients, open_model_pool
from shared.executor.attempts import Executor
from shared.executor.model_pool import ModelPool, ModelServer
from shared.executor.model_request import ModelRequest
from shared.provider import ProviderError
from shared.provider.errors import NEVER_SENT
from shared.provider.pool import FAILURES_TO_TRIP, TRIP_SECONDS
from shared.settings import Settings, SettingsError

from .fakes import ENV, FakeClock, FakeModel
from .test_executor import FAST, executor_world, start

BASE = {"id": "exec_x", "object": "response", "status": "in_progress", "output": []}


def refused(status: int | None = 503, retry_after: float | None = None) -> ProviderError:
    code = NEVER_SENT if status is None else None
    return ProviderError(transient=True, status=status, message="busy", retry_after=retry_after, code=code)


def servers(**priorities: int) -> tuple[ModelPool, dict[str, FakeModel]]:
    models = {name: FakeModel() for name in priorities}
    pool = ModelPool(
        [ModelServer(name, models[name], priority=priority) for name, priority in priorities.items()],
        rng=random.Random(7),
    )
    return pool, models


async def call(pool: ModelPool) -> tuple[str | None, str]:
    """One call through the pool: the server that served it, and its text."""
    served: list[str] = []
    text = ""
    async for event in pool.stream(ModelRequest.of({"model": "m", "input": "hi"}), BASE, served_by=served.append):
        text += event.get("delta", "")
    return (served[0] if served else None), text


@pytest.fixture
def now(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


# -- settings -----------------------------------------------------------------------------------------------------
def executor_env(*entries: dict, **env: str) -> dict[str, str]:
    return {**ENV, "PROVIDER_DEPLOYMENTS": json.dumps(list(entries)), **env}


PTU = {"name": "ptu", "endpoint": "http://127.0.0.1:7071/v1", "provider": "openai_compatible", "deployment": "llama"}
PAYG = {"name": "payg", "endpoint": "http://127.0.0.1:7072/v1", "provider": "emulator", "priority": 1}


def test_servers_without_a_background_mode_make_the_executor_the_backend_and_are_its_pool():
    settings = Settings.from_env(executor_env(PTU, PAYG, PTU_KEY="k"))
    assert settings.executor.backend == "executor"
    ptu, _ = settings.deployments
    assert (ptu.provider.kind, ptu.provider.base_url, ptu.model) == ("openai_compatible", PTU["endpoint"], "llama")
    pool = open_model_pool(settings, open_clients(settings, AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9")))
    assert [s.name for s in pool.order()] == ["ptu", "payg"] and pool.state() == {"ptu": "closed", "payg": "closed"}


def test_a_server_without_a_background_mode_is_refused_for_background_runs_by_name():
    with pytest.raises(SettingsError, match="PROVIDER_DEPLOYMENTS: ptu: provider openai_compatible has no background"):
        Settings.from_env(executor_env(PTU, PAYG, RUN_BACKEND="background"))


def test_unset_the_executor_keeps_its_one_server_and_background_providers_stay_background():
    assert Settings.from_env(ENV).executor.backend == "background"
    assert Settings.from_env(executor_env(PAYG)).executor.backend == "background"
    settings = Settings.from_env({**ENV, "RUN_BACKEND": "executor"})
    pool = open_model_pool(settings, open_clients(settings, AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9")))
    assert pool.state() == {"default": "closed"}


# -- the choice ---------------------------------------------------------------------------------------------------
async def test_a_call_goes_to_the_highest_priority_server(now):
    pool, models = servers(payg=1, ptu=0)
    assert await call(pool) == ("ptu", "Hello world")
    assert len(models["ptu"].requests) == 1 and not models["payg"].requests


@pytest.mark.parametrize("failure", [refused(429), refused(503), refused(None)], ids=["429", "503", "unreachable"])
async def test_a_call_refused_before_output_moves_to_the_next_server(now, failure):
    pool, models = servers(ptu=0, payg=1)
    models["ptu"].scripts = [[failure]]
    assert await call(pool) == ("payg", "Hello world")
    assert len(models["ptu"].requests) == 1 and len(models["payg"].requests) == 1


async def test_an_unclear_failure_is_not_moved_but_given_back_to_the_executor(now):
    pool, models = servers(ptu=0, payg=1)
    models["ptu"].scripts = [[ProviderError(transient=True, status=None, message="provider unreachable: timeout")]]
    with pytest.raises(ProviderError, match="timeout"):
        await call(pool)
    assert not models["payg"].requests


async def test_every_server_refusing_raises_the_last_refusal(now):
    pool, models = servers(ptu=0, payg=1)
    models["ptu"].scripts = [[refused(503)]]
    models["payg"].scripts = [[refused(429, retry_after=2.0)]]
    with pytest.raises(ProviderError) as error:
        await call(pool)
    assert error.value.status == 429 and error.value.retry_after == 2.0


async def test_weights_share_the_calls_within_a_priority(now):
    models = {"a": FakeModel(), "b": FakeModel()}
    pool = ModelPool([ModelServer("a", models["a"], weight=3), ModelServer("b", models["b"])], rng=random.Random(1))
    counts = Counter([(await call(pool))[0] for _ in range(400)])
    assert 250 < counts["a"] < 350 and counts["a"] + counts["b"] == 400


async def test_a_tripped_server_is_passed_over_until_its_probe_succeeds(now):
    pool, models = servers(ptu=0, payg=1)
    models["ptu"].scripts = [[refused(503)]] * FAILURES_TO_TRIP + [["back"]]
    for _ in range(FAILURES_TO_TRIP):
        assert (await call(pool))[0] == "payg"
    assert pool.state()["ptu"] == "open"
    assert (await call(pool))[0] == "payg" and len(models["ptu"].requests) == FAILURES_TO_TRIP  # not even tried
    now.advance(TRIP_SECONDS + 1)
    assert await call(pool) == ("ptu", "back")  # the half-open probe goes to ptu, and closes it
    assert pool.state()["ptu"] == "closed"


async def test_with_every_breaker_open_a_call_is_refused_with_a_503_saying_when(now):
    pool, models = servers(ptu=0, payg=1)
    models["ptu"].scripts = models["payg"].scripts = [[refused(503)]]
    for _ in range(FAILURES_TO_TRIP):
        with pytest.raises(ProviderError):
            await call(pool)
    with pytest.raises(ProviderError) as error:
        await call(pool)
    assert error.value.status == 503 and error.value.code == "deployment_unavailable"
    assert 1.0 <= (error.value.retry_after or 0) <= TRIP_SECONDS


async def test_a_server_with_a_deployment_name_sends_it_as_the_model(now):
    model = FakeModel()
    pool = ModelPool([ModelServer("ptu", model, deployment="llama-70b")])
    await call(pool)
    assert model.requests[0].model == "llama-70b"


async def test_the_one_implicit_server_never_opens_and_is_not_recorded(now):
    model = FakeModel()
    model.scripts = [[refused(503)]] * (FAILURES_TO_TRIP + 1) + [["ok"]]
    pool = ModelPool.single(model, "default")
    for _ in range(FAILURES_TO_TRIP + 1):
        with pytest.raises(ProviderError):
            await call(pool)
    assert pool.state() == {"default": "closed"}
    assert await call(pool) == (None, "ok")


# -- the run records where its last attempt ran -------------------------------------------------------------------
def pooled(w, pool: ModelPool) -> None:
    executor = w.services.executor
    w.services.executor = Executor(executor._store, executor._log, executor._ending, pool, executor._settings, FAST)


async def test_an_executor_run_spills_and_records_the_server_of_its_attempt(monkeypatch):
    w = executor_world(monkeypatch)
    pool, models = servers(ptu=0, payg=1)
    pooled(w, pool)
    models["ptu"].scripts = [[refused(None)], ["again"]]
    run = await start(w)
    assert w.services.views.render(await w.run(run.id))["deployment"] is None  # no attempt yet
    assert await w.execute() == ["completed"]
    ended = await w.run(run.id)
    assert ended.result["output_text"] == "Hello world" and ended.deployment == "payg"
    assert w.services.views.render(ended)["deployment"] == "payg"
    later = await start(w)
    assert await w.execute() == ["completed"]
    assert (await w.run(later.id)).deployment == "ptu"  # ptu answers again: back to the first


async def test_a_session_turn_of_the_executor_is_not_pinned_to_the_last_turns_server(monkeypatch):
    w = executor_world(monkeypatch)
    pool, models = servers(ptu=0, payg=1)
    pooled(w, pool)
    session = await w.services.starter.open_session()
    first = await start(w, session_id=session.id)
    assert await w.execute() == ["completed"]
    models["ptu"].scripts = [[refused(503)], ["later"]]
    turn = await start(w, session_id=session.id)
    assert turn.deployment is None
    assert await w.execute() == ["completed"]
    assert (await w.run(first.id)).deployment == "ptu" and (await w.run(turn.id)).deployment == "payg"
