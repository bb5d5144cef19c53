"""The chaos run's invariants (bench/chaos_checks.py) on hand-made evidence: each check must flag the
failure it exists for (several of them are races a real run hits only by chance) and pass a clean history."""
from __future__ import annotations

from typing import Any

from bench.chaos_checks import (CAUSE_CANCEL, CAUSE_DEADLINE, CAUSE_END_EVENT, CAUSE_IDEMPOTENT_ABANDON,
                                 CAUSE_SESSION_RACE, Checker, Evidence)
from bench.chaos_client import RunRecord

T0 = 1_800_000_000.0


def record(run_id: str, scenario: str = "plain", **expect: Any) -> RunRecord:
    return RunRecord(run_id, scenario, expect or {"status": "completed"}, f"key-{run_id}", T0)


def view(run_id: str, status: str = "completed", created: float = T0, ended: float = T0 + 2, **more: Any) -> dict:
    return {"id": run_id, "status": status, "created_at": created, "completed_at": ended,
            "provider_response_id": f"resp_{run_id}", "output_text": more.pop("text", "hello"),
            "webhook": {"state": "delivered", "id": f"msg_{run_id}", "attempts": [{}]}, **more}


def provider(run_id: str, status: str = "completed", finished: float = T0 + 1.5, **more: Any) -> dict:
    return {"id": f"resp_{run_id}", "status": status, "created_at": T0, "finished_at": finished,
            "cancelled_at": more.pop("cancelled_at", None), "previous_response_id": more.pop("previous", None),
            "metadata": {"bg_run_id": run_id}, "counters": {}, **more}


def evidence(records: list[RunRecord], views: list[dict], providers: list[dict], **more: Any) -> Evidence:
    by_run: dict[str, list[dict]] = {}
    for p in providers:
        by_run.setdefault(p["metadata"]["bg_run_id"], []).append(p)
    fields = dict(records={r.run_id: r for r in records}, views={v["id"]: v for v in views}, provider=by_run,
                  provider_by_id={p["id"]: p for p in providers}, deliveries=[], poison={}, reference_streams={},
                  sessions={}, idempotency=[], key_runs={r.key: {r.run_id} for r in records}, not_accepted=[],
                  server_errors=[], job_errors=[], answers=0, run_deadline=300.0, stuck_slack=30.0)
    fields.update(more)
    return Evidence(**fields)


def test_two_runs_active_on_one_session_are_flagged_with_the_session_race_as_cause() -> None:
    a, b, c = (record(x, "session_concurrent") for x in ("a", "b", "c"))
    for r in (a, b, c):
        r.session_id = "sess_1"
    views = [view("a", created=T0, ended=T0 + 3), view("b", created=T0 + 0.01, ended=T0 + 3.5),
             view("c", created=T0 + 5, ended=T0 + 7)]
    log = {"turns": [], "concurrent": [{"run_id": "a", "http": 202, "code": None, "answers": ["202"]},
                                       {"run_id": "b", "http": 202, "code": None, "answers": ["202"]}]}
    check = Checker(evidence([a, b, c], views, [], sessions={"sess_1": log})).sessions_one_active()
    assert not check.ok
    assert [f["run_id"] for f in check.failures] == ["b"] and check.failures[0]["likely_cause"] == CAUSE_SESSION_RACE


def test_sequential_session_runs_and_409_losers_pass() -> None:
    a, c = record("a", "session_text"), record("c", "session_text")
    a.session_id = c.session_id = "sess_1"
    log = {"turns": [{"turn": "text", "run_id": "a", "answers": ["202"]}],
           "concurrent": [{"run_id": None, "http": 409, "code": "session_busy", "answers": ["409 session_busy"]}]}
    ev = evidence([a, c], [view("a", ended=T0 + 3), view("c", created=T0 + 3.2, ended=T0 + 5)],
                  [provider("a"), provider("c", previous="resp_a")], sessions={"sess_1": log})
    assert Checker(ev).sessions_one_active().ok and Checker(ev).session_chains().ok


def test_a_run_expired_after_its_provider_completed_before_the_deadline_is_flagged() -> None:
    near = record("n", "deadline_near", status="completed", rule="deadline_near", deadline_seconds=5)
    expired = view("n", status="expired", ended=T0 + 5.6, text="",
                   error={"code": "deadline_exceeded", "message": "The run did not finish within 5 s."})
    check = Checker(evidence([near], [expired], [provider("n", finished=T0 + 4.6)])).allowed_state()
    assert not check.ok and check.failures[0]["likely_cause"] == CAUSE_DEADLINE
    late = Checker(evidence([near], [expired], [provider("n", finished=T0 + 5.2)])).allowed_state()
    assert late.ok  # the provider finished after the run's deadline: expired is right
    quoted_global = {**expired, "error": {"code": "deadline_exceeded", "message": "The run did not finish within 300 s."}}
    wrong_message = Checker(evidence([near], [quoted_global], [provider("n", finished=T0 + 5.2)])).allowed_state()
    assert not wrong_message.ok
    kept = view("n", status="completed", ended=T0 + 9)  # a late look found the provider done: output kept
    assert Checker(evidence([near], [kept], [provider("n", finished=T0 + 6)])).allowed_state().ok


def test_a_cancel_reported_while_the_provider_completed_uncancelled_is_flagged() -> None:
    race = record("r", "cancel_race", rule="cancel_race", duration_ms=3000)
    race.cancel = {"sent_at": T0 + 2.0, "status": "cancelled"}
    check = Checker(evidence([race], [view("r", status="cancelled")], [provider("r")])).allowed_state()
    assert not check.ok and check.failures[0]["likely_cause"] == CAUSE_CANCEL
    honest = evidence([race], [view("r", status="cancelled")],
                      [provider("r", status="cancelled", cancelled_at=T0 + 2.0)])
    assert Checker(honest).allowed_state().ok


def _streamed(run_id: str, ids: list[int], final: str, after_final: list[str], deltas: str = "hello") -> RunRecord:
    r = record(run_id, "stream", status="completed", stream=True)
    r.stream = {"ids": ids, "connections": [{"how": "start", "outcome": "cut"}], "deltas": deltas, "final": final,
                "final_id": ids[-1], "ended_by": None, "after_final": after_final, "cuts": [3]}
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
    ev = evidence([cancelled], [view("s", status="cancelled", text="")],
                  [provider("s", status="cancelled", cancelled_at=T0 + 1)], reference_streams=cut_ref)
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
