"""Provider pacing (shared/runs/pacing.py) on fakes: the budgets' arithmetic, what the provider's headers and 429s
change, AIMD, two instances sharing one model's row through its ETag, failing open, and the hooks: a paced start or
try is queued without a provider call and holds its slot, at two storage requests per start. Against Azurite, the
local host and the emulator's quotas: tests/service/test_pacing.py."""

from __future__ import annotations

import asyncio

import pytest
from azure.core.exceptions import HttpResponseError

from local.emulator.quotas import Quotas
from shared.provider import ProviderError
from shared.runs.pacing import (
    CUT_COOLDOWN,
    DEFAULT_OUTPUT_TOKENS,
    FAIL_OPEN_SECONDS,
    GROWTH_PER_START,
    MIN_RATE,
    PARTITION,
    PaceState,
    ProviderPacing,
    estimate_tokens,
    parse_duration,
    plan,
    spent_until,
    throttled,
)
from shared.runs.requests import RunRequest
from shared.settings import PacingSettings

from .fakes import FakeClock, FakeTable, world

NOW = 1_800_000_000.0
RPM60 = PacingSettings(requests_per_minute=60)
ADAPTIVE = PacingSettings(adaptive=True)


async def reserve(pacing: ProviderPacing, params: dict, *, within: float) -> float:
    """Seconds until the slot a reservation gave (0: go now)."""
    return (await pacing.reserve_turn(params, within=within)).wait


def slots(settings: PacingSettings, n: int, tokens: int = 0, state: PaceState | None = None) -> list[float]:
    state = state or PaceState()
    taken = []
    for _ in range(n):
        slot, state = plan(settings, state, NOW, tokens)
        taken.append(slot - NOW)
    return taken


# -- the budgets ----------------------------------------------------------------------------------------------
def test_a_request_budget_spaces_the_slots_evenly_without_a_burst():
    assert slots(RPM60, 4) == pytest.approx([0, 1, 2, 3])
    assert slots(PacingSettings(requests_per_minute=120), 3) == pytest.approx([0, 0.5, 1])


def test_a_token_budget_spaces_creates_by_their_estimate_and_the_stricter_budget_wins():
    tokens = PacingSettings(tokens_per_minute=6000)
    assert slots(tokens, 3, tokens=1000) == pytest.approx([0, 10, 20])  # 1,000 of 6,000 a minute: one per 10 s
    both = PacingSettings(requests_per_minute=60, tokens_per_minute=60_000)
    assert slots(both, 3, tokens=100) == pytest.approx([0, 1, 2])  # requests are the stricter
    assert slots(both, 3, tokens=3000) == pytest.approx([0, 3, 6])  # tokens are


def test_a_slot_in_the_past_is_now():
    state = PaceState(requests_at=NOW - 100)
    assert slots(RPM60, 2, state=state) == pytest.approx([0, 1])


def test_the_estimate_is_the_prompt_by_four_characters_plus_the_cap_as_the_emulator_counts_it():
    text = "Summarise the quarterly report in three bullet points, please."
    quotas = Quotas.__new__(Quotas)
    quotas.config = type("C", (), {"quota_default_output_tokens": DEFAULT_OUTPUT_TOKENS})()
    from local.emulator.timeline import estimate_tokens as emulator_tokens

    for params, cap in (({"input": text}, None), ({"input": text, "max_output_tokens": 300}, 300)):
        assert estimate_tokens(params) == quotas.estimate(emulator_tokens(len(text)), cap)
    messages = [{"role": "user", "type": "message", "content": [{"type": "input_text", "text": text}]}]
    instructions = "Be brief."
    assert estimate_tokens({"input": messages, "instructions": instructions, "max_output_tokens": 50}) == (
        -(-(len(text) + len(instructions)) // 4) + 50
    )


# -- what the provider says -----------------------------------------------------------------------------------
def test_a_budget_the_openai_headers_say_is_spent_holds_starts_until_one_request_is_back():
    headers = {
        "x-ratelimit-limit-requests": "30",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "89000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    # The reset is until the whole budget is back (OpenAI); a rolling window gives one request back in 1/30 of it.
    headers["x-ratelimit-reset-requests"] = "30s"
    assert spent_until(headers, NOW) == pytest.approx(NOW + 1.0)
    assert spent_until({**headers, "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, NOW) == (
        pytest.approx(NOW + 1.0)  # 360 s / 90,000 tokens: the requests' hold is the longer
    )
    assert spent_until({**headers, "x-ratelimit-limit-tokens": "60"}, NOW) == pytest.approx(NOW + 1.0)
    assert spent_until({**headers, "x-ratelimit-limit-tokens": "60", "x-ratelimit-remaining-tokens": "0"}, NOW) == (
        pytest.approx(NOW + 6.0)
    )
    assert spent_until({**headers, "x-ratelimit-remaining-requests": "1"}, NOW) == 0
    state = PaceState(hold_until=spent_until(headers, NOW))
    assert slots(PacingSettings(requests_per_minute=60), 3, state=state) == pytest.approx([1, 2, 3])


def test_azures_minus_one_and_zero_headers_are_ignored():
    azure = {
        "x-ratelimit-limit-tokens": "-1",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-tokens": "0",
        "x-ratelimit-remaining-requests": "0",  # without a valid limit: nothing to go by
    }
    assert spent_until(azure, NOW) == 0
    garbled = {
        "x-ratelimit-limit-requests": "x",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "soon",
    }
    assert spent_until(garbled, NOW) == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h0m0s", 3600.0),
        ("2", 2.0),
        ("0", None),
        ("-1", None),
        ("", None),
        ("1x", None),
        ("s", None),
    ],
)
def test_reset_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds else None)


def test_a_429_holds_starts_for_its_retry_after_or_a_second():
    assert throttled(RPM60, PaceState(), NOW, 7.0).hold_until == NOW + 7
    assert throttled(RPM60, PaceState(), NOW, None).hold_until == NOW + 1
    assert throttled(RPM60, PaceState(), NOW, 7.0).rate == 0  # a configured budget is not learned


# -- AIMD ---------------------------------------------------------------------------------------------------------
def test_adaptive_halves_on_429_at_most_once_per_cooldown_and_grows_slowly():
    state = PaceState()
    assert slots(ADAPTIVE, 40, state=state) == [0] * 40  # nothing learned yet: not paced
    for _ in range(40):
        _, state = plan(ADAPTIVE, state, NOW, 0)
    state = throttled(ADAPTIVE, state, NOW, None)
    assert state.rate == pytest.approx(20, rel=1e-3)  # half the starts of the last minute
    assert throttled(ADAPTIVE, state, NOW + 1, None).rate == state.rate  # the same burst's other 429s
    cut = throttled(ADAPTIVE, state, NOW + CUT_COOLDOWN, None)
    assert cut.rate == pytest.approx(10, rel=1e-3)
    _, grown = plan(ADAPTIVE, cut, NOW + 10, 0)
    assert grown.rate == pytest.approx(cut.rate + GROWTH_PER_START)
    assert slots(ADAPTIVE, 3, state=replace_rate(grown, 30.0, NOW)) == pytest.approx([0, 2, 4], abs=0.01)
    floor = PaceState(rate=1.5)
    assert throttled(ADAPTIVE, floor, NOW, None).rate == MIN_RATE


def test_adaptive_growth_stops_at_the_configured_budget():
    capped = PacingSettings(requests_per_minute=40, adaptive=True)
    _, state = plan(capped, PaceState(rate=40.0), NOW, 0)
    assert state.rate == 40
    _, state = plan(ADAPTIVE, PaceState(rate=40.0), NOW, 0)
    assert state.rate == 40 + GROWTH_PER_START


def replace_rate(state: PaceState, rate: float, now: float) -> PaceState:
    return PaceState(rate=rate, recent=state.recent, recent_at=state.recent_at, hold_until=0.0, requests_at=now)


# -- shared state, failing open ------------------------------------------------------------------------------------
@pytest.fixture
def now(monkeypatch) -> FakeClock:
    fake = FakeClock(NOW)
    monkeypatch.setattr("shared.clock.now", fake)
    return fake


async def test_two_instances_share_one_budget_through_the_rows_etag(now):
    table = FakeTable()
    a, b = ProviderPacing(table, RPM60), ProviderPacing(table, RPM60)
    params = {"model": "gpt/4.1", "input": "hi"}
    raced = []

    async def b_goes_first():  # between a's read and a's write, b takes a slot
        del table.before["update_entity"]
        raced.append(await reserve(b, params, within=60))

    assert await reserve(a, params, within=60) == 0  # creates the row
    table.before["update_entity"] = b_goes_first
    assert await reserve(a, params, within=60) == pytest.approx(2)  # lost the race once, read again
    assert raced == [pytest.approx(1)]
    assert await reserve(b, params, within=60) == pytest.approx(3)
    assert list(table.rows) == [(PARTITION, "gpt%2F4.1")]


async def test_creates_waiting_in_one_instance_are_reserved_together_with_one_read_and_one_write(now):
    table = FakeTable()
    pacing = ProviderPacing(table, RPM60)
    params = {"model": "m", "input": "hi"}
    waits = await asyncio.gather(*(reserve(pacing, params, within=60) for _ in range(10)))
    assert sorted(waits) == pytest.approx(list(range(10)))
    assert table.requests == 4  # the first: read, create; the nine that waited meanwhile: read, write


async def test_a_reservation_cancelled_on_its_turn_lets_the_creates_it_reserved_for_go(now):
    table = FakeTable()
    pacing = ProviderPacing(table, RPM60, timeout=60)  # only the cancel ends the stuck read
    params = {"model": "m", "input": "hi"}
    await reserve(pacing, params, within=60)
    gate, reads = asyncio.Event(), []

    async def stuck():
        reads.append(1)
        await (gate.wait() if len(reads) == 1 else asyncio.sleep(30))

    table.before["get_entity"] = stuck
    holding = asyncio.create_task(reserve(pacing, params, within=60))
    await asyncio.sleep(0.01)
    leader = asyncio.create_task(reserve(pacing, params, within=60))
    others = [asyncio.create_task(reserve(pacing, params, within=60)) for _ in range(2)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await holding == pytest.approx(1)
    await asyncio.sleep(0.01)  # the leader reserves for itself and the others, and its read hangs
    leader.cancel()
    assert await asyncio.wait_for(asyncio.gather(*others), 1) == [0.0, 0.0]
    assert len(reads) == 2  # the others never read: they were in the cancelled batch


async def test_a_slot_beyond_what_the_run_may_wait_is_not_taken(now):
    table = FakeTable()
    pacing = ProviderPacing(table, RPM60)
    params = {"model": "m", "input": "hi"}
    for expected in (0, 1):
        assert await reserve(pacing, params, within=1.5) == pytest.approx(expected)
    assert await reserve(pacing, params, within=1.5) == pytest.approx(2)  # too far: told, not taken
    assert await reserve(pacing, params, within=60) == pytest.approx(2)
    assert await reserve(pacing, params, within=60) == pytest.approx(3)


async def test_headers_of_a_create_are_written_with_the_next_reservation_and_cost_no_request(now):
    table = FakeTable()
    pacing = ProviderPacing(table, PacingSettings(requests_per_minute=600))
    params = {"model": "m", "input": "hi"}
    await reserve(pacing, params, within=60)
    before = table.requests
    pacing.noted(
        "m",
        {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3m"},
    )
    assert table.requests == before
    assert await reserve(pacing, params, within=60) == pytest.approx(3)  # held until one request is back
    other = ProviderPacing(table, PacingSettings(requests_per_minute=600))  # another instance reads it
    assert await reserve(other, params, within=60) == pytest.approx(3.1)


async def test_a_limiter_that_cannot_be_read_fails_open_quickly_and_then_stays_out_of_the_way(now):
    table = FakeTable()
    pacing = ProviderPacing(table, RPM60, timeout=0.05)
    params = {"model": "m", "input": "hi"}
    table.fail_next = [HttpResponseError("503 server busy")]
    assert await reserve(pacing, params, within=60) == 0
    requests = table.requests
    assert await reserve(pacing, params, within=60) == 0  # skipped: no request
    assert table.requests == requests
    now.advance(FAIL_OPEN_SECONDS)

    async def hang():
        await asyncio.sleep(30)

    table.before["get_entity"] = hang  # storage that does not answer
    started = asyncio.get_running_loop().time()
    assert await reserve(pacing, params, within=60) == 0
    assert asyncio.get_running_loop().time() - started < 1
    await pacing.throttled("m", 5, {})  # a 429 meanwhile is not written either
    assert table.requests == requests + 1


# -- the hooks ----------------------------------------------------------------------------------------------------
def rate_limited(retry_after: float | None = 2.0) -> ProviderError:
    return ProviderError(
        transient=True, status=429, message="Rate limit", retry_after=retry_after, code="rate_limit_exceeded"
    )


async def test_a_paced_start_is_queued_without_a_provider_call_and_its_try_holds_its_slot(monkeypatch):
    w = world(monkeypatch, PACING_REQUESTS_PER_MINUTE="30")
    first = (await w.services.starter.start(RunRequest(input="one"))).run
    second = (await w.services.starter.start(RunRequest(input="two"))).run
    assert first.response_id and w.backend.count("start") == 1
    assert second.status == "queued" and second.response_id is None
    assert second.admission.reason == "paced" and second.admission.attempts == 0
    (sent,) = [s for s in w.poll_queue.sent if s.message["run_id"] == second.id]
    assert sent.delay == pytest.approx(2)  # its slot: 60 / 30 s after the first
    view = w.services.views.render(await w.run(second.id), timeline=True)
    assert view["admission"]["reason"] == "paced"
    assert "capacity_queued" in [e["type"] for e in view["timeline"]["entries"]]
    w.clock.advance(2)
    w.poll_queue.sent = [sent]
    index_requests = w.index.requests
    assert await w.services.poll_step.handle(sent.message) == "capacity-granted"
    assert w.index.requests == index_requests  # the slot was held: no second reservation
    granted = await w.run(second.id)
    assert granted.admission.attempts == 1 and granted.response_id
    assert [c for c in w.backend.calls if c[0] == "start"] == [("start", first.id), ("start", second.id)]


async def test_a_try_after_a_429_asks_the_pacing_which_the_429_held(monkeypatch):
    w = world(monkeypatch, PACING_REQUESTS_PER_MINUTE="60")
    w.backend.fail["start"] = [rate_limited(retry_after=5)]
    run = (await w.services.starter.start(RunRequest(input="one"))).run
    assert run.admission.reason.startswith("provider 429") and w.backend.count("start") == 1
    other = (await w.services.starter.start(RunRequest(input="two"))).run
    assert other.admission.reason == "paced" and w.backend.count("start") == 1  # held by the 429: no call
    w.clock.advance(5)
    (message,) = [s.message for s in w.poll_queue.sent if s.message["run_id"] == run.id]
    assert await w.services.poll_step.handle(message) == "capacity-waiting"  # the other run holds the next slot
    assert (await w.run(run.id)).admission.reason == "paced" and w.backend.count("start") == 1


async def test_pacing_costs_two_storage_requests_per_start_and_nothing_when_off(monkeypatch):
    async def index_requests_per_start(**env: str) -> int:
        w = world(monkeypatch, **env)
        await w.services.starter.start(RunRequest(input="warm"))
        w.clock.advance(60)
        before = w.index.requests
        await w.services.starter.start(RunRequest(input="one"))
        return w.index.requests - before

    assert await index_requests_per_start(PACING_REQUESTS_PER_MINUTE="60") - await index_requests_per_start() == 2
    assert await index_requests_per_start(PACING_ADAPTIVE="true") - await index_requests_per_start() == 2


async def test_pacing_without_admission_is_off(monkeypatch):
    w = world(monkeypatch, PACING_REQUESTS_PER_MINUTE="1", ADMISSION_MAX_WAIT_SECONDS="0")
    for text in ("one", "two"):
        assert (await w.services.starter.start(RunRequest(input=text))).run.response_id
    assert not any(key[0] == PARTITION for key in w.index.rows)


# -- the burst (PACING_BURST) ------------------------------------------------------------------------------------
def test_a_burst_spends_the_bucket_at_once_then_spaces_the_slots_and_refills_while_idle():
    bursty = PacingSettings(requests_per_minute=60, burst=0.1)  # a bucket of 6 requests
    assert slots(bursty, 9) == pytest.approx([0] * 6 + [1, 2, 3])
    state = PaceState()
    for _ in range(6):
        _, state = plan(bursty, state, NOW, 0)
    slot, _ = plan(bursty, state, NOW + 3, 0)  # 3 s idle: 3 requests back in the bucket
    assert slot == NOW + 3
    tokens = PacingSettings(tokens_per_minute=6000, burst=0.5)  # 3,000 tokens at once
    assert slots(tokens, 4, tokens=1000) == pytest.approx([0, 0, 0, 10])


def test_a_bucket_inside_the_providers_rolling_window_never_meets_a_429_however_late_creates_arrive():
    import random

    from local.emulator.quotas import _Rolling

    pacing = PacingSettings(requests_per_minute=29, burst=1.0)  # the provider: 30 a minute, rolling (OpenAI)
    provider, state, rng = _Rolling(), PaceState(), random.Random(7)
    now, arrivals = 0.0, []
    for i in range(300):
        now += rng.choice([0.0, 0.0, 0.0, 0.5, 3.0, 20.0]) if i >= 60 else 0.0  # a burst of 60, lulls and bursts
        slot, state = plan(pacing, state, now, 0)
        arrivals.append(slot + rng.uniform(0, 2))  # the create comes at its slot or later (a queue message)
    for at in sorted(arrivals):
        budget = provider.check(30, 1, at, 60.0, 1)
        assert budget.fits, at
        provider.take(budget)


def test_a_burst_setting_out_of_range_is_refused():
    from shared.settings import Settings

    from .fakes import ENV

    assert Settings.from_env({**ENV, "PACING_BURST": "0.5"}).pacing.burst == 0.5
    with pytest.raises(ValueError, match="PACING_BURST"):
        Settings.from_env({**ENV, "PACING_BURST": "1.5"})


async def test_a_given_back_slot_is_taken_by_the_next_create_and_one_gone_by_is_spent(now):
    # A run that started at another deployment releases the slot it held here (runs.admission `_earlier`).
    pacing = ProviderPacing(FakeTable(), RPM60)
    params = {"model": "m", "input": "hi"}
    waits = [(await pacing.reserve_turn(params, within=60)).wait for _ in range(4)]
    assert waits == pytest.approx([0, 1, 2, 3])
    await pacing.release(params, NOW + 2)  # the third gives its slot back
    await pacing.release(params, NOW - 1)  # gone by: nothing to give
    assert (await pacing.reserve_turn(params, within=60)).wait == pytest.approx(2)  # not 4: the budget kept
    assert (await pacing.reserve_turn(params, within=60)).wait == pytest.approx(4)  # then the next, as before
    big = {"model": "m", "input": "hi", "max_output_tokens": 10 * DEFAULT_OUTPUT_TOKENS}
    await pacing.release(params, NOW + 3)
    tokens_paced = ProviderPacing(pacing._table, PacingSettings(requests_per_minute=60, tokens_per_minute=10**6))
    assert (await tokens_paced.reserve_turn(big, within=60)).wait == pytest.approx(5)  # too small a slot for it
