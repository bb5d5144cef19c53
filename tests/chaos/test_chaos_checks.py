"""The chaos run's invariants (bench/chaos_checks.py) on hand-made evidence: each check must flag the
failure it exists for (several of them are races a real run hits only by chance) and pass a clean history."""

from __future__ import annotations

from typing import Any

from bench.chaos_checks import (
    CAUSE_CANCEL,
    CAUSE_DEADLINE,
    CAUSE_END_EVENT,
    CAUSE_EXECUTOR_DEADLINE,
    CAUSE_EXECUTOR_STOP,
    CAUSE_EXPIRY_SAVE_LOST,
    CAUSE_IDEMPOTENT_ABANDON,
    CAUSE_SESSION_BACK,
    CAUSE_SESSION_RACE,
    Checker,
    Evidence,
    call_stopped_by,
    call_whole,
)
from bench.chaos_client import RunRecord

T0 = 1_800_000_000.0


def record(run_id: str, scenario: str = "plain", **expect: Any) -> RunRecord:
    return RunRecord(run_id, scenario, expect or {"status": "completed"}, f"key-{run_id}", T0)


def view(run_id: str, status: str = "completed", created: float = T0, ended: float = T0 + 2, **more: Any) -> dict:
    return {
        "id": run_id,
        "status": status,
        "created_at": created,
        "completed_at": ended,
        "provider_response_id": f"resp_{run_id}",
        "output_text": more.pop("text", "hello"),
        "webhook": {"state": "delivered", "id": f"msg_{run_id}", "attempts": [{}]},
        **more,
    }


def provider(run_id: str, status: str = "completed", finished: float = T0 + 1.5, **more: Any) -> dict:
    return {
        "id": f"resp_{run_id}",
        "status": status,
        "created_at": T0,
        "finished_at": finished,
        "cancelled_at": more.pop("cancelled_at", None),
        "previous_response_id": more.pop("previous", None),
        "metadata": {"bg_run_id": run_id},
        "counters": {},
        **more,
    }


def evidence(records: list[RunRecord], views: list[dict], providers: list[dict], **more: Any) -> Evidence:
    by_run: dict[str, list[dict]] = {}
    for p in providers:
        by_run.setdefault(p["metadata"]["bg_run_id"], []).append(p)
    fields = dict(
        records={r.run_id: r for r in records},
        views={v["id"]: v for v in views},
        provider=by_run,
        provider_by_id={p["id"]: p for p in providers},
        deliveries=[],
        poison={},
        reference_streams={},
        sessions={},
        idempotency=[],
        key_runs={r.key: {r.run_id} for r in records},
        not_accepted=[],
        capacity_refusals=[],
        start_answers=len(records),
        server_errors=[],
        job_errors=[],
        answers=0,
        run_deadline=300.0,
        stuck_slack=30.0,
    )
    fields.update(more)
    return Evidence(**fields)


def test_two_runs_active_on_one_session_are_flagged_with_the_session_race_as_cause() -> None:
    a, b, c = (record(x, "session_concurrent") for x in ("a", "b", "c"))
    for r in (a, b, c):
        r.session_id = "sess_1"
    views = [
        view("a", created=T0, ended=T0 + 3),
        view("b", created=T0 + 0.01, ended=T0 + 3.5),
        view("c", created=T0 + 5, ended=T0 + 7),
    ]
    log = {
        "turns": [],
        "concurrent": [
            {"run_id": "a", "http": 202, "code": None, "answers": ["202"]},
            {"run_id": "b", "http": 202, "code": None, "answers": ["202"]},
        ],
    }
    check = Checker(evidence([a, b, c], views, [], sessions={"sess_1": log})).sessions_one_active()
    assert not check.ok
    assert [f["run_id"] for f in check.failures] == ["b"] and check.failures[0]["likely_cause"] == CAUSE_SESSION_RACE


def test_sequential_session_runs_and_409_losers_pass() -> None:
    a, c = record("a", "session_text"), record("c", "session_text")
    a.session_id = c.session_id = "sess_1"
    log = {
        "turns": [{"turn": "text", "run_id": "a", "answers": ["202"]}],
        "concurrent": [{"run_id": None, "http": 409, "code": "session_busy", "answers": ["409 session_busy"]}],
    }
    ev = evidence(
        [a, c],
        [view("a", ended=T0 + 3), view("c", created=T0 + 3.2, ended=T0 + 5)],
        [provider("a"), provider("c", previous="resp_a")],
        sessions={"sess_1": log},
    )
    assert Checker(ev).sessions_one_active().ok and Checker(ev).session_chains().ok


def test_a_run_expired_after_its_provider_completed_before_the_deadline_is_flagged() -> None:
    near = record("n", "deadline_near", status="completed", rule="deadline_near", deadline_seconds=5)
    expired = view(
        "n",
        status="expired",
        ended=T0 + 5.6,
        text="",
        error={"code": "deadline_exceeded", "message": "The run did not finish within 5 s."},
    )
    check = Checker(evidence([near], [expired], [provider("n", finished=T0 + 4.6)])).allowed_state()
    assert not check.ok and check.failures[0]["likely_cause"] == CAUSE_DEADLINE
    late = Checker(evidence([near], [expired], [provider("n", finished=T0 + 5.2)])).allowed_state()
    assert late.ok  # the provider finished after the run's deadline: expired is right
    quoted_global = {
        **expired,
        "error": {"code": "deadline_exceeded", "message": "The run did not finish within 300 s."},
    }
    wrong_message = Checker(evidence([near], [quoted_global], [provider("n", finished=T0 + 5.2)])).allowed_state()
    assert not wrong_message.ok
    kept = view("n", status="completed", ended=T0 + 9)  # a late look found the provider done: output kept
    assert Checker(evidence([near], [kept], [provider("n", finished=T0 + 6)])).allowed_state().ok


def test_a_cancel_reported_while_the_provider_completed_uncancelled_is_flagged() -> None:
    race = record("r", "cancel_race", rule="cancel_race", duration_ms=3000)
    race.cancel = {"sent_at": T0 + 2.0, "status": "cancelled"}
    check = Checker(evidence([race], [view("r", status="cancelled")], [provider("r")])).allowed_state()
    assert not check.ok and check.failures[0]["likely_cause"] == CAUSE_CANCEL
    honest = evidence(
        [race], [view("r", status="cancelled")], [provider("r", status="cancelled", cancelled_at=T0 + 2.0)]
    )
    assert Checker(honest).allowed_state().ok


def _streamed(run_id: str, ids: list[int], final: str, after_final: list[str], deltas: str = "hello") -> RunRecord:
    r = record(run_id, "stream", status="completed", stream=True)
    r.stream = {
        "ids": ids,
        "connections": [{"how": "start", "outcome": "cut"}],
        "deltas": deltas,
        "final": final,
        "final_id": ids[-1],
        "ended_by": None,
        "after_final": after_final,
        "cuts": [3],
    }
    return r


def test_stream_gaps_duplicates_and_a_repeated_final_event_are_flagged() -> None:
    ref = {"s": {"ids": list(range(6)), "text": "hello", "final": True}}
    exact = _streamed("s", [0, 1, 2, 3, 4, 5], "run.completed", ["starting_after:end"])
    assert Checker(evidence([exact], [view("s")], [provider("s")], reference_streams=ref)).streams_gap_free().ok
    gap = _streamed("s", [0, 1, 3, 4, 5], "run.completed", ["starting_after:end"])
    assert not Checker(evidence([gap], [view("s")], [provider("s")], reference_streams=ref)).streams_gap_free().ok
    dup = _streamed("s", [0, 1, 2, 2, 3, 4, 5], "run.completed", ["starting_after:end"])
    assert not Checker(evidence([dup], [view("s")], [provider("s")], reference_streams=ref)).streams_gap_free().ok
    # a cancelled stream: the provider stops without a final event, the relay adds the run's own at N+1
    cut_ref = {"s": {"ids": list(range(4)), "text": "", "final": False}}
    cancelled = _streamed("s", [0, 1, 2, 3, 4], "run.cancelled", ["last_event_id:run.cancelled#5"], deltas="")
    ev = evidence(
        [cancelled],
        [view("s", status="cancelled", text="")],
        [provider("s", status="cancelled", cancelled_at=T0 + 1)],
        reference_streams=cut_ref,
    )
    assert Checker(ev).streams_gap_free().ok
    cancelled.stream["ids"] = [0, 1, 2, 3, 2**31 - 1]  # a relay may give its own final event a fixed top id
    assert Checker(ev).streams_gap_free().ok
    cancelled.stream["ids"] = [0, 1, 3, 4]  # ... but a provider event may not go missing before it
    assert not Checker(ev).streams_gap_free().ok
    cancelled.stream["ids"] = [0, 1, 2, 3, 4]
    repeated = Checker(ev).end_after_final()
    assert not repeated.ok and repeated.failures[0]["likely_cause"] == CAUSE_END_EVENT


def test_a_run_lost_after_its_key_was_answered_twice_is_flagged_once_with_its_cause() -> None:
    first, second = record("x", "idempotent"), record("y", "idempotent")
    second.key = first.key
    ev = evidence([first, second], [view("y")], [provider("y")], key_runs={first.key: {"x", "y"}})
    ev.views["x"] = {"missing": True}
    checker = Checker(ev)
    lost = checker.not_lost()
    assert not lost.ok and lost.failures[0]["likely_cause"] == CAUSE_IDEMPOTENT_ABANDON
    assert not checker.idempotency().ok
    assert checker.terminal().ok and checker.one_provider_response().ok  # counted once, under "lost"


# -- executor runs (RUN_BACKEND=executor): judged by their view, their replay and the emulator's chat log ----------
def call(
    call_id: str,
    start: float,
    end: float,
    *,
    chunks: int = 44,
    sent: int | None = None,
    cut: bool = False,
    disconnected: bool = False,
) -> dict:
    """A streamed chat call as GET /v1/_emulator/chat_completions lists it (40 content chunks + role + 3 closing)."""
    return {
        "id": call_id,
        "created_at": start,
        "first_token_at": start + 0.1,
        "finished_at": end,
        "outcome": "stop",
        "chunks": chunks,
        "chunks_sent": chunks if sent is None else sent,
        "cut": cut,
        "disconnected": disconnected,
        "tool_calls": [],
        "knobs": {},
    }


def exec_view(run_id: str, status: str = "completed", **more: Any) -> dict:
    return view(run_id, status, provider_response_id=f"exec_{run_id}", backend="executor", **more)


def exec_evidence(records: list[RunRecord], views: list[dict], calls: dict[str, list[dict]], **more: Any) -> Evidence:
    return evidence(records, views, more.pop("providers", []), backend="executor", chat_calls=calls, **more)


def test_a_call_that_was_hung_up_stopped_at_the_first_chunk_it_never_sent() -> None:
    whole = call("c", T0, T0 + 4.1)
    assert call_whole(whole) and call_stopped_by(whole) == T0 + 4.1
    half = call("c", T0, T0 + 4.1, sent=21, disconnected=True)  # role + 20 of 40 content chunks
    assert not call_whole(half) and abs(call_stopped_by(half) - (T0 + 0.1 + 4.0 * 21 / 41)) < 1e-9
    assert call_stopped_by(call("c", T0, T0 + 4.1, sent=0, cut=True)) == T0 + 0.1


def test_an_executor_run_with_a_provider_response_or_without_a_whole_model_call_is_flagged() -> None:
    a, b, c = record("a"), record("b"), record("c")
    views = [exec_view("a"), exec_view("b"), view("c", backend="background")]
    calls = {
        "a": [call("a1", T0, T0 + 1, sent=10, cut=True), call("a2", T0 + 1, T0 + 2)],
        "b": [call("b1", T0, T0 + 1, sent=10, disconnected=True)],
        "c": [call("c1", T0, T0 + 1)],
    }
    check = Checker(exec_evidence([a, b, c], views, calls, providers=[provider("a")])).ran_on_executor()
    assert not check.ok
    problems = {f["run_id"]: f["problem"] for f in check.failures}
    assert "provider background response" in problems["a"] and "without a model call" in problems["b"]
    assert "backend 'background'" in problems["c"] and "is not the executor's" in problems["c"]
    clean = Checker(exec_evidence([a], [exec_view("a")], {"a": calls["a"]})).ran_on_executor()
    assert clean.ok and "1 runs called the model more than once" in clean.detail


def test_a_model_call_streaming_on_after_its_run_was_cancelled_is_flagged() -> None:
    r = record("r", "cancel_race", rule="cancel_race", duration_ms=6000)
    cancelled = exec_view("r", status="cancelled", ended=T0 + 2)
    went_on = {"r": [call("r1", T0, T0 + 8)]}  # sent every chunk, 6 s after the run ended
    check = Checker(exec_evidence([r], [cancelled], went_on)).model_calls_stopped()
    assert not check.ok and check.failures[0]["likely_cause"] == CAUSE_EXECUTOR_STOP
    stopped = {"r": [call("r1", T0, T0 + 8, sent=12, disconnected=True)]}  # hung up ~1.7 s after the start
    assert Checker(exec_evidence([r], [cancelled], stopped)).model_calls_stopped().ok
    orphan = [{**call("x1", T0, T0 + 3), "knobs": {"emulator_chaos_tag": "7.9"}}]
    assert not Checker(exec_evidence([r], [cancelled], stopped, unclaimed_chat_calls=orphan)).model_calls_stopped().ok


def test_an_executor_deadline_run_is_judged_by_its_end_and_its_last_model_call() -> None:
    near = record("n", "deadline_near", status="completed", rule="deadline_near", deadline_seconds=5)
    message = "The run did not finish within its deadline of 5 s."
    expired = exec_view(
        "n", status="expired", ended=T0 + 5.3, text="", error={"code": "deadline_exceeded", "message": message}
    )
    lost = Checker(exec_evidence([near], [expired], {"n": [call("n1", T0 + 0.5, T0 + 3.0)]})).allowed_state()
    assert not lost.ok and lost.failures[0]["likely_cause"] == CAUSE_EXECUTOR_DEADLINE
    late_call = {"n": [call("n1", T0 + 2, T0 + 6.5)]}  # the model would have ended past the deadline
    assert Checker(exec_evidence([near], [expired], late_call)).allowed_state().ok
    early = {**expired, "completed_at": T0 + 3.9}
    assert not Checker(exec_evidence([near], [early], late_call)).allowed_state().ok
    kept = exec_view("n", ended=T0 + 5.9)
    assert Checker(exec_evidence([near], [kept], {"n": [call("n1", T0 + 1, T0 + 5.8)]})).allowed_state().ok
    too_late = Checker(exec_evidence([near], [kept], {"n": [call("n1", T0 + 3, T0 + 8)]})).allowed_state()
    assert not too_late.ok and "should have expired" in too_late.failures[0]["problem"]


def test_an_executor_stream_is_compared_with_the_runs_replay_and_session_chains_are_skipped() -> None:
    ref = {
        "s": {
            "ids": [0, 1, 2, 3, 4, 5, 6],
            "text": "hello",
            "final": "run.completed",
            "restarts": 1,
            "source": "service",
        }
    }
    s = _streamed("s", [0, 1, 2, 3, 4, 5, 6], "run.completed", ["starting_after:end"])
    ev = exec_evidence([s], [exec_view("s")], {"s": [call("s1", T0, T0 + 1)]}, reference_streams=ref)
    assert Checker(ev).streams_gap_free().ok
    s.stream["ids"] = [0, 1, 2, 4, 5, 6]
    assert not Checker(ev).streams_gap_free().ok
    s.stream["ids"], ref["s"]["text"] = [0, 1, 2, 3, 4, 5, 6], "hello hello"  # the log's text is not the output
    assert not Checker(ev).streams_gap_free().ok
    chains = Checker(ev).session_chains()
    assert chains.ok and chains.skipped


def test_a_run_cancelled_by_nobody_after_its_deadline_is_flagged_as_an_expiry_whose_save_was_lost() -> None:
    past = record("p", "deadline_past", status="expired", rule="deadline_past", deadline_seconds=3)
    ended = view("p", status="cancelled", ended=T0 + 24, text="", error=None)
    check = Checker(evidence([past], [ended], [provider("p", status="cancelled", cancelled_at=T0 + 5)])).allowed_state()
    assert not check.ok and check.failures[0]["likely_cause"] == CAUSE_EXPIRY_SAVE_LOST


def test_a_turn_continuing_from_an_older_turn_is_flagged_with_the_session_moving_back_as_cause() -> None:
    a, b, c = record("a", "session_text"), record("b", "session_concurrent"), record("c", "session_text_after")
    for r in (a, b, c):
        r.session_id = "sess_1"
    views = [view("a", ended=T0 + 1), view("b", created=T0 + 2, ended=T0 + 3), view("c", created=T0 + 4, ended=T0 + 5)]
    providers = [provider("a"), provider("b", previous="resp_a"), provider("c", previous="resp_a")]
    log = {"turns": [], "concurrent": []}
    check = Checker(evidence([a, b, c], views, providers, sessions={"sess_1": log})).session_chains()
    assert not check.ok and check.failures[0]["run_id"] == "c"
    assert check.failures[0]["likely_cause"] == CAUSE_SESSION_BACK and len(check.failures[0]["session"]) == 3


def test_an_executor_run_may_give_up_after_its_attempts_were_interrupted_but_not_after_a_whole_call() -> None:
    plain = record("g")
    gave_up = exec_view("g", status="failed", text="", error={"code": "model_call_interrupted", "message": "3 times"})
    cut = {
        "g": [
            call("g1", T0, T0 + 3, sent=5, cut=True),
            call("g2", T0 + 1, T0 + 4, sent=9, disconnected=True),
            call("g3", T0 + 5, T0 + 8, sent=2, cut=True),
        ]
    }
    allowed = Checker(exec_evidence([plain], [gave_up], cut)).allowed_state()
    assert allowed.ok and "1 model calls interrupted" in allowed.detail
    whole = {"g": cut["g"][:2] + [call("g3", T0 + 5, T0 + 8)]}
    assert not Checker(exec_evidence([plain], [gave_up], whole)).allowed_state().ok


def test_a_run_ended_while_queued_for_capacity_needs_no_provider_response_but_a_granted_one_does() -> None:
    waited = {
        "state": "ended",
        "queued_at": T0,
        "attempts": 3,
        "reason": "provider 429",
        "next_try_at": None,
        "granted_at": None,
    }
    cancelled = view(
        "q", status="cancelled", text="", provider_response_id=None, continuation_token=None, admission=waited
    )
    granted = view(
        "g",
        provider_response_id=None,
        continuation_token=None,
        admission={**waited, "state": "granted", "granted_at": T0 + 3},
    )
    check = Checker(
        evidence([record("q", status="cancelled"), record("g")], [cancelled, granted], [])
    ).one_provider_response()
    assert [f["run_id"] for f in check.failures] == ["g"] and "1 runs ended while queued" in check.detail


def test_a_start_refused_for_provider_capacity_and_a_queued_run_that_never_ended_are_flagged() -> None:
    queued = {"state": "waiting_for_capacity", "queued_at": T0, "attempts": 2, "reason": "paced", "granted_at": None}
    stuck = view("q", status="queued", text="", provider_response_id=None, admission=queued)
    ended = view("e", admission={**queued, "state": "granted", "granted_at": T0 + 2})
    ev = evidence([record("q"), record("e")], [stuck, ended], [], capacity_refusals=["POST /api/runs -> 429 None"])
    refused, lost = Checker(ev).no_capacity_refusals(), Checker(ev).no_queued_run_lost()
    assert not refused.ok and refused.failures[0]["problem"] == "POST /api/runs -> 429 None"
    assert not lost.ok and [f["run_id"] for f in lost.failures] == ["q"] and lost.detail.startswith("1/2")
    assert Checker(evidence([record("e")], [ended], [])).no_queued_run_lost().ok


def test_a_stream_of_a_run_that_never_learned_its_provider_response_is_its_final_event_alone() -> None:
    # A start cut by a host kill after the create: the provider has a response the run never followed, and the
    # sweeper ended the run start_interrupted; its stream can only be the run's own final event.
    interrupted = view("i", status="failed", text="", provider_response_id=None, error={"code": "start_interrupted"})
    alone = _streamed("i", [2**31 - 1], "run.failed", ["start:final"], deltas="")
    assert Checker(evidence([alone], [interrupted], [provider("i")])).streams_gap_free().ok
    alone.stream["ids"] = [0, 2**31 - 1]  # events of a response it never followed would be a defect
    assert not Checker(evidence([alone], [interrupted], [provider("i")])).streams_gap_free().ok
    followed = _streamed("f", [2**31 - 1], "run.failed", ["start:final"], deltas="")  # it knew its response
    assert (
        not Checker(evidence([followed], [view("f", status="failed", text="")], [provider("f")])).streams_gap_free().ok
    )


def test_a_run_or_a_session_turn_away_from_its_deployment_is_flagged():
    records = [record("a"), record("b"), record("c")]
    views = [view("a", deployment="ptu"), view("b", deployment="ptu"), view("c", deployment="payg")]
    clean = [
        provider("a", deployment="ptu"),
        provider("b", deployment="ptu", previous="resp_a"),
        provider("c", deployment="payg"),
    ]
    assert Checker(evidence(records, views, clean, deployments=True)).deployments_kept().ok
    moved = [*clean[:2], provider("c", deployment="payg", previous="resp_b")]  # a chain that changed deployment
    check = Checker(evidence(records, views, moved, deployments=True)).deployments_kept()
    assert not check.ok and "continues resp_b at ptu from payg" in check.failures[0]["problem"]
    elsewhere = [*clean[:2], provider("c", deployment="ptu")]  # the run names payg, its response is at ptu
    assert not Checker(evidence(records, views, elsewhere, deployments=True)).deployments_kept().ok
    interrupted = [*views[:2], view("c", "failed", provider_response_id=None)]  # its start never learnt where
    assert Checker(evidence(records, interrupted, clean, deployments=True)).deployments_kept().ok
    assert "deployment" not in " ".join(c.name for c in Checker(evidence(records, views, clean)).all())


def test_a_run_whose_deployment_was_down_at_its_deadline_may_end_when_it_returns_but_not_later():
    records = [record("p", "deadline_near", deadline_seconds=5), record("q", "deadline_near", deadline_seconds=5)]
    outage = {"ptu": (T0 + 3, T0 + 123)}  # ptu down from before the deadline to two minutes after it
    back = view("p", ended=T0 + 130, deployment="ptu")  # learnt its end 7 s after ptu came back
    elsewhere = view("q", ended=T0 + 130, deployment="payg")  # payg was up: 125 s late is stuck
    check = Checker(evidence(records, [back, elsewhere], [], outages=outage)).nothing_stuck()
    assert [f["run_id"] for f in check.failures] == ["q"] and "after its deadline" in check.failures[0]["problem"]
    too_late = view("p", ended=T0 + 160, deployment="ptu")
    check = Checker(evidence(records[:1], [too_late], [], outages=outage)).nothing_stuck()
    assert not check.ok and "after its deployment came back" in check.failures[0]["problem"]
    assert not Checker(evidence(records[:1], [back], [])).nothing_stuck().ok  # no outage: 125 s late is stuck


def test_two_concurrent_starts_that_won_one_after_the_other_pass_but_not_a_winner_without_a_run():
    a, b = record("a", "session_concurrent"), record("b", "session_concurrent")
    a.session_id = b.session_id = "sess_1"
    retried = ["ReadError", "ConnectError", "409 idempotency_key_busy", "202"]  # through a host kill
    log = {
        "turns": [],
        "concurrent": [
            {"run_id": "a", "http": 202, "code": None, "answers": ["ReadError", "202"]},
            {"run_id": "b", "http": 202, "code": None, "answers": retried},
        ],
    }
    after = [view("a", created=T0, ended=T0 + 3), view("b", created=T0 + 10, ended=T0 + 12)]  # b came after a ended
    assert Checker(evidence([a, b], after, [], sessions={"sess_1": log})).sessions_one_active().ok
    check = Checker(evidence([a, b], after[:1], [], sessions={"sess_1": log})).sessions_one_active()
    assert not check.ok and "2 concurrent starts answered 2xx" in check.failures[0]["problem"]  # b's run unknown
