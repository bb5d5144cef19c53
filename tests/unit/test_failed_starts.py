"""A start that fails at any step, for any reason, leaves nothing behind (issue 21).

Each scenario is started once to count its steps (every storage request, queue message, provider call and the
executor's request check it makes); then, for every step in turn, the same start is made again in a fresh
world with an exception raised at that step. Whatever the step and the exception (a bug's TypeError, the
UnicodeEncodeError a lone surrogate caused, a RecursionError, storage down, the provider refusing): the start
raises, and afterwards there is no run, no index row, no session run row or reservation, no event log, no blob,
no Idempotency-Key, no webhook (not even after the sweeper's pass), no provider response left running or
stored, and every poll or execute message it sent finds no run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.errors import RateLimited, ServiceError
from shared.provider import ProviderError
from shared.runs.quotas import PARTITION_PREFIX, SLOT_PREFIX, STATE_ROW
from shared.runs.requests import RunRequest

from .fakes import FakeTable, HostCrash, Steps, world

SECRET = "whsec_" + "B" * 43
HUGE = "x" * 70_000  # a request part too large for a Table property: it goes to a blob


@dataclass
class Scenario:
    env: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    session: bool = False
    key: str | None = None
    finish_at_once: bool = False


SCENARIOS = {
    "plain": Scenario(),
    "session-key-webhook-push": Scenario(
        env={"PROVIDER_WEBHOOK_SECRETS": SECRET},
        session=True,
        key="k-1",
        fields={"webhook_url": "http://127.0.0.1:9/h", "metadata": {"a": "b"}},
    ),
    "finished-at-once-with-webhook": Scenario(
        session=True, key="k-2", finish_at_once=True, fields={"webhook_url": "http://127.0.0.1:9/h"}
    ),
    "streaming-large-request": Scenario(fields={"stream": True, "instructions": HUGE}),
    "executor": Scenario(
        env={"RUN_BACKEND": "executor"}, session=True, key="k-3", fields={"webhook_url": "http://127.0.0.1:9/h"}
    ),
    "caller-quotas": Scenario(
        env={"CALLER_MAX_ACTIVE_RUNS": "2", "CALLER_STARTS_PER_MINUTE": "100"},
        key="k-4",
        session=True,
        fields={"webhook_url": "http://127.0.0.1:9/h"},
    ),
}
FAILURES: dict[str, Callable[[], BaseException]] = {
    "type-error": lambda: TypeError("'int' object is not iterable"),
    "surrogate": lambda: UnicodeEncodeError("utf-16-le", "\ud800", 0, 1, "surrogates not allowed"),
    "recursion": lambda: RecursionError("maximum recursion depth exceeded"),
    "storage-down": lambda: ServiceRequestError("storage unreachable"),
    # (a 500: its outcome is unknown, so the start is refused; a 429/503 would queue the run: runs.admission)
    "provider-refuses": lambda: ProviderError(transient=True, status=500, message="broken"),
}


async def prepared(monkeypatch, scenario: Scenario, steps: Steps):
    w = world(monkeypatch, **scenario.env)
    w.backend.finish_at_once = scenario.finish_at_once
    session = await w.services.starter.open_session() if scenario.session else None
    steps.wrap_world(w)
    request = RunRequest(input="hi", session_id=session.id if session else None, **scenario.fields)
    return w, session, request


async def count_steps(monkeypatch, scenario: Scenario) -> list[str]:
    steps = Steps()
    w, _, request = await prepared(monkeypatch, scenario, steps)
    with steps.counting():
        await w.services.starter.start(request, idempotency_key=scenario.key)
    return steps.names


def rows(table: FakeTable) -> set[tuple[str, str]]:
    """The table's rows, but a caller's quota row (runs.quotas): its start rate counts a start that failed too."""
    return {key for key in table.rows if not (key[0].startswith(PARTITION_PREFIX) and key[1] == STATE_ROW)}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_a_start_failing_at_any_step_leaves_nothing_behind(monkeypatch, scenario, failure):
    names = await count_steps(monkeypatch, SCENARIOS[scenario])
    assert len(names) >= 6, names  # the count is real: the plainest start makes six calls
    for at, name in enumerate(names):
        steps = Steps(at, fail=FAILURES[failure])
        w, session, request = await prepared(monkeypatch, SCENARIOS[scenario], steps)
        index_before, sessions_before = rows(w.index), rows(w.tables["sessions"])
        where = f"{scenario}: {failure} at step {at} ({name})"
        with pytest.raises((type(FAILURES[failure]()), ServiceError)), steps.counting():
            await w.services.starter.start(request, idempotency_key=SCENARIOS[scenario].key)
        await assert_nothing_left(w, session, index_before, sessions_before, where)


async def assert_nothing_left(w, session, index_before, sessions_before, where: str) -> None:
    assert not w.runs.rows, where
    assert rows(w.index) == index_before, (where, rows(w.index) - index_before)
    assert rows(w.tables["sessions"]) == sessions_before, where
    if session is not None:
        assert (await w.services.reader.session(session.id))[0].active_run_id is None, where
    assert not w.tables["idempotency"].rows and not w.tables["runevents"].rows, where
    assert not w.blobs.blobs, where
    assert not w.backend.responses, where  # created ones were cancelled and deleted
    assert not w.webhook_queue.sent, where
    assert set(await w.drain_polls()) <= {"unknown-run"}, where
    assert set(await w.execute()) <= {"unknown-run"}, where
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
    assert await w.services.sweeper.sweep() == {"open": 0}, where
    assert not w.webhook_queue.sent and not w.sender.sent, where


async def test_a_crash_mid_start_is_still_left_to_the_sweeper(monkeypatch):
    """A crash (or a cancellation) runs no cleanup: the sweeper ends the run, and its webhook tells the caller."""
    steps = Steps()
    w, _, request = await prepared(monkeypatch, Scenario(fields={"webhook_url": "http://127.0.0.1:9/h"}), steps)
    w.backend.fail["start"] = [HostCrash("killed")]
    with pytest.raises(HostCrash):
        await w.services.starter.start(request)
    ((run_id, _),) = w.runs.rows
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["starts"] == 1
    assert (await w.run(run_id)).result["error"]["code"] == "start_interrupted" and w.webhook_queue.sent


async def test_a_crash_right_after_the_quota_admission_leaves_a_slot_the_sweeper_reclaims(monkeypatch):
    """Between the admission and the run's open-work entry a crash leaves a slot no run will give back: the sweeper
    gives it back once it is older than the start grace (runs.quotas)."""
    scenario = Scenario(env={"CALLER_MAX_ACTIVE_RUNS": "1"})
    names = await count_steps(monkeypatch, scenario)
    steps = Steps(names.index("runindex.submit_transaction") + 1, fail=lambda: HostCrash("killed"))
    w, _, request = await prepared(monkeypatch, scenario, steps)
    with pytest.raises(HostCrash), steps.counting():
        await w.services.starter.start(request)
    assert not w.runs.rows and len(slots(w)) == 1
    with pytest.raises(RateLimited):  # the caller's one slot is held meanwhile
        await w.services.starter.start(RunRequest(input="next"))
    assert await w.services.sweeper.sweep() == {"open": 0}  # within the start grace: the start may be alive
    w.clock.advance(w.services.starter.start_grace + 1)
    assert await w.services.sweeper.sweep() == {"open": 0, "slots": 1}
    assert not slots(w)
    await w.services.starter.start(RunRequest(input="next"))


def slots(w) -> set[tuple[str, str]]:
    return {key for key in w.index.rows if key[0].startswith(PARTITION_PREFIX) and key[1].startswith(SLOT_PREFIX)}
