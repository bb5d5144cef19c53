"""The fair order across callers of paced starts (shared/runs/fairness.py, through shared/runs/pacing.py) on fakes:
a simulated queue of runs that ask the pacing, sleep as told and ask again with their turn, as queued runs do. One
caller's burst delays another caller's run by at most two slots; backlogged callers share the budget by weight;
the budget itself still holds; a run not yet due costs one more reservation. Plus the hooks in admission and the
weight in CALLER_QUOTAS."""

from __future__ import annotations

import heapq
import itertools

import pytest

from shared.runs import fairness
from shared.runs.pacing import ProviderPacing
from shared.runs.requests import RunRequest
from shared.settings import PacingSettings, Quota
from shared.settings.quotas import caller_quotas

from .fakes import FakeClock, FakeTable, world

NOW = 1_800_000_000.0
RPM60 = PacingSettings(requests_per_minute=60)  # one slot a second
PARAMS = {"model": "m", "input": "hi"}


@pytest.fixture
def now(monkeypatch) -> FakeClock:
    fake = FakeClock(NOW)
    monkeypatch.setattr("shared.clock.now", fake)
    return fake


async def simulate(
    now: FakeClock, pacing: ProviderPacing, arrivals: list[tuple[float, str]], *, until: float = 10_000
) -> list[tuple[str, float, float, int]]:
    """Each run (arriving `at` seconds in, for `caller`) asks the pacing, sleeps for the wait it is told and, if it
    holds no slot, asks again with its turn: (caller, arrival, start, asks) per run, by start."""
    events = [(at, i, caller, None, at) for i, (at, caller) in enumerate(arrivals)]
    heapq.heapify(events)
    asks: dict[int, int] = dict.fromkeys(range(len(arrivals)), 0)
    started = []
    while events:
        at, i, caller, turn, arrived = heapq.heappop(events)
        assert at < until, "a run never started"
        now.now = NOW + at
        asks[i] += 1
        reserved = await pacing.reserve_turn(PARAMS, within=until, caller=caller, turn=turn)
        if reserved.held:
            started.append((caller, arrived, at + reserved.wait, asks[i]))
        else:
            assert reserved.wait > 0
            heapq.heappush(events, (at + reserved.wait, i, caller, reserved.turn, arrived))
    return sorted(started, key=lambda s: s[2])


def burst(caller: str, n: int, at: float = 0.0) -> list[tuple[float, str]]:
    return [(at, caller)] * n


async def test_a_callers_burst_delays_another_callers_run_by_at_most_two_slots(now):
    # A's 300 runs at once, then C's single run a minute later: C's run is due at once and waits for the limiter's
    # next slot or the one after, not behind A's 240 queued runs (FIFO made it wait ~240 s).
    started = await simulate(now, ProviderPacing(FakeTable(), RPM60), burst("A", 300) + [(60.5, "C")])
    ((_, arrived, start, _),) = [s for s in started if s[0] == "C"]
    assert start - arrived <= 2.0
    starts = sorted(s[2] for s in started)
    assert all(b - a >= 1.0 - 1e-6 for a, b in itertools.pairwise(starts))  # the budget held: a slot a second


async def test_backlogged_callers_share_by_weight_and_equally_by_default(now):
    weights = {"A": 1.0, "B": 1.0, "C": 2.0}
    pacing = ProviderPacing(FakeTable(), RPM60, weight_of=weights.__getitem__)
    # A queues 200 at once; B 20 at once 10 s later; C 100 at once 20 s later.
    started = await simulate(now, pacing, burst("A", 200) + burst("B", 20, at=10) + burst("C", 100, at=20))
    window = [s[0] for s in started if 25 <= s[2] < 65]  # 40 slots while all three have runs waiting
    counts = {caller: window.count(caller) for caller in weights}
    assert sum(counts.values()) == 40
    assert counts["A"] == pytest.approx(10, abs=2) and counts["B"] == pytest.approx(10, abs=2)
    assert counts["C"] == pytest.approx(20, abs=2)  # weight 2: twice A's share
    jain = sum(x / w for x, w in zip(counts.values(), weights.values(), strict=True)) ** 2 / (
        3 * sum((x / w) ** 2 for x, w in zip(counts.values(), weights.values(), strict=True))
    )
    assert jain >= 0.95


async def test_a_burst_taken_alone_counts_against_its_caller_once_others_wait(now):
    # The bucket holds a minute (PACING_BURST=1): A, alone at first, takes it whole; B then asks one run a second,
    # the budget's rate. In the first minute B gets about its max-min fair share (~55 of the ~118 starts), as if
    # A's burst had been A's share; with the burst not counted against A, B got ~2/3 of what the bucket refills.
    pacing = ProviderPacing(FakeTable(), PacingSettings(requests_per_minute=60, burst=1.0))
    arrivals = burst("A", 200) + [(1.0 + i, "B") for i in range(60)]
    started = await simulate(now, pacing, arrivals)
    first_minute = [s[0] for s in started if s[2] < 60]
    assert first_minute.count("A") == pytest.approx(60, abs=3)
    assert first_minute.count("B") >= 52
    assert all(s[2] - s[1] <= 6 for s in started if s[0] == "B")  # B waits a few slots at most, never a minute
    starts = sorted(s[2] for s in started)
    assert sum(1 for t in starts if t < 120) >= 0.95 * (60 + 120)  # the budget is spent: a full bucket plus 2 min


async def test_a_run_not_yet_due_costs_one_more_reservation_and_a_caller_alone_two_asks_at_most(now):
    table = FakeTable()
    started = await simulate(now, ProviderPacing(table, RPM60), burst("A", 50))
    assert [s[2] for s in started] == pytest.approx(list(range(50)))  # alone, it gets every slot, in order
    assert max(s[3] for s in started) == 2  # asked when accepted, and again once due
    assert [s[3] for s in started[:2]] == [1, 1]  # the first two hold their slots at once
    assert table.requests <= 2 * sum(s[3] for s in started)  # one read and one write per ask at most


async def test_without_a_caller_creates_keep_the_fifo_slots(now):
    pacing = ProviderPacing(FakeTable(), RPM60)
    waits = [(await pacing.reserve_turn(PARAMS, within=600)).wait for _ in range(5)]
    assert waits == pytest.approx([0, 1, 2, 3, 4])


def test_the_clock_runs_at_one_over_the_waiting_weights_and_keeps_real_time_when_none_waits():
    Caller = fairness.Caller
    turns = fairness.Turns(0.0, 0.0, {"A": Caller(10.0, 1.0, 5, 0.0), "B": Caller(4.0, 2.0, 1, 0.0)})
    assert fairness.advance(turns, 6.0).clock == pytest.approx(2.0)  # weights 1 + 2 waiting: a third of the speed
    idle = fairness.Turns(0.0, 0.0, {"A": Caller(10.0, 1.0, 0, 0.0)})  # nothing queued, silent: not waiting
    assert fairness.advance(idle, 20.0).clock == pytest.approx(20.0)
    assert fairness.advance(idle, 20.0).callers == {}  # its last turn passed: dropped
    # A caller whose runs come one at a time (nothing queued) shares the budget while its last turn lies ahead
    # and it asked within RECENT_SECONDS, and stops sharing it once it is silent (no phantom share).
    recent = fairness.Turns(0.0, 0.0, {"A": Caller(100.0, 1.0, 9, 0.0), "B": Caller(50.0, 1.0, 0, 0.0)})
    assert set(recent.waiting(fairness.RECENT_SECONDS)) == {"A", "B"}
    assert set(recent.waiting(fairness.RECENT_SECONDS + 1)) == {"A"}
    stale = fairness.Turns(0.0, 0.0, {"A": Caller(100.0, 1.0, 9, 0.0)})  # its queued runs ended without a word
    assert stale.waiting(fairness.STALE_SECONDS + 1) == {}


def test_turns_round_trip_through_the_row():
    turns = fairness.Turns(3.0, NOW, {"b": fairness.Caller(5.0, 2.0, 3, NOW), "a": fairness.Caller(4.0, 1.0)})
    again = fairness.Turns.load(turns.clock, turns.at, turns.dump())
    assert again == turns


def test_a_weight_is_caller_quotas_fourth_field_and_defaults_to_one():
    assert caller_quotas("batch:50:600:3 @native:20:0") == {
        "batch": Quota(50, 600, 3),
        "@native": Quota(20, 0, 1),
    }
    for bad in ("a:1:1:0", "a:1:1:x", "a:1:1:1001", "a:1:1:1:1"):
        with pytest.raises(ValueError, match=r"weight|name:active"):
            caller_quotas(bad)


async def test_a_start_behind_other_callers_is_queued_for_its_turn_and_keeps_it_when_it_asks_again(monkeypatch):
    w = world(monkeypatch, PACING_REQUESTS_PER_MINUTE="60")
    runs = [(await w.services.starter.start(RunRequest(input=f"r{i}"))).run for i in range(3)]
    assert runs[0].response_id and runs[1].admission.reason == "paced"  # the first two: go, and a held slot
    third = runs[2]
    assert third.admission.reason == "fair turn" and not third.admission.paced
    assert third.admission.turn == pytest.approx(w.clock.now + 2)  # its caller's third turn (a second each)
    view = w.services.views.render(await w.run(third.id), timeline=True)
    assert view["admission"]["reason"] == "fair turn"
    assert view["admission"]["estimated_start_at"] == pytest.approx(w.clock.now + 2)
    assert "capacity_queued" in [e["type"] for e in view["timeline"]["entries"]]
    (sent,) = [s for s in w.poll_queue.sent if s.message["run_id"] == third.id]
    assert sent.delay == pytest.approx(2)  # due at 1 s, and the limiter's slot for it is at 2 s
    w.clock.advance(2)
    before = w.index.requests
    assert await w.services.poll_step.handle(sent.message) == "capacity-granted"
    assert w.index.requests - before == 2  # it asked again with its turn: one read, one write (its slot)


async def test_a_run_told_its_turn_again_shows_it_in_its_timeline(monkeypatch):
    w = world(monkeypatch, PACING_REQUESTS_PER_MINUTE="60")
    runs = [(await w.services.starter.start(RunRequest(input=f"r{i}"))).run for i in range(4)]
    fourth = runs[3]
    (sent,) = [s for s in w.poll_queue.sent if s.message["run_id"] == fourth.id]
    w.clock.advance(1)  # too early: its turn (3 s) is not due yet
    assert await w.services.poll_step.handle(sent.message) == "capacity-waiting"
    view = w.services.views.render(await w.run(fourth.id), timeline=True)
    assert view["admission"]["reason"] == "fair turn"
    assert [e["type"] for e in view["timeline"]["entries"]][-1] == "capacity_turn"
    assert (await w.run(fourth.id)).admission.turn == pytest.approx(w.clock.now - 1 + 3)  # kept, not a new one


async def test_the_limiter_view_shows_the_bucket_the_next_slot_and_the_callers_waiting(now):
    pacing = ProviderPacing(FakeTable(), PacingSettings(requests_per_minute=60, burst=0.1))  # a bucket of 6
    assert await pacing.view() == []
    for caller in ("a", "a", "a", "a", "b"):
        await pacing.reserve_turn(PARAMS, within=600, caller=caller)
    now.advance(1)
    (view,) = await pacing.view()
    assert view["model"] == "m" and view["requests_per_minute"] == 60 and view["burst"] == 0.1
    assert view["requests_in_bucket"] == pytest.approx(2)  # 6, less 5 taken, plus 1 s of refill
    assert view["next_slot_in_seconds"] == 0
    assert view["starts_last_minute"] == pytest.approx(5, abs=0.2)
    assert set(view["callers_waiting"]) == {"a", "b"}
    assert view["callers_waiting"]["a"]["budget_seconds_ahead"] > view["callers_waiting"]["b"]["budget_seconds_ahead"]
    assert await ProviderPacing(FakeTable(), PacingSettings()).view() == []  # off: not even a query
