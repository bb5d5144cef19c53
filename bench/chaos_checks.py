"""The chaos run's invariants. Each check returns PASS/FAIL, a one-line detail and, for every failure, the
run id, its scenario, what the client saw (history), the run and provider views and the likely cause, so the
owner can find the defect without re-running.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from .chaos_client import CHAOS_TAG, TERMINAL, RunRecord

# Likely causes of the failures this run is known to expose (issue 12's list), quoted in the failure details.
CAUSE_SESSION_RACE = (
    "issue 12 defect 1: the session is reserved (active_run_id=A) before run A's row exists; a "
    "concurrent start reads A as missing and takes the session over (service._reserve_session)"
)
CAUSE_DEADLINE = (
    "issue 12 defect 2: poll_step checks the deadline before asking the provider, and the last poll "
    "is capped at deadline + 0.5 s, so a run that completed just before its deadline ends expired"
)
CAUSE_EXPIRY_MESSAGE = (
    "issue 12 defect 2 (second part): poller._expire quotes settings.run_deadline, not the run's own deadline_seconds"
)
CAUSE_UTF16 = (
    "issue 12 defect 3: Table property size is counted in Python characters (runs.INLINE_LIMIT_CHARS); "
    "astral characters take 2 UTF-16 units, so the entity is refused and the API answers 503"
)
CAUSE_CANCEL = (
    "issue 12 defect 7: cancel reports `cancelled` when the provider's cancel did not stop the run "
    "(a refusal is swallowed), or the cancel's answer was not the stored final state"
)
CAUSE_END_EVENT = (
    "issue 12 defect 10: resuming after the final event of a cancelled/expired/fallback stream "
    "repeats the final event under a new id instead of the single `end` event"
)
CAUSE_EXPIRY_CANCEL = (
    "poller._expire: the provider cancel at the deadline is best effort and never retried; when it "
    "meets a transient fault the run ends expired while the provider runs on (and bills)"
)
CAUSE_IDEMPOTENT_ABANDON = (
    "not in issue 12: a second request with the same Idempotency-Key, arriving while the first "
    "start waits on the provider, is answered with that start's run (service._claim returns a "
    "run that has no response id yet, service.py:146-148); the provider then refuses the first "
    "start, which deletes the run (service._abandon, service.py:219-221): the client holds a "
    "run id that answers 404 for ever, and its retry makes a second run"
)
CAUSE_EXECUTOR_DEADLINE = (
    "executor: the run expired although its model call had ended whole before the deadline "
    "(the executor did not record the model's end before the poll chain or its own check "
    "expired the run): output lost"
)
CAUSE_EXECUTOR_STOP = (
    "executor: the run ended (cancel, deadline, interrupted start) but its model call went on: "
    "a cancel closes the log and the attempt must stop at its next batch or run check (~1 s)"
)
CAUSE_EXPIRY_SAVE_LOST = (
    "shared/runs/polling.py: the expiry cancels at the provider (or closes an executor run's "
    "log) and then saves `expired`; when that save fails (storage down, host killed), the next "
    "poll step finds the response `cancelled` and ends the run `cancelled` "
    "(PollStep.handle -> _end_from), though no client cancelled it: it expired"
)
CAUSE_SESSION_BACK = (
    "shared/runs/lifecycle.py advance_session: a late follow-up of an earlier session run (the "
    "sweeper re-runs the follow-ups of an ended run whose webhook is stuck, e.g. while the receiver "
    "is down) sets the idle session's last_response_id back to that run's response; the next turn "
    "continues from it"
)
CAUSE_START_ORPHAN = (
    "issue 12 suspicion: a start cut by a host kill (or slower than the start grace) is failed "
    "as start_interrupted while its provider response keeps running; it should be cancelled"
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None  # why this check cannot judge this run (it then passes and says so)


@dataclass
class Evidence:
    """Everything the checks read, gathered once after convergence."""

    records: dict[str, RunRecord]
    views: dict[str, dict[str, Any]]
    provider: dict[str, list[dict[str, Any]]]  # bg_run_id -> emulator records
    provider_by_id: dict[str, dict[str, Any]]  # response id -> emulator record
    deliveries: list[dict[str, Any]]
    poison: dict[str, list[dict[str, Any]]]
    reference_streams: dict[str, dict[str, Any]]  # run id -> {"ids": [...], "text": "..."} from the provider
    sessions: dict[str, dict[str, Any]]
    idempotency: list[dict[str, Any]]
    key_runs: dict[str, set[str]]
    not_accepted: list[dict[str, Any]]
    capacity_refusals: list[str]  # start answers that handed the provider's lack of capacity back to the caller
    start_answers: int  # HTTP answers to starts (POST /api/runs, streaming or not), retries included
    server_errors: list[str]
    answers: int  # HTTP answers the clients got
    job_errors: list[str]
    run_deadline: float
    stuck_slack: float  # sweeper grace + poll cap + a host restart
    backend: str = "background"  # RUN_BACKEND of the host: "background" (provider responses) or "executor"
    chat_calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run id -> its model calls (executor)
    unclaimed_chat_calls: list[dict[str, Any]] = field(default_factory=list)  # calls no accepted run's tag names
    # Two emulator deployments (--deployments): each provider record and chat call carries its `deployment`.
    deployments: bool = False
    # deployment -> (down, up), wall clock: a run whose deadline fell while its deployment was down cannot be
    # cancelled or read there; it ends when the deployment returns (issue 24), so its slack counts from then.
    outages: dict[str, tuple[float, float]] = field(default_factory=dict)


# Executor runs (RUN_BACKEND=executor) are judged by the model calls the emulator's chat log records.
# How long past a run's end its model call may go on: the attempt notices a cancel or expiry at its next batch
# (<= 0.25 s while streaming) or its next look at the run (every second), and a loaded machine adds storage time.
EXECUTOR_STOP_SLACK = 5.0
# The executor looks at the deadline every second: a model call ending within this after it may still complete.
EXECUTOR_DEADLINE_LATE = 2.0
# Writing the model's last batch and ending the run takes a moment: a call ending within this before the
# deadline may still lose to the expiry (the service's log did not have the end yet).
EXECUTOR_DEADLINE_EARLY = 1.0
# A cancel sent this long after the run's model call ended whole must find the run already completed.
EXECUTOR_CANCEL_SLACK = 10.0


def call_whole(call: dict[str, Any]) -> bool:
    """The model call sent every chunk it had (it ran to its end) and answered: one that ended with the emulator's
    in-stream server error (`emulator_outcome=failed`) failed on the server's side, which the executor takes as a
    cut stream and tries again (issue 22), up to EXECUTOR_MAX_ATTEMPTS."""
    return (
        not call.get("cut")
        and call.get("outcome") != "failed"
        and 0 < call.get("chunks", 0) <= call.get("chunks_sent", 0)
    )


def call_stopped_by(call: dict[str, Any]) -> float:
    """When the model call stopped sending: its end if it ran whole, else (at the latest) the due time of the
    first chunk it never sent. The emulator paces a stream: the role chunk and tool-call headers at the first
    token, the content evenly up to the end, then the finish, usage and [DONE] chunks (an error for a failure)."""
    first, end = call["first_token_at"], call["finished_at"]
    if call_whole(call):
        return end
    sent, total = call.get("chunks_sent", 0), call.get("chunks", 0)
    heads = 1 + len(call.get("tool_calls") or [])
    parts = max(0, total - heads - (1 if call.get("outcome") == "failed" else 3))
    if sent < heads:
        return first
    unsent = sent - heads + 1  # 1-based index of the first content chunk not sent
    return end if unsent > parts else first + (end - first) * unsent / (parts + 1)


def _calls_brief(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            k: c.get(k)
            for k in (
                "id",
                "created_at",
                "first_token_at",
                "finished_at",
                "outcome",
                "chunks",
                "chunks_sent",
                "cut",
                "disconnected",
            )
        }
        for c in calls
    ]


def _view_brief(view: dict[str, Any] | None) -> dict[str, Any] | None:
    if not view:
        return view
    hook = view.get("webhook") or {}
    return {
        "status": view.get("status"),
        "error": view.get("error"),
        "created_at": view.get("created_at"),
        "completed_at": view.get("completed_at"),
        "provider_response_id": view.get("provider_response_id"),
        "output_chars": len(view.get("output_text") or ""),
        "session_id": view.get("session_id"),
        "webhook": {"state": hook.get("state"), "id": hook.get("id"), "attempts": len(hook.get("attempts") or [])},
    }


def _provider_brief(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: p.get(k) for k in ("id", "status", "created_at", "finished_at", "cancelled_at", "previous_response_id")}
        | {"counters": p.get("counters")}
        for p in records
    ]


class Checker:
    def __init__(self, ev: Evidence) -> None:
        self.ev = ev
        self.ids = list(ev.records)

    @property
    def executor(self) -> bool:
        return self.ev.backend == "executor"

    def failure(self, run_id: str | None, problem: str, cause: str | None = None, **more: Any) -> dict[str, Any]:
        record = self.ev.records.get(run_id) if run_id else None
        if self.executor and run_id:
            more.setdefault("model_calls", _calls_brief(self.ev.chat_calls.get(run_id, [])))
        return {
            "run_id": run_id,
            "scenario": record.scenario if record else None,
            "problem": problem,
            "likely_cause": cause,
            "history": record.history if record else None,
            "view": _view_brief(self.ev.views.get(run_id)) if run_id else None,
            "provider": _provider_brief(self.ev.provider.get(run_id, [])) if run_id else None,
            **more,
        }

    @staticmethod
    def check(name: str, failures: list[dict[str, Any]], total: int, what: str) -> Check:
        return Check(name, not failures, f"{total - len(failures)}/{total} {what}", failures)

    def status(self, run_id: str) -> str | None:
        return (self.ev.views.get(run_id) or {}).get("status")

    def all(self) -> list[Check]:
        ran_where = self.ran_on_executor() if self.executor else self.one_provider_response()
        stopped = self.model_calls_stopped() if self.executor else self.provider_work_stopped()
        return [
            self.accepted(),
            self.not_lost(),
            self.terminal(),
            self.allowed_state(),
            self.idempotency(),
            self.webhooks_delivered(),
            self.webhook_ids_stable(),
            ran_where,
            stopped,
            self.streams_gap_free(),
            self.end_after_final(),
            self.sessions_one_active(),
            self.session_chains(),
            self.large_outputs(),
            self.nothing_stuck(),
            self.poison_accounted(),
            self.no_server_errors(),
            self.no_capacity_refusals(),
            self.no_queued_run_lost(),
            *([self.deployments_kept()] if self.ev.deployments else []),
        ]

    # -- several deployments (--deployments) ----------------------------------------------------------------------
    def deployments_kept(self) -> Check:
        """Background: a run's provider responses are all at the deployment its view names, and a session's turn
        continues a response made at its own deployment (a chain never moves). Executor: the deployment a run names
        is one its model calls went to (an executor run is not pinned: it names its last attempt's server)."""
        failures, examined = [], 0
        for run_id in (r for r in self.ids if not self.missing(r)):
            view = self.ev.views.get(run_id) or {}
            named = view.get("deployment")
            if self.executor:
                calls = {c.get("deployment") for c in self.ev.chat_calls.get(run_id, [])}
                if named is None or not calls:
                    continue
                examined += 1
                if named not in calls:
                    failures.append(self.failure(run_id, f"names {named}; its model calls went to {sorted(calls)}"))
                continue
            for record in self.ev.provider.get(run_id, []):
                examined += 1
                # a start cut after its create (start_interrupted) never learnt its response: it names none
                if record["id"] == view.get("provider_response_id") and record.get("deployment") != named:
                    failures.append(
                        self.failure(run_id, f"names {named}; response {record['id']} is at {record.get('deployment')}")
                    )
                previous = self.ev.provider_by_id.get(record.get("previous_response_id") or "")
                if previous is not None and previous.get("deployment") != record.get("deployment"):
                    failures.append(
                        self.failure(
                            run_id,
                            f"continues {previous['id']} at {previous.get('deployment')} "
                            f"from {record.get('deployment')}",
                        )
                    )
        what = "runs naming a server of their calls" if self.executor else "responses at their run's deployment"
        return self.check(
            "each run at the deployment it names; a session's chain never changes deployment", failures, examined, what
        )

    # -- provider capacity (a quota below the offered load: --provider-rpm) ---------------------------------------
    def no_capacity_refusals(self) -> Check:
        failures = [
            {"run_id": None, "scenario": "start", "problem": refusal, "likely_cause": "admission did not queue it"}
            for refusal in self.ev.capacity_refusals
        ]
        total = self.ev.start_answers
        return self.check("no run refused for provider capacity", failures, total, "start answers not a refusal")

    def no_queued_run_lost(self) -> Check:
        """Every run that waited for provider capacity (its view has `admission`) ended; one that vanished after
        it was accepted is `not_lost`'s."""
        queued = [r for r in self.ids if (self.ev.views.get(r) or {}).get("admission")]
        failures = [
            self.failure(r, f"queued, never ended: {self.status(r)}") for r in queued if self.status(r) not in TERMINAL
        ]
        return self.check("no queued run lost (every run queued for capacity ended)", failures, len(queued), "ended")

    # -- acceptance and existence -------------------------------------------------------------------------
    def accepted(self) -> Check:
        failures = []
        for item in self.ev.not_accepted:
            cause = CAUSE_UTF16 if item.get("scenario") == "emoji_input" else None
            failures.append(
                {
                    "run_id": None,
                    "scenario": item["scenario"],
                    "problem": "never accepted",
                    "likely_cause": cause,
                    "key": item["key"],
                    "last_answers": item["answers"],
                    "last_error": item.get("last"),
                    "input_chars": item.get("input_chars"),
                }
            )
        failures += [
            {"run_id": None, "scenario": "client", "problem": error, "likely_cause": "chaos client bug"}
            for error in self.ev.job_errors
        ]
        total = len(self.ids) + len(failures)
        return self.check(
            "every submitted run was accepted (retries with the same Idempotency-Key converge)",
            failures,
            total,
            "accepted",
        )

    def missing(self, run_id: str) -> bool:
        return bool((self.ev.views.get(run_id) or {}).get("missing"))

    def not_lost(self) -> Check:
        shared_keys = {r for runs in self.ev.key_runs.values() if len(runs) > 1 for r in runs}
        failures = [
            self.failure(r, "answers 404 after it was accepted", CAUSE_IDEMPOTENT_ABANDON if r in shared_keys else None)
            for r in self.ids
            if self.missing(r)
        ]
        return self.check("no accepted run lost", failures, len(self.ids), "found")

    def terminal(self) -> Check:
        found = [r for r in self.ids if not self.missing(r)]  # a lost run is reported once, above
        failures = [self.failure(r, f"not terminal: {self.status(r)}") for r in found if self.status(r) not in TERMINAL]
        return self.check("every run terminal", failures, len(found), "terminal (lost runs not counted)")

    # -- the state each run's history allows ------------------------------------------------------------------
    def allowed_state(self) -> Check:
        failures = []
        for run_id, record in self.ev.records.items():
            view = self.ev.views.get(run_id) or {}
            if view.get("status") not in TERMINAL:
                continue  # reported by "every run terminal"
            problem, cause = self._state_problem(record, view)
            if problem:
                failures.append(self.failure(run_id, problem, cause))
        check = self.check("every run ended in a state its history allows", failures, len(self.ids), "allowed")
        interrupted = Counter(
            ((self.ev.views.get(r) or {}).get("error") or {}).get("code")
            for r in self.ids
            if self.status(r) == "failed"
        )
        allowances = {
            "start_interrupted": "starts cut by a host kill",
            "model_call_interrupted": "model calls interrupted EXECUTOR_MAX_ATTEMPTS times",
        }
        shown = [f"{interrupted[code]} {what}" for code, what in allowances.items() if interrupted[code]]
        if shown:
            check.detail += f" (of them {', '.join(shown)}, allowed in any scenario)"
        return check

    def _state_problem(self, record: RunRecord, view: dict[str, Any]) -> tuple[str | None, str | None]:
        status = view["status"]
        error = (view.get("error") or {}).get("code")
        if status == "failed" and error == "start_interrupted":
            return None, None  # a host kill cut its start: allowed for any scenario (provider work: own check)
        if self.executor and status == "failed" and error == "model_call_interrupted":
            return self._interrupted_problem(record)
        expect = record.expect
        rule = expect.get("rule")
        if status == "cancelled" and record.cancel is None:
            deadline_at = view["created_at"] + (expect.get("deadline_seconds") or self.ev.run_deadline)
            if (view.get("completed_at") or 0) >= deadline_at:
                return (
                    f"ended cancelled at {view.get('completed_at'):.2f}, but no client cancelled it; its deadline "
                    f"({deadline_at:.2f}) had passed, so it expired",
                    CAUSE_EXPIRY_SAVE_LOST,
                )
            return "ended cancelled, but no client cancelled it", None
        providers = self.ev.provider.get(record.run_id, [])
        provider = providers[0] if len(providers) == 1 else None
        if rule == "cancel_race":
            return self._cancel_problem(record, view, provider)
        if rule in ("deadline_near", "deadline_past"):
            problem = (
                self._executor_deadline_problem(record, view)
                if self.executor
                else self._deadline_problem(record, view, provider)
            )
            if problem != (None, None):
                return problem
            expect = {**expect, "status": status}  # judged above; the message check below still applies
        if status != expect.get("status"):
            return f"ended {status} ({error}); this scenario allows {expect.get('status')}", None
        message = (view.get("error") or {}).get("message") or ""
        if status == "expired" and expect.get("deadline_seconds") and f"{expect['deadline_seconds']} s" not in message:
            return (
                f"expired as expected, but the message quotes another deadline than the run's own "
                f"{expect['deadline_seconds']} s: {message!r}",
                CAUSE_EXPIRY_MESSAGE,
            )
        if expect.get("calls") and not ((view.get("required_action") or {}).get("calls")):
            return "requires_action without the pending calls", None
        if expect.get("text_starts") and not (view.get("output_text") or "").startswith(expect["text_starts"]):
            return f"tool output turn's text does not start with {expect['text_starts']!r}", None
        return None, None

    @staticmethod
    def _deadline_problem(
        record: RunRecord, view: dict[str, Any], provider: dict[str, Any] | None
    ) -> tuple[str | None, str | None]:
        """Issue 12's rule: the service asks the provider first and expires only a run still going. So a run whose
        provider completed before the run's own deadline must end completed; past it, expired is right, and so is
        completed when the provider had finished by the time the service looked (a late look keeps the output)."""
        status = view["status"]
        deadline_at = view["created_at"] + record.expect["deadline_seconds"]
        finished = (provider or {}).get("finished_at")
        provider_completed = bool(provider and provider.get("status") == "completed" and finished is not None)
        if status == "expired" and provider_completed and finished < deadline_at:
            return (
                f"expired, but the provider completed {deadline_at - finished:.2f} s before the run's deadline "
                f"(deadline_at {deadline_at:.2f}, provider finished {finished:.2f}, run ended "
                f"{view.get('completed_at')}); output lost",
                CAUSE_DEADLINE,
            )
        if status == "expired" or (status == "completed" and provider_completed):
            return None, None
        return (
            f"ended {status}; the provider was {(provider or {}).get('status')} (finished {finished}), the "
            f"deadline at {deadline_at:.2f}: only expired or the provider's completion are allowed",
            None,
        )

    def _interrupted_problem(self, record: RunRecord) -> tuple[str | None, str | None]:
        """An executor run may fail `model_call_interrupted` in any scenario, as documented, once its model call
        was started EXECUTOR_MAX_ATTEMPTS times (host kills, stream cuts, silent attempts taken over) and never
        ran to its end; a run that gave up although one of its calls had sent everything is suspect."""
        calls = self._model_calls(record.run_id)
        whole = [c["id"] for c in calls if call_whole(c)]
        if whole:
            return (
                f"failed model_call_interrupted although its model call {whole[-1]} ran to its end "
                f"({len(calls)} calls)",
                None,
            )
        return None, None

    def _model_calls(self, run_id: str) -> list[dict[str, Any]]:
        return sorted(self.ev.chat_calls.get(run_id, []), key=lambda c: c["created_at"])

    def _executor_deadline_problem(self, record: RunRecord, view: dict[str, Any]) -> tuple[str | None, str | None]:
        """The executor's run says when it ended and its last model call when the model finished: a run whose
        call ended whole before its deadline must end completed; one that ends expired must not end before its
        deadline; a completion is allowed only for a call that ended by the deadline (plus the executor's
        one-second look)."""
        status = view["status"]
        deadline_at = view["created_at"] + record.expect["deadline_seconds"]
        calls = self._model_calls(record.run_id)
        last = calls[-1] if calls else None
        model_end = last["finished_at"] if last is not None and call_whole(last) else None
        if status == "expired":
            ended = view.get("completed_at") or 0
            if ended < deadline_at - 0.5:
                return f"expired {deadline_at - ended:.2f} s before its deadline ({deadline_at:.2f})", None
            if model_end is not None and model_end < deadline_at - EXECUTOR_DEADLINE_EARLY:
                return (
                    f"expired at {ended:.2f}, but its model call ended whole at {model_end:.2f}, "
                    f"{deadline_at - model_end:.2f} s before the deadline ({deadline_at:.2f})",
                    CAUSE_EXECUTOR_DEADLINE,
                )
            return None, None
        if status == "completed":
            if model_end is not None and model_end > deadline_at + EXECUTOR_DEADLINE_LATE:
                return (
                    f"completed, but its model call ended {model_end - deadline_at:.2f} s after the deadline "
                    f"({deadline_at:.2f}): the run should have expired",
                    None,
                )
            return None, None
        return (
            f"ended {status}; a deadline run may end expired, or completed when its model call ended by the "
            f"deadline (last call ended {model_end}, deadline {deadline_at:.2f})",
            None,
        )

    def _cancel_problem(
        self, record: RunRecord, view: dict[str, Any], provider: dict[str, Any] | None
    ) -> tuple[str | None, str | None]:
        status = view["status"]
        if status not in ("cancelled", "completed"):
            return f"a cancel racing a completion ended {status}", None
        cancel = record.cancel or {}
        if cancel.get("status") in TERMINAL and cancel["status"] != status:
            return (
                f"the cancel answered {cancel['status']} but the run ended {status} (terminal is not sticky)",
                CAUSE_CANCEL,
            )
        if self.executor:
            calls = self._model_calls(record.run_id)
            last = calls[-1] if calls else None
            sent = cancel.get("sent_at")
            if (
                status == "cancelled"
                and last is not None
                and call_whole(last)
                and sent
                and sent > last["finished_at"] + EXECUTOR_CANCEL_SLACK
            ):
                return (
                    f"reported cancelled, but its model call ended whole at {last['finished_at']:.2f}, "
                    f"{sent - last['finished_at']:.1f} s before the cancel was sent: the run should have been "
                    f"completed by then",
                    None,
                )
            return None, None
        if provider is None:
            return None, None
        if status == "cancelled" and provider.get("status") == "completed" and not provider.get("cancelled_at"):
            return (
                f"reported cancelled, but the provider completed at {provider.get('finished_at'):.2f} (cancel sent "
                f"{cancel.get('sent_at', 0):.2f}) and was never cancelled: the API says something untrue",
                CAUSE_CANCEL,
            )
        if status == "completed" and provider.get("status") == "cancelled":
            return "reported completed, but the provider response was cancelled", CAUSE_CANCEL
        return None, None

    # -- Idempotency-Key ----------------------------------------------------------------------------------------
    def idempotency(self) -> Check:
        failures = []
        for key, runs in self.ev.key_runs.items():
            if len(runs) > 1:
                failures.append(
                    {
                        "run_id": sorted(runs)[0],
                        "scenario": "idempotency",
                        "likely_cause": CAUSE_IDEMPOTENT_ABANDON if any(self.missing(r) for r in runs) else None,
                        "problem": f"Idempotency-Key {key} answered with {len(runs)} runs: {sorted(runs)}",
                    }
                )
        for item in self.ev.idempotency:
            ids = {i for i in item["ids"] if i}
            if len(ids) != 1:
                failures.append(
                    {
                        "run_id": None,
                        "scenario": f"idempotent_{item['variant']}",
                        "likely_cause": CAUSE_IDEMPOTENT_ABANDON if any(self.missing(r) for r in ids) else None,
                        "problem": f"same key sent twice: runs {item['ids']}, answers {item['answers']}",
                    }
                )
        return self.check(
            "every Idempotency-Key gave exactly one run",
            failures,
            len(self.ev.key_runs) + len(self.ev.idempotency),
            "keys consistent",
        )

    # -- webhooks -------------------------------------------------------------------------------------------
    def _deliveries_by_run(self) -> dict[str, list[dict[str, Any]]]:
        by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in self.ev.deliveries:
            if rec.get("run_id"):
                by_run[rec["run_id"]].append(rec)
        return by_run

    def webhooks_delivered(self) -> Check:
        by_run = self._deliveries_by_run()
        terminal = [r for r in self.ids if self.status(r) in TERMINAL]
        failures = []
        for run_id in terminal:
            good = [x for x in by_run.get(run_id, []) if x["verified"] and x["status"] == 204]
            if not good:
                failures.append(self.failure(run_id, f"no verified delivery ({len(by_run.get(run_id, []))} seen)"))
            elif any(x["run_status"] != self.status(run_id) for x in good):
                failures.append(
                    self.failure(
                        run_id, f"webhook said {[x['run_status'] for x in good]}, run is {self.status(run_id)}"
                    )
                )
        forged = [x for x in self.ev.deliveries if not x["verified"]]
        failures += [
            {
                "run_id": x.get("run_id"),
                "scenario": None,
                "problem": "delivery with a bad signature",
                "likely_cause": None,
            }
            for x in forged
        ]
        return self.check(
            "every terminal run's webhook delivered with a valid signature and its final status",
            failures,
            len(terminal),
            "delivered",
        )

    def webhook_ids_stable(self) -> Check:
        by_run = self._deliveries_by_run()
        terminal = [r for r in self.ids if self.status(r) in TERMINAL]
        failures = []
        for run_id in terminal:
            seen = {x["webhook_id"] for x in by_run.get(run_id, [])}
            stored = ((self.ev.views.get(run_id) or {}).get("webhook") or {}).get("id")
            if len(seen) > 1 or (seen and stored not in seen):
                failures.append(self.failure(run_id, f"webhook-ids {sorted(seen)}, run says {stored}"))
        return self.check("one stable webhook-id per run across attempts", failures, len(terminal), "stable")

    # -- the provider ---------------------------------------------------------------------------------------
    def one_provider_response(self) -> Check:
        failures, interrupted_without, queued_without = [], 0, 0
        found = [r for r in self.ids if not self.missing(r)]
        for run_id in found:
            count = len(self.ev.provider.get(run_id, []))
            if count == 1:
                continue
            view = self.ev.views.get(run_id) or {}
            error = (view.get("error") or {}).get("code")
            if count == 0 and error == "start_interrupted":
                interrupted_without += 1  # the start was cut before it reached the provider
                continue
            admission = view.get("admission") or {}
            if count == 0 and admission and not admission.get("granted_at") and view.get("continuation_token") is None:
                queued_without += 1  # queued for provider capacity, and ended (cancel, deadline) before it got any
                continue
            failures.append(self.failure(run_id, f"{count} provider responses"))
        check = self.check("exactly one provider response per run", failures, len(found), "with one")
        check.detail += (
            f" ({interrupted_without} interrupted starts never reached the provider, {queued_without} "
            "runs ended while queued for provider capacity)"
        )
        return check

    def ended_without_result(self):
        """(run id, view, error code) of each run that ended without the model's result: cancelled, expired, or
        a start interrupted before the provider accepted it."""
        for run_id in self.ids:
            view = self.ev.views.get(run_id) or {}
            error = (view.get("error") or {}).get("code")
            if view.get("status") in ("cancelled", "expired") or error == "start_interrupted":
                yield run_id, view, error

    def provider_work_stopped(self) -> Check:
        """A run that ended without its provider result (cancelled, expired, interrupted start) must not leave
        the provider working on: its response is cancelled, or had finished before the run ended."""
        failures, examined = [], 0
        for run_id, view, error in self.ended_without_result():
            for p in self.ev.provider.get(run_id, []):
                examined += 1
                if p.get("cancelled_at") or p["status"] == "cancelled":
                    continue
                finished = p.get("finished_at")
                if finished is not None and finished <= (view.get("completed_at") or 0):
                    continue
                cause = (
                    CAUSE_START_ORPHAN
                    if error == "start_interrupted"
                    else (CAUSE_CANCEL if view.get("status") == "cancelled" else CAUSE_EXPIRY_CANCEL)
                )
                failures.append(
                    self.failure(
                        run_id,
                        f"run ended {view.get('status')} ({error}) at "
                        f"{view.get('completed_at')}, provider response {p['id']} went on "
                        f"to {p['status']} at {finished}",
                        cause,
                    )
                )
        accepted = set(self.ids)
        for bg_run_id, responses in self.ev.provider.items():
            if bg_run_id in accepted:
                continue
            for p in responses:
                examined += 1
                if p["status"] != "cancelled" and not p.get("cancelled_at"):
                    failures.append(
                        {
                            "run_id": bg_run_id,
                            "scenario": None,
                            "likely_cause": None,
                            "problem": f"provider response {p['id']} ({p['status']}) of a run no client was "
                            f"ever given, not cancelled",
                            "provider": _provider_brief([p]),
                        }
                    )
        return self.check(
            "no provider work left running for a run that ended without it (cancelled, expired, "
            "interrupted, never accepted)",
            failures,
            examined,
            "provider responses stopped or done",
        )

    # -- the executor's model calls (RUN_BACKEND=executor) ---------------------------------------------------------
    def ran_on_executor(self) -> Check:
        """Every run says it ran on the executor, with the executor's own response id and no provider background
        response; every run that ended with the model's answer had a model call that ran to its end."""
        failures, found = [], [r for r in self.ids if not self.missing(r)]
        for run_id in found:
            view = self.ev.views.get(run_id) or {}
            problems = []
            if view.get("backend") != "executor":
                problems.append(f"backend {view.get('backend')!r}")
            response_id = view.get("provider_response_id")
            if response_id and not response_id.startswith("exec_"):
                problems.append(f"response id {response_id} is not the executor's")
            responses = self.ev.provider.get(run_id, [])
            if responses:
                problems.append(f"{len(responses)} provider background response(s) {[p['id'] for p in responses]}")
            calls = self.ev.chat_calls.get(run_id, [])
            if view.get("status") in ("completed", "requires_action", "incomplete") and not any(
                call_whole(c) for c in calls
            ):
                problems.append(
                    f"ended {view.get('status')} without a model call that ran to its end ({len(calls)} calls)"
                )
            if problems:
                failures.append(self.failure(run_id, "; ".join(problems)))
        check = self.check(
            "every run ran on the executor (no provider background response; a model answer comes "
            "from a model call that ran to its end)",
            failures,
            len(found),
            "executor runs",
        )
        calls = [c for cs in self.ev.chat_calls.values() for c in cs]
        again = sum(1 for cs in self.ev.chat_calls.values() if len(cs) > 1)
        check.detail += (
            f" ({len(calls)} model calls, {sum(map(call_whole, calls))} whole; {again} runs called "
            f"the model more than once)"
        )
        return check

    def model_calls_stopped(self) -> Check:
        """The executor's form of "no provider work left running": a run that ended without the model's answer
        (cancelled, expired, interrupted start) has no model call still streaming a few seconds after its end,
        and no model call runs to its end for a run no client was ever given."""
        failures, examined = [], 0
        for run_id, view, error in self.ended_without_result():
            ended = view.get("completed_at") or 0
            for call in self.ev.chat_calls.get(run_id, []):
                examined += 1
                stopped = call_stopped_by(call)
                if stopped > ended + EXECUTOR_STOP_SLACK:
                    how = (
                        "to its end" if call_whole(call) else f"({call.get('chunks_sent')}/{call.get('chunks')} chunks)"
                    )
                    failures.append(
                        self.failure(
                            run_id,
                            f"run ended {view.get('status')} ({error}) at {ended:.2f}, "
                            f"its model call {call['id']} streamed on until "
                            f"{stopped:.2f} {how}",
                            CAUSE_EXECUTOR_STOP,
                        )
                    )
        for call in self.ev.unclaimed_chat_calls:
            examined += 1
            if call_whole(call):
                tag = (call.get("knobs") or {}).get(CHAOS_TAG)
                failures.append(
                    {
                        "run_id": None,
                        "scenario": None,
                        "likely_cause": None,
                        "problem": f"model call {call['id']} (tag {tag}) ran to its end for a run no client "
                        f"was ever given",
                        "model_calls": _calls_brief([call]),
                    }
                )
        return self.check(
            "no model call left running for a run that ended without it (cancelled, expired, "
            f"interrupted: stopped within {EXECUTOR_STOP_SLACK:.0f} s of the run's end; none whole for "
            "a run no client was given)",
            failures,
            examined,
            "model calls stopped or done",
        )

    # -- streams ---------------------------------------------------------------------------------------------
    def _streamed(self) -> list[RunRecord]:
        return [r for r in self.ev.records.values() if r.stream is not None]

    def streams_gap_free(self) -> Check:
        failures = []
        for record in self._streamed():
            got = record.stream
            ref = self.ev.reference_streams.get(record.run_id)
            view = self.ev.views.get(record.run_id) or {}
            problems = []
            if got["final"] is None:
                problems.append(f"no final event after {len(got['connections'])} connections")
            dupes = [i for i, n in Counter(got["ids"]).items() if n > 1]
            if dupes:
                problems.append(f"duplicate ids {dupes[:10]}")
            if any(b <= a for a, b in pairwise(got["ids"])):
                problems.append("ids not increasing")
            expected = list((ref or {}).get("ids") or [])
            if (
                ref is not None
                and not ref["final"]
                and view.get("status") in ("cancelled", "expired")
                and expected
                and len(got["ids"]) == len(expected) + 1
                and got["ids"][-1] > expected[-1]
            ):
                # the provider has no final event here: the relay adds the run's own, with any id above the
                # provider's last (N+1, or a fixed top id such as 2**31-1)
                expected.append(got["ids"][-1])
            # A run that never learned its provider response (a start cut by a host kill after the create) has no
            # provider events to follow: its stream is its own final event alone.
            never_followed = view.get("provider_response_id") is None and len(got["ids"]) == 1
            if ref is None:
                if not (never_followed and got["final"] is not None):
                    problems.append(f"no reference event list from {self._reference_source}")
            elif got["final"] is not None and got["ids"] != expected:
                missing = sorted(set(expected) - set(got["ids"]))
                extra = sorted(set(got["ids"]) - set(expected))
                problems.append(f"ids differ from {self._reference_source}: missing {missing[:10]}, extra {extra[:10]}")
            if (
                got["final"] is not None
                and view.get("status") == "completed"
                and got["deltas"] != view.get("output_text")
            ):
                problems.append(
                    f"streamed text ({len(got['deltas'])} chars) differs from the run's output_text "
                    f"({len(view.get('output_text') or '')} chars)"
                )
            if ref is not None and view.get("status") == "completed" and ref.get("text") != view.get("output_text"):
                problems.append(
                    f"the text of {self._reference_source} ({len(ref.get('text') or '')} chars) differs "
                    f"from the run's output_text ({len(view.get('output_text') or '')} chars)"
                )
            if (
                got["final"] is not None
                and ref is not None
                and ref.get("source") == "service"
                and got["final"] != ref["final"]
            ):
                problems.append(f"the stream ended with {got['final']}, the replay with {ref['final']}")
            if problems:
                failures.append(
                    self.failure(
                        record.run_id,
                        "; ".join(problems),
                        connections=got["connections"],
                        ids=got["ids"],
                        reference=expected,
                    )
                )
        check = self.check(
            f"every resumed stream gap-free and duplicate-free (ids equal {self._reference_source}, "
            "text equals the stored output)",
            failures,
            len(self._streamed()),
            "exact",
        )
        restarts = sum(r.stream.get("restarts") or 0 for r in self._streamed())
        if self.executor:
            check.detail += f" ({restarts} output restarts seen by the streams)"
        return check

    @property
    def _reference_source(self) -> str:
        """Executor runs have no provider stream: their log, replayed in full by the service after the run
        ended, is the source of truth."""
        return "the run's full replay from the service" if self.executor else "the provider's events"

    def end_after_final(self) -> Check:
        failures, examined = [], 0
        for record in self._streamed():
            after = record.stream.get("after_final")
            if after is None:
                continue
            examined += 1
            if [e.split(":", 1)[1] for e in after] != ["end"]:
                cause = CAUSE_END_EVENT if self.status(record.run_id) != "completed" else None
                failures.append(self.failure(record.run_id, f"resume after the final event gave {after}", cause))
        return self.check("a resume after the final event gives the single `end` event", failures, examined, "ended")

    # -- sessions ------------------------------------------------------------------------------------------
    def sessions_one_active(self) -> Check:
        failures = []
        for session_id, log in self.ev.sessions.items():
            runs = sorted(
                (
                    self.ev.views[r]
                    for r in self.ev.records
                    if self.ev.records[r].session_id == session_id and self.ev.views.get(r, {}).get("created_at")
                ),
                key=lambda v: v["created_at"],
            )
            for earlier, later in pairwise(runs):
                ended = earlier.get("completed_at")
                if ended is None or later["created_at"] < ended:
                    failures.append(
                        self.failure(
                            later["id"],
                            f"session {session_id}: run {later['id']} created at "
                            f"{later['created_at']:.3f} while {earlier['id']} was active until "
                            f"{ended}",
                            CAUSE_SESSION_RACE,
                            concurrent_starts=log["concurrent"],
                        )
                    )
            winners = [c for c in log["concurrent"] if c["http"] in (200, 201, 202)]
            others = [c for c in log["concurrent"] if c["http"] not in (200, 201, 202)]
            # Winners whose runs are on record were judged above by their times: a start retried through a host
            # kill may win after the first winner's run ended, and a free session takes it as its next turn. A
            # winner with no run on record cannot be judged so: more than one winner then is a race.
            unjudged = [w for w in winners if not (self.ev.views.get(w["run_id"] or "") or {}).get("created_at")]
            if (
                len(winners) > 1
                and unjudged
                and not any(f.get("run_id") in {w["run_id"] for w in winners} for f in failures)
            ):
                failures.append(
                    {
                        "run_id": winners[1]["run_id"],
                        "scenario": "session_concurrent",
                        "likely_cause": CAUSE_SESSION_RACE,
                        "concurrent_starts": log["concurrent"],
                        "problem": f"session {session_id}: {len(winners)} concurrent starts answered 2xx",
                    }
                )
            for turn in log["turns"]:
                if turn["run_id"] is None and any("session_busy" in a for a in turn["answers"]):
                    failures.append(
                        {
                            "run_id": None,
                            "scenario": f"session_{turn['turn']}",
                            "likely_cause": ("the session's active_run_id still names a run that has ended"),
                            "problem": f"session {session_id}: a start after the previous turn ended got "
                            f"{turn['answers']}",
                        }
                    )
            bad = [c for c in others if not (c["http"] == 409 and c["code"] == "session_busy")]
            if bad:
                failures.append(
                    {
                        "run_id": None,
                        "scenario": "session_concurrent",
                        "likely_cause": None,
                        "problem": f"session {session_id}: a losing concurrent start answered {bad}",
                    }
                )
        total = len(self.ev.sessions)
        return self.check(
            "sessions never with two active runs (a concurrent start gets 409 session_busy)",
            failures,
            total,
            "sessions with one active run at a time",
        )

    def session_chains(self) -> Check:
        """Each run continues from the response of the latest earlier run that advanced the session."""
        name = "session chains continue from the previous turn's response"
        if self.executor:
            reason = (
                "executor runs have no provider response chain (Chat Completions keeps no state: the executor "
                "sends the session's earlier turns itself) and the emulator's chat log does not record the "
                "messages; the chain is checked through the tool-output turn, whose text must name the "
                "previous turn's call (allowed-state check)"
            )
            return Check(name, True, "skipped: " + reason, skipped=reason)
        failures, examined = [], 0
        for session_id in self.ev.sessions:
            runs = sorted(
                (
                    r
                    for r in self.ev.records.values()
                    if r.session_id == session_id and (self.ev.views.get(r.run_id) or {}).get("created_at")
                ),
                key=lambda r: self.ev.views[r.run_id]["created_at"],
            )
            earlier: list[str] = []  # responses of the session's earlier runs worth continuing from, in order
            for record in runs:
                view = self.ev.views[record.run_id]
                providers = self.ev.provider.get(record.run_id, [])
                last_response = earlier[-1] if earlier else None
                if len(providers) == 1:
                    examined += 1
                    previous = providers[0].get("previous_response_id")
                    if previous != last_response:
                        cause = CAUSE_SESSION_BACK if previous in earlier[:-1] else CAUSE_SESSION_RACE
                        failures.append(
                            self.failure(
                                record.run_id,
                                f"continued from {previous}, the session's last response was {last_response}",
                                cause,
                                session=self._session_timeline(runs),
                            )
                        )
                if view.get("status") in ("completed", "requires_action", "incomplete") and view.get(
                    "provider_response_id"
                ):
                    earlier.append(view["provider_response_id"])
        return self.check(name, failures, examined, "chained")

    def _session_timeline(self, runs: list[RunRecord]) -> list[dict[str, Any]]:
        timeline = []
        for record in runs:
            view = self.ev.views.get(record.run_id) or {}
            providers = self.ev.provider.get(record.run_id, [])
            timeline.append(
                {
                    "run_id": record.run_id,
                    "scenario": record.scenario,
                    "status": view.get("status"),
                    "created_at": view.get("created_at"),
                    "completed_at": view.get("completed_at"),
                    "response": view.get("provider_response_id"),
                    "previous": providers[0].get("previous_response_id") if len(providers) == 1 else None,
                    "webhook_attempts": len(((view.get("webhook") or {}).get("attempts")) or []),
                }
            )
        return timeline

    # -- outputs, liveness, queues, errors ----------------------------------------------------------------------
    def large_outputs(self) -> Check:
        failures, examined = [], 0
        for record in self.ev.records.values():
            chars = record.expect.get("output_chars")
            if not chars or self.status(record.run_id) != "completed":
                continue
            examined += 1
            got = len((self.ev.views.get(record.run_id) or {}).get("output_text") or "")
            if got != chars:
                failures.append(self.failure(record.run_id, f"output_text has {got} characters, asked {chars}"))
        return self.check("large outputs stored whole", failures, examined, "whole")

    def nothing_stuck(self) -> Check:
        failures = []
        for run_id in self.ids:
            view = self.ev.views.get(run_id) or {}
            if view.get("missing"):
                continue
            hook = view.get("webhook")
            if view.get("status") not in TERMINAL:
                failures.append(self.failure(run_id, f"still {view.get('status')}"))
            elif hook is not None and hook.get("state") not in ("delivered", "failed"):
                failures.append(self.failure(run_id, f"webhook still {hook.get('state')}"))
            else:
                deadline = self.ev.records[run_id].expect.get("deadline_seconds") or self.ev.run_deadline
                due = self.end_due(view, view["created_at"] + deadline)
                late = (view.get("completed_at") or 0) - due
                if late > self.ev.stuck_slack:
                    failures.append(self.failure(run_id, self.late_end(late, due, view["created_at"] + deadline)))
        return self.check(
            "nothing stuck (terminal, webhook settled, none active past deadline + sweeper grace)",
            failures,
            len(self.ids),
            "settled",
        )

    def end_due(self, view: dict[str, Any], deadline_at: float) -> float:
        """When the run should have ended at the latest: its deadline, or, if its deployment was down then (or went
        down within the slack after it), the deployment's return."""
        down, up = self.ev.outages.get(view.get("deployment") or "", (0.0, 0.0))
        return up if down <= deadline_at + self.ev.stuck_slack and deadline_at <= up else deadline_at

    def late_end(self, late: float, due: float, deadline_at: float) -> str:
        after = "its deadline" if due == deadline_at else "its deployment came back (it was down at the deadline)"
        return f"ended {late:.1f} s after {after} (allowed {self.ev.stuck_slack:.0f} s)"

    def poison_accounted(self) -> Check:
        failures = []
        for queue, items in self.ev.poison.items():
            for item in items:
                run_id = item.get("run_id")
                view = self.ev.views.get(run_id) if run_id else None
                if view is None or view.get("missing"):
                    failures.append(
                        {
                            "run_id": run_id,
                            "scenario": None,
                            "likely_cause": None,
                            "problem": f"{queue}: {str(item)[:200]} for no known run",
                        }
                    )
                elif queue.startswith(("runs-poll", "runs-execute")) and view.get("status") not in TERMINAL:
                    failures.append(self.failure(run_id, f"{queue}: run still {view.get('status')}"))
                elif queue.startswith("runs-webhook") and (view.get("webhook") or {}).get("state") != "delivered":
                    failures.append(
                        self.failure(run_id, f"{queue}: webhook {(view.get('webhook') or {}).get('state')}")
                    )
        total = sum(len(v) for v in self.ev.poison.values())
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.ev.poison.items())
        return self.check("no poison message unaccounted for", failures, total, f"accounted for ({sizes})")

    def no_server_errors(self) -> Check:
        failures = [
            {"run_id": None, "scenario": None, "problem": error, "likely_cause": None}
            for error in self.ev.server_errors
        ]
        return self.check("no 500 from the API", failures, self.ev.answers, "answers without a 500")
