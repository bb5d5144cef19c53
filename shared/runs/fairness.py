"""Fair order across callers for the creates the provider pacing spaces (runs.pacing): when a model's budget is
the bottleneck, its next slots go to the caller that is most behind, in proportion to the callers' weights
(CALLER_QUOTAS' fourth field, default 1), so one caller's burst cannot hold back another caller's runs.

Start-time fair queueing over a virtual clock, kept in the model's pacing row (no storage request of its own):
- the clock runs as the provider's time would be shared out among the callers that have runs waiting: it
  advances by 1/Σw (the weights of the callers whose last turn lies ahead of it) per second, so each caller with
  waiting runs is served its weight's share of the budget;
- a create of caller c takes a turn: it starts at max(c's last finish, clock) and lasts its cost (the seconds of
  budget it uses: 60 / rpm, or its tokens at tpm, whichever is longer) divided by c's weight. The run keeps its
  turn (`Admission.turn`) across its tries;
- a run whose turn starts within one turn of its own plus `horizon` (the pacing's burst) of the clock is due: it
  takes a slot of the limiter's bucket (its slot is held). A later one waits until the clock reaches it, at the
  time the callers waiting now would make it, and the limiter would have a slot (an estimate: a caller that
  starts waiting meanwhile slows the clock, and the run, when it asks again, is told a later time).

The bound: a caller with nothing waiting has its next run due at once, whatever the others queued; that run
waits only for the limiter's next free slot, and the others' runs hold slots at most one turn each ahead of their
share (their due runs enter the limiter at its rate, not faster). So one caller's burst delays another caller's
first run by about one slot per other waiting caller plus the slot in progress (at most two slots against one
bursting caller in tests/unit/test_fairness.py), plus the poll queue's delivery delay in a real deployment; the
caller's k-th waiting run is due after about k·cost·Σw/w seconds (its share of the budget). A queued run that
ends without starting (cancelled, deadline) leaves its turn behind: its caller counts as waiting until the clock
passes it, which slows the others' clock by that turn's length, never more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

EPSILON = 1e-9


@dataclass
class Turns:
    """The virtual clock at `at`, and each waiting caller's last turn's finish and weight."""

    clock: float = 0.0
    at: float = 0.0
    finish: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, clock: float, at: float, raw: str) -> Turns:
        finish = {caller: (float(f), float(w)) for caller, (f, w) in json.loads(raw or "{}").items()}
        return cls(clock, at, finish)

    def dump(self) -> str:
        return json.dumps({caller: [f, w] for caller, (f, w) in sorted(self.finish.items())}, separators=(",", ":"))

    def waiting(self, clock: float) -> dict[str, tuple[float, float]]:
        return {caller: fw for caller, fw in self.finish.items() if fw[0] > clock + EPSILON}


def advance(turns: Turns, now: float) -> Turns:
    """The clock at `now` (it runs at 1/Σw of the waiting callers, piece by piece as their turns are passed);
    callers whose last turn it has passed are dropped."""
    clock, seconds = turns.clock, max(0.0, now - turns.at)
    waiting = turns.waiting(clock)
    while seconds > 0 and waiting:
        weights = sum(w for _, w in waiting.values())
        nearest = min(f for f, _ in waiting.values())
        needed = (nearest - clock) * weights
        if needed >= seconds:
            clock += seconds / weights
            break
        clock, seconds = nearest, seconds - needed
        waiting = turns.waiting(clock)
    return Turns(clock, max(now, turns.at), turns.waiting(clock))


def seconds_until(turns: Turns, target: float) -> float:
    """Real seconds from `turns.at` until the clock reaches `target`, if only the callers waiting now wait."""
    clock, seconds = turns.clock, 0.0
    waiting = turns.waiting(clock)
    while clock < target - EPSILON:
        if not waiting:  # nobody ahead: the clock is as good as there
            break
        weights = sum(w for _, w in waiting.values())
        step_to = min(target, min(f for f, _ in waiting.values()))
        seconds += (step_to - clock) * weights
        clock = step_to
        waiting = turns.waiting(clock)
    return seconds


def take(
    turns: Turns, now: float, caller: str, weight: float, cost: float, turn: float | None, horizon: float
) -> tuple[Turns, float, float]:
    """A create of `caller` at `now` costing `cost` seconds of budget, holding `turn` (None: it takes one now):
    the turns after it, its turn, and how long until it is due (0: now)."""
    turns = advance(turns, now)
    if turn is None:
        last = turns.finish.get(caller, (turns.clock, weight))[0]
        turn = max(last, turns.clock)
        turns.finish[caller] = (turn + cost / weight, weight)
    due_at = turn - horizon - cost / weight  # a turn ahead is due already: it holds its slot, saving an ask
    if due_at <= turns.clock + EPSILON:
        return turns, turn, 0.0
    return turns, turn, seconds_until(turns, due_at)
