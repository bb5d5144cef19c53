"""The pool of deployments on fakes: PROVIDER_DEPLOYMENTS parsed and refused by field, the circuit breaker, placement
(priority, weight, spillover, no repeat of an unclear create), and each run pinned to its deployment: polls, cancel,
delete, provider events and a session's next turn go there, and a chained start waits rather than spill."""

from __future__ import annotations

import json
import random
from collections import Counter

import httpx
import openai
import pytest

from shared.errors import ServiceError, Unavailable
from shared.provider import DeploymentPool, Member, ProviderError
from shared.provider.errors import classify
from shared.provider.pool import FAILURES_TO_TRIP, TRIP_SECONDS, CircuitBreaker
from shared.runs.callers import Caller
from shared.runs.model import Run
from shared.runs.requests import RunRequest
from shared.settings import Settings, SettingsError

from .fakes import ENV, FakeBackend, stream_event, world
from .test_completion import SECRET, ended, signed


def refused(status: int = 429, retry_after: float | None = None) -> ProviderError:
    return ProviderError(transient=True, status=status, message="busy", retry_after=retry_after)


def unclear() -> ProviderError:
    return ProviderError(transient=True, status=None, message="provider unreachable: APITimeoutError")


# -- PROVIDER_DEPLOYMENTS -----------------------------------------------------------------------------------------
def pool_env(entries: object, **env: str) -> dict[str, str]:
    return {**ENV, "PROVIDER_DEPLOYMENTS": entries if isinstance(entries, str) else json.dumps(entries), **env}


def test_unset_is_one_default_deployment_made_of_the_single_provider_settings():
    settings = Settings.from_env(ENV)
    (only,) = settings.deployments
    assert only.name == "default" and only.implicit and only.provider is settings.provider and only.model is None


def test_a_pool_is_read_with_its_defaults_and_keys_from_the_settings_it_names():
    settings = Settings.from_env(
        pool_env(
            [
                {
                    "name": "ptu",
                    "endpoint": "https://a.openai.azure.com/",
                    "provider": "azure_openai",
                    "deployment": "d",
                },
                {
                    "name": "payg",
                    "endpoint": "http://127.0.0.1:7071/v1/",
                    "provider": "openai",
                    "api_key_setting": "PAYG_KEY",
                    "priority": 1,
                    "weight": 3,
                    "requests_per_minute": 120,
                },
            ],
            PAYG_KEY="sk-payg",
        )
    )
    ptu, payg = settings.deployments
    assert (ptu.name, ptu.priority, ptu.weight, ptu.model, ptu.provider.api_key) == ("ptu", 0, 1, "d", None)
    assert ptu.provider.base_url == "https://a.openai.azure.com/openai/v1/"  # Entra ID, v1 API
    assert (payg.priority, payg.weight, payg.requests_per_minute, payg.tokens_per_minute) == (1, 3, 120, 0)
    assert payg.provider.api_key == "sk-payg" and payg.provider.base_url == "http://127.0.0.1:7071/v1"
    assert "sk-payg" not in repr(settings)


@pytest.mark.parametrize(
    "entries,named",
    [
        ("[{", "PROVIDER_DEPLOYMENTS: not JSON"),
        ("{}", "PROVIDER_DEPLOYMENTS: expected a JSON array"),
        ([{"endpoint": "http://x/v1"}], "PROVIDER_DEPLOYMENTS: entry 1: name must be"),
        ([{"name": "Big", "endpoint": "http://x/v1"}], "PROVIDER_DEPLOYMENTS: entry 1: name must be"),
        ([{"name": "a", "endpoint": "http://x/v1", "colour": 1}], "entry 1: unknown field 'colour'"),
        ([{"name": "a"}], "PROVIDER_DEPLOYMENTS: a: endpoint must be"),
        ([{"name": "a", "endpoint": "http://x", "provider": "azure_openai"}], "a: endpoint must be an https://"),
        ([{"name": "a", "endpoint": "http://x/v1", "provider": "llama"}], "a: provider must be"),
        ([{"name": "a", "endpoint": "http://x/v1", "weight": 0}], "a: weight must be a whole number of at least 1"),
        ([{"name": "a", "endpoint": "http://x/v1", "priority": "1"}], "a: priority must be a whole number"),
        ([{"name": "a", "endpoint": "http://x/v1", "provider": "openai"}], "a: api_key_setting is required"),
        ([{"name": "a", "endpoint": "http://x/v1", "api_key_setting": "NOPE"}], "names NOPE, which is not set"),
        ([{"name": "a", "endpoint": "http://x/v1"}, {"name": "a", "endpoint": "http://y/v1"}], "name 'a' is used"),
    ],
)
def test_a_bad_pool_is_refused_naming_the_entry_and_field(entries, named):
    with pytest.raises(SettingsError, match="PROVIDER_DEPLOYMENTS") as refusal:
        Settings.from_env(pool_env(entries))
    assert named in str(refusal.value)


# -- the circuit breaker ------------------------------------------------------------------------------------------
def test_the_breaker_trips_on_repeated_failures_then_lets_one_probe_through():
    breaker = CircuitBreaker()
    for i in range(FAILURES_TO_TRIP - 1):
        assert breaker.claim(i) and not breaker.failed(i, None)
    assert breaker.claim(5) and breaker.failed(5, None)  # the third within the window trips it
    assert not breaker.claim(5 + TRIP_SECONDS - 1) and breaker.state(6) == "open"
    now = 5 + TRIP_SECONDS
    assert breaker.state(now) == "half-open" and breaker.claim(now)  # the probe
    assert not breaker.claim(now) and not breaker.available(now)  # one at a time
    breaker.failed(now, None)  # the probe failed: open again
    assert not breaker.claim(now + 1)
    later = now + TRIP_SECONDS
    assert breaker.claim(later)
    breaker.succeeded()
    assert breaker.state(later) == "closed" and breaker.claim(later) and breaker.claim(later)


def test_a_retry_after_keeps_starts_away_that_long_and_old_failures_are_forgotten():
    breaker = CircuitBreaker()
    assert not breaker.failed(0, 12)  # not tripped, but held for its Retry-After
    assert not breaker.claim(11) and breaker.claim(12)
    breaker.succeeded()
    breaker.failed(20, None)
    breaker.failed(21, None)
    assert not breaker.failed(100, None)  # the first two fell out of the window


# -- placement ----------------------------------------------------------------------------------------------------
def a_pool(*names_and_priorities: tuple[str, int], seed: int = 1, **weights: int) -> tuple[DeploymentPool, dict]:
    backends = {name: FakeBackend() for name, _ in names_and_priorities}
    members = [
        Member(name, backends[name], priority=p, weight=weights.get(name, 1)) for name, p in names_and_priorities
    ]
    return DeploymentPool(members, rng=random.Random(seed)), backends


def params(run_id: str = "run_1") -> dict:
    return {"model": "gpt", "input": "hi", "metadata": {"bg_run_id": run_id}}


async def placed(w, **request) -> Run:
    """A run started through the service: placed by admission (runs.admission.place)."""
    return (await w.services.starter.start(RunRequest(**{"input": "x", **request}))).run


async def test_a_start_goes_to_the_highest_priority_and_spills_over_on_429_or_503(monkeypatch):
    pool, backends = a_pool(("payg", 1), ("ptu", 0))
    w = world(monkeypatch, backend=pool)
    assert [c.name for c in pool.candidates()] == ["ptu", "payg"]
    assert (await placed(w)).deployment == "ptu"
    backends["ptu"].fail["start"] = [refused(429)]
    assert (await placed(w)).deployment == "payg"
    backends["ptu"].fail["start"] = [refused(503)]
    backends["payg"].fail["start"] = [refused(429, retry_after=4)]
    full = await placed(w)  # every one refused: queued on the last refusal, its Retry-After
    assert full.status == "queued" and not full.response_id and full.admission.reason == "provider 429"
    assert full.admission.next_try_at == pytest.approx(w.clock.now + 4)


async def test_an_unclear_create_is_never_repeated_at_another_deployment(monkeypatch):
    pool, backends = a_pool(("ptu", 0), ("payg", 1))
    w = world(monkeypatch, backend=pool)
    backends["ptu"].fail["start"] = [unclear()]
    with pytest.raises(ServiceError):
        await placed(w)
    assert backends["payg"].count("start") == 0


def refused_connection() -> ProviderError:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/responses")
    try:
        try:
            raise httpx.ConnectError("Connection refused", request=request)
        except httpx.ConnectError as cause:
            raise openai.APIConnectionError(request=request) from cause
    except openai.APIConnectionError as error:
        return classify(error)


async def test_a_deployment_that_cannot_be_reached_is_passed_over_but_alone_is_refused_as_before(monkeypatch):
    assert refused_connection().code == "connection_failed"  # the request never left: nothing was created
    w, backends = pooled_world(monkeypatch)
    backends["ptu"].fail["start"] = [refused_connection()]
    assert (await placed(w)).deployment == "payg"
    for name in ("ptu", "payg"):
        backends[name].fail["start"] = [refused_connection()]
    with pytest.raises(Unavailable):  # the last one unreachable: not queued (as with one deployment), refused
        await placed(w)


async def test_weights_share_the_starts_within_a_priority(monkeypatch):
    world(monkeypatch)
    pool, _ = a_pool(("a", 0), ("b", 0), ("c", 1), b=3)
    firsts = Counter(pool.candidates()[0].name for _ in range(4000))
    assert firsts["c"] == 0 and 0.7 < firsts["b"] / 4000 < 0.8  # 3 : 1 within priority 0


async def test_a_tripped_deployment_is_passed_over_until_its_probe_succeeds(monkeypatch):
    w, backends = pooled_world(monkeypatch)
    pool = w.backend
    backends["ptu"].fail["start"] = [refused(500) for _ in range(FAILURES_TO_TRIP)]
    for _ in range(FAILURES_TO_TRIP):
        with pytest.raises(ProviderError):  # a 500 is unclear: not spilled, but counted
            await pool.start(params(), stream=False, deployment="ptu")
    assert pool.state() == {"ptu": "open", "payg": "closed"}
    assert [(c.name, c.reopens_in) for c in pool.candidates()] == [("ptu", TRIP_SECONDS), ("payg", 0)]
    assert (await placed(w)).deployment == "payg"
    assert backends["ptu"].count("start") == FAILURES_TO_TRIP  # no call while open
    with pytest.raises(ProviderError) as named:  # named while open: refused without a call, saying when
        await pool.start(params(), stream=False, deployment="ptu")
    assert named.value.status == 503 and named.value.retry_after == pytest.approx(TRIP_SECONDS)
    w.clock.advance(TRIP_SECONDS)
    assert (await placed(w)).deployment == "ptu"  # the probe
    assert pool.state()["ptu"] == "closed"


async def test_with_every_deployment_open_a_start_is_refused_with_a_503_saying_when(monkeypatch):
    world(monkeypatch)
    pool, backends = a_pool(("only", 0))
    backends["only"].fail["start"] = [refused(503) for _ in range(FAILURES_TO_TRIP)]
    for _ in range(FAILURES_TO_TRIP):
        with pytest.raises(ProviderError):
            await pool.start(params(), stream=False, deployment="only")
    with pytest.raises(ProviderError) as none:
        pool.candidates()
    assert none.value.status == 503 and none.value.retry_after == pytest.approx(TRIP_SECONDS)


async def test_a_deployment_name_sends_its_own_model():
    backend = FakeBackend()
    pool = DeploymentPool([Member("ptu", backend, model="gpt-ptu")])
    started = await pool.start(params(), stream=False, deployment="ptu")
    assert backend.responses[started.state.response_id].params["model"] == "gpt-ptu"


# -- pinning, through the service --------------------------------------------------------------------------------
def pooled_world(monkeypatch, **env):
    pool, backends = a_pool(("ptu", 0), ("payg", 1))
    return world(monkeypatch, backend=pool, **env), backends


async def test_a_run_records_its_deployment_and_every_later_call_goes_there(monkeypatch):
    w, backends = pooled_world(monkeypatch)
    backends["ptu"].fail["start"] = [refused(429)]
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    assert run.deployment == "payg" and (await w.run(run.id)).deployment == "payg"
    assert w.services.views.render(await w.run(run.id))["deployment"] == "payg"
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
    await w.services.canceller.cancel(run.id)
    await w.services.deleter.delete(run.id)
    assert [m for m, _ in backends["payg"].calls] == ["start", "observe", "cancel", "delete"]
    assert [m for m, _ in backends["ptu"].calls] == ["start"]


async def test_runs_on_a_failing_deployment_keep_being_polled_there(monkeypatch):
    w, backends = pooled_world(monkeypatch)
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    assert run.deployment == "ptu"
    backends["ptu"].fail["observe"] = [refused(503) for _ in range(3)]
    for _ in range(3):
        assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    backends["ptu"].responses[run.response_id].complete("back")
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "completed"
    assert backends["payg"].calls == []


async def test_a_session_turn_stays_on_its_deployment_and_waits_while_it_is_down(monkeypatch):
    w, backends = pooled_world(monkeypatch)
    session = await w.services.starter.open_session()
    first = (await w.services.starter.start(RunRequest(input="1", session_id=session.id))).run
    backends["ptu"].responses[first.response_id].complete()
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "completed"
    backends["ptu"].fail["start"] = [refused(503) for _ in range(10)]  # down
    turn = (await w.services.starter.start(RunRequest(input="2", session_id=session.id))).run
    assert turn.status == "queued" and turn.response_id is None and turn.deployment == "ptu"
    assert backends["payg"].count("start") == 0  # waits: its conversation is at ptu
    backends["ptu"].fail["start"] = []  # back
    w.clock.advance(w.poll_queue.sent[-1].delay)
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "capacity-granted"
    granted = await w.run(turn.id)
    assert granted.deployment == "ptu" and backends["payg"].calls == []
    assert backends["ptu"].responses[granted.response_id].params["previous_response_id"] == first.response_id


async def test_a_previous_response_id_pins_the_next_run_too(monkeypatch):
    w, backends = pooled_world(monkeypatch)
    backends["ptu"].fail["start"] = [refused(429)]
    first = (await w.services.starter.start(RunRequest(input="1"))).run
    assert first.deployment == "payg"
    follow = (await w.services.starter.start(RunRequest(input="2", previous_run_id=first.id))).run
    assert follow.deployment == "payg" and backends["ptu"].count("start") == 1


async def test_a_provider_event_for_a_run_on_the_second_deployment_ends_it_from_there(monkeypatch):
    w, backends = pooled_world(monkeypatch, PROVIDER_WEBHOOK_SECRETS=SECRET)
    backends["ptu"].fail["start"] = [refused(429)]
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    backends["payg"].responses[run.response_id].complete("from payg")
    body, headers = signed(ended(run.response_id))
    assert await w.services.provider_events.receive(body, headers) == "completed"
    assert (await w.run(run.id)).result["output_text"] == "from payg"
    assert backends["payg"].count("observe") == 1 and backends["ptu"].count("observe") == 0


async def test_old_rows_without_a_deployment_are_at_default(monkeypatch):
    w = world(monkeypatch)
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    for (partition, _), (row, _) in w.runs.rows.items():
        if partition == run.id:
            del row["deployment"]  # as written before the pool
    assert (await w.run(run.id)).deployment == "default"


async def test_pacing_is_per_deployment_and_a_full_pool_holds_the_earliest_slot(monkeypatch):
    backends = {name: FakeBackend() for name in ("ptu", "payg")}
    pool = DeploymentPool(
        [
            Member("ptu", backends["ptu"], priority=0, requests_per_minute=6),  # a slot every 10 s
            Member("payg", backends["payg"], priority=1, requests_per_minute=12),  # every 5 s
        ]
    )
    w = world(monkeypatch, backend=pool, PACING_REQUESTS_PER_MINUTE="1000")  # on; each deployment's own budget
    runs = [(await w.services.starter.start(RunRequest(input=str(i)))).run for i in range(4)]
    assert [r.deployment for r in runs] == ["ptu", "payg", "payg", "ptu"]
    assert [r.status for r in runs] == ["queued"] * 4 and [bool(r.response_id) for r in runs] == [1, 1, 0, 0]
    assert [r.admission.reason for r in runs[2:]] == ["paced", "paced"]  # each holds the earliest slot there was
    assert {key[1] for key in w.index.rows if key[0] == "pacing"} == {"ptu", "payg"}  # a row per deployment
    w.clock.advance(10)
    for message in w.poll_queue.take():
        await w.services.poll_step.handle(message)
    third, fourth = [await w.run(r.id) for r in runs[2:]]
    assert (third.deployment, fourth.deployment) == ("payg", "ptu") and third.response_id and fourth.response_id
    assert backends["ptu"].count("start") == 2 and backends["payg"].count("start") == 2  # no create refused


async def test_the_implicit_default_deployment_has_no_breaker(monkeypatch):
    # Found by tests/service/test_admission.py: one model's 429s (with Retry-After) held every model's starts.
    w = world(monkeypatch)
    backend = FakeBackend()
    pool = DeploymentPool([Member("default", backend)], implicit=True)
    backend.fail["start"] = [refused(429, retry_after=60) for _ in range(FAILURES_TO_TRIP)]
    for _ in range(FAILURES_TO_TRIP):
        with pytest.raises(ProviderError):
            await pool.start(params(), stream=False, deployment="default")
    assert pool.state() == {"default": "closed"} and (await pool.start(params(), stream=False, deployment="default"))
    assert pool.candidates()[0].pacing_key is None  # paced per model, as before the pool
    assert w.clock.now


def test_the_setting_itself_parses_to_its_entries_as_infra_writes_them():
    # infra/main.bicep's value (the pool-infra branch's tests/infra/test_spillover.py checks the same)
    from shared.settings.table import BY_NAME

    written = [
        {"name": n, "provider": "azure_openai", "endpoint": f"https://cog-{n}.openai.azure.com/", "deployment": "m"}
        | {"priority": p, "weight": 1}
        for n, p in (("primary", 0), ("spillover", 1))
    ]
    setting = BY_NAME["PROVIDER_DEPLOYMENTS"]
    assert [e.name for e in setting.parse(json.dumps(written))] == ["primary", "spillover"]
    assert not setting.parse("") and not setting.secret and setting.in_azure != "local"


async def test_watch_and_the_stream_relay_follow_the_response_at_its_deployment(monkeypatch):
    w, backends = pooled_world(monkeypatch, COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="0.3")
    backends["ptu"].fail["start"] = [refused(429)]
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    response = backends["payg"].responses[run.response_id]
    response.complete("watched at payg")
    backends["payg"].streams[run.response_id] = [
        stream_event("response.created", 0),
        stream_event("response.completed", 1, response),
    ]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "completed"  # watched at payg
    relayed = [chunk async for chunk in w.services.relays.relay(await w.run(run.id), -1).events()]
    assert any(b"watched at payg" in chunk for chunk in relayed if isinstance(chunk, bytes))  # replayed from payg
    assert backends["payg"].count("events") == 2 and backends["ptu"].count("events") == 0


async def test_a_queued_try_that_cannot_connect_waits_and_a_held_slot_moves_on(monkeypatch):
    # Found by bench.capacity --deployments: runs holding a ptu slot when ptu went down ended start_interrupted,
    # though a refused connection proves nothing was created.
    backends = {name: FakeBackend() for name in ("ptu", "payg")}
    pool = DeploymentPool(
        [Member("ptu", backends["ptu"], requests_per_minute=6), Member("payg", backends["payg"], priority=1)]
    )
    w = world(monkeypatch, backend=pool, PACING_REQUESTS_PER_MINUTE="1000")
    first = (await w.services.starter.start(RunRequest(input="1"))).run
    backends["payg"].fail["start"] = [refused(429)]
    held = (await w.services.starter.start(RunRequest(input="2"))).run
    assert (first.deployment, held.deployment, held.admission.reason) == ("ptu", "ptu", "paced")
    w.clock.advance(10)
    backends["ptu"].fail["start"] = [refused_connection()]  # ptu went down: its slot is of no use
    assert await w.services.poll_step.handle(w.poll_queue.take()[-1]) == "capacity-granted"
    assert (await w.run(held.id)).deployment == "payg"
    w2 = world(monkeypatch)  # one deployment: the try waits, as for a 429
    w2.backend.fail["start"] = [refused(429)]
    queued = (await w2.services.starter.start(RunRequest(input="3"))).run
    w2.clock.advance(10)
    w2.backend.fail["start"] = [refused_connection()]
    assert await w2.services.poll_step.handle(w2.poll_queue.take()[0]) == "capacity-waiting"
    assert (await w2.run(queued.id)).status == "queued"


async def test_a_backlog_queued_while_the_first_deployment_was_down_moves_back_to_it(monkeypatch):
    # Found by bench.capacity --deployments: the runs queued during ptu's outage held payg's slots reaching far past
    # ptu's return, and drained at payg's rate alone while ptu stood idle.
    backends = {name: FakeBackend() for name in ("ptu", "payg")}
    pool = DeploymentPool(
        [Member("ptu", backends["ptu"]), Member("payg", backends["payg"], priority=1, requests_per_minute=6)]
    )
    w = world(monkeypatch, backend=pool, PACING_REQUESTS_PER_MINUTE="1000")  # ptu 1000/min; payg a slot every 10 s
    t0 = w.clock.now
    backends["ptu"].fail["start"] = [refused_connection() for _ in range(FAILURES_TO_TRIP)]  # ptu down
    runs = []
    for i in range(7):
        caller = Caller(f"caller-{i}")  # each first in its caller's fair order: it holds its slot (runs.fairness)
        runs.append((await w.services.starter.start(RunRequest(input=str(i)), caller=caller)).run)
        w.clock.advance(1)
    assert pool.state()["ptu"] == "open" and {r.deployment for r in runs} == {"payg"}
    assert [r.admission.slot_at - t0 for r in runs[1:]] == pytest.approx([10, 20, 30, 40, 50, 60])
    reopens = t0 + 2 + TRIP_SECONDS  # tripped by the third start's create
    # those held well past ptu's reopening look again then (the others wait for their slot)
    looks = [r.admission.next_try_at - reopens for r in runs[1:]]
    assert looks[:3] == pytest.approx([10 - 32, 20 - 32, 30 - 32]) and all(0 <= t <= 2 for t in looks[3:])
    w.clock.advance(reopens + 2 - w.clock.now)  # ptu is back
    due = [s for s in w.poll_queue.sent if s.at + s.delay <= w.clock.now]
    w.poll_queue.sent = [s for s in w.poll_queue.sent if s not in due]
    for sent in due:
        await w.services.poll_step.handle(sent.message)
    after = [await w.run(r.id) for r in runs]
    assert [r.deployment for r in after] == ["payg"] * 4 + ["ptu"] * 3  # the first look was ptu's probe
    assert all(r.response_id for r in after[:4] + after[4:]) and pool.state()["ptu"] == "closed"
    assert backends["ptu"].count("start") == FAILURES_TO_TRIP + 3 and backends["payg"].count("start") == 4
    # their payg slots were given back, not leaked: the next start that goes to payg takes the earliest of them
    backends["ptu"].fail["start"] = [refused(429)]
    spilled = (await w.services.starter.start(RunRequest(input="late"), caller=Caller("late"))).run
    assert spilled.deployment == "payg" and spilled.admission.slot_at == pytest.approx(runs[4].admission.slot_at)


async def test_a_half_open_deployment_is_probed_unpaced_and_a_start_it_kept_away_looks_again_soon(monkeypatch):
    # Found by bench.capacity --deployments: at ptu's reopening the queued runs looking again each took a ptu pacing
    # slot and lost it to the breaker (one probe at a time), which pushed ptu's next slot far out.
    backends = {name: FakeBackend() for name in ("ptu", "payg")}
    pool = DeploymentPool(
        [
            Member("ptu", backends["ptu"], requests_per_minute=1),  # a slot a minute
            Member("payg", backends["payg"], priority=1, requests_per_minute=6),
        ]
    )
    w = world(monkeypatch, backend=pool, PACING_REQUESTS_PER_MINUTE="1000")
    assert (await placed(w)).deployment == "ptu"  # ptu's next slot is a minute away
    backends["ptu"].fail["start"] = [refused(500) for _ in range(FAILURES_TO_TRIP)]
    for _ in range(FAILURES_TO_TRIP):
        with pytest.raises(ProviderError):
            await pool.start(params(), stream=False, deployment="ptu")
    w.clock.advance(TRIP_SECONDS)
    assert [c.probe for c in pool.candidates()] == [True, False]  # half-open
    assert (await placed(w)).deployment == "ptu" and pool.state()["ptu"] == "closed"  # the probe, not paced
    # a start the breaker keeps away (another's probe under way) holds payg's slot and looks again after 1 s
    backends = {name: FakeBackend() for name in ("ptu", "payg")}
    pool = DeploymentPool(
        [Member("ptu", backends["ptu"]), Member("payg", backends["payg"], priority=1, requests_per_minute=6)]
    )
    w = world(monkeypatch, backend=pool, PACING_REQUESTS_PER_MINUTE="1000")
    backends["ptu"].fail["start"] = [refused(503)]
    assert (await placed(w)).deployment == "payg"  # payg's first slot
    busy = ProviderError(transient=True, status=503, message="probing", retry_after=1, code="deployment_unavailable")
    backends["ptu"].fail["start"] = [busy]
    waiting = await placed(w)
    assert waiting.deployment == "payg" and waiting.admission.slot_at == pytest.approx(w.clock.now + 10)
    assert 1 <= waiting.admission.next_try_at - w.clock.now <= 3
