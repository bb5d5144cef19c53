"""Fair order across callers for the creates the provider pacing spaces (runs.pacing): when a model's budget is
the bottleneck, its next slots go to the caller that is most behind, in proportion to the callers' weights
(CALLER_QUOTAS' fourth field, default 1), so one caller's burst cannot hold back another caller's runs.

Start-time fair queueing over a virtual clock, kept in the model's pacing row (no storage request of its own):
- the clock runs as the budget would be shared out among the callers waiting: it advances by 1/Σw per second (the
  weights of the callers with turns not yet given a slot, and of those whose last turn lies ahead of it that
  asked within RECENT_SECONDS); with none waiting it keeps real time;
- a create of caller c takes a turn: it starts at max(c's last finish, clock) and lasts its cost (the seconds of
  budget it uses: 60 / rpm, or its tokens at tpm, whichever is longer) divided by c's weight. The run keeps its
  turn (`Admission.turn`) across its tries;
- a run whose turn starts within one turn of its own plus its caller's share of `horizon` (the pacing's burst,
  shared by weight among the callers waiting) of the clock is due: it takes a slot of the limiter's bucket (its
  slot is held). So a caller alone may spend the whole burst, and the lead it took then counts against it once
  others wait: its next runs wait for the clock, theirs do not;
- a later one is told to ask again when it would be due at the clock's speed now, or sooner: were its caller
  alone, and at the latest after half the burst (the others may stop waiting meanwhile; a run asking within half
  the bucket's depth late finds the budget it missed still in the bucket), and asks again then with its turn.

The bound: a caller with nothing waiting has its next run due at once, whatever the others queued; that run
waits only for the limiter's next free slot, which the others' due runs hold at most their share of the burst
plus one turn ahead. So one caller's burst delays another caller's first run by about one slot per other waiting
caller plus the slot in progress (at most two slots against a 300-run burst in tests/unit/test_fairness.py), plus
the poll queue's delivery delay in a real deployment; the caller's k-th waiting run is due after about
k·cost·Σw/w seconds (its share of the budget). A queued run that ends without starting (cancelled, deadline)
leaves its turn behind: its caller counts as waiting until it has been silent for STALE_SECONDS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

EPSILON = 1e-9
STALE_SECONDS = 300.0  # a caller none of whose runs asked for this long has none waiting (they ended meanwhile)
RECENT_SECONDS = 10.0


@dataclass
class Caller:
    """A caller's place in the fair order: its last turn's finish, its weight, its turns not yet given a slot, and
    when one of its runs last asked."""

    finish: float
    weight: float
    queued: int = 0
    asked_at: float = 0.0


@dataclass
class Turns:
    """The virtual clock at `at`, and the callers with turns ahead of it or runs waiting."""

    clock: float = 0.0
    at: float = 0.0
    callers: dict[str, Caller] = field(default_factory=dict)

    @classmethod
    def load(cls, clock: float, at: float, raw: str) -> Turns:
        callers = {name: Caller(*values) for name, values in json.loads(raw or "{}").items()}
        return cls(clock, at, callers)

    def dump(self) -> str:
        rows = {name: [c.finish, c.weight, c.queued, c.asked_at] for name, c in sorted(self.callers.items())}
        return json.dumps(rows, separators=(",", ":"))

    def waiting(self, now: float) -> dict[str, Caller]:
        """The callers that share the budget now: those with turns not yet given a slot (unless silent for
        STALE_SECONDS: their runs ended meanwhile), and those whose last turn lies ahead of the clock that asked
        within RECENT_SECONDS (a caller whose runs come one by one; one that stopped leaves no phantom share)."""
        return {
            name: c
            for name, c in self.callers.items()
            if (c.queued > 0 and now - c.asked_at <= STALE_SECONDS)
            or (c.finish > self.clock + EPSILON and now - c.asked_at <= RECENT_SECONDS)
        }

    def weights(self, now: float) -> float:
        """What the clock's speed divides by: the waiting callers' weights (1 when none waits: the clock then keeps
        real time, so a lead a caller took alone is paid off as the budget refills)."""
        return sum(c.weight for c in self.waiting(now).values()) or 1.0


def advance(turns: Turns, now: float) -> Turns:
    """The clock at `now`: it runs at 1/Σw of the callers waiting since the row was written (they change only when
    it is written); callers with nothing waiting whose last turn it has passed are dropped."""
    clock = turns.clock + max(0.0, now - turns.at) / turns.weights(turns.at)
    waiting = turns.waiting(now)
    callers = {name: c for name, c in turns.callers.items() if name in waiting or c.finish > clock + EPSILON}
    return Turns(clock, max(now, turns.at), callers)


def take(
    turns: Turns, now: float, caller: str, weight: float, cost: float, turn: float | None, horizon: float
) -> tuple[Turns, float, float]:
    """A create of `caller` at `now` costing `cost` seconds of budget, holding `turn` (None: it takes one now):
    the turns after it, its turn, and how long until it is due (0: now)."""
    turns = advance(turns, now)
    entry = turns.callers.setdefault(caller, Caller(turns.clock, weight))
    entry.weight, entry.asked_at = weight, now
    if turn is None:
        turn = max(entry.finish, turns.clock)
        entry.finish, entry.queued = turn + cost / weight, entry.queued + 1
    weights = sum(c.weight for c in turns.waiting(now).values()) or weight
    # The burst is shared among the callers waiting, by weight: alone, a caller may spend all of it; once others
    # wait, its lead counts against its share of it (a burst it took alone delays its next runs, not theirs). One
    # turn ahead is due already: it holds its slot, saving an ask.
    due_at = turn - horizon * weight / weights - cost / weight
    if due_at <= turns.clock + EPSILON:
        return turns, turn, 0.0
    # Asked again when it would be due at the clock's speed now, or sooner: when it would be due were its caller
    # alone, and at the latest after half the burst. The others may stop waiting meanwhile (the clock speeds up,
    # the horizon widens); a run asking that much late still finds the budget it missed in the bucket (half its
    # depth), and the head of a long queue does not ask every turn (each ask is a poll step and two requests).
    alone = (turn - horizon - cost / weight - turns.clock) * weight
    shared = (due_at - turns.clock) * weights
    return turns, turn, max(min(shared, max(alone, horizon / 2)), cost * weights / weight)


def granted(turns: Turns, caller: str) -> None:
    """A run of `caller` took its slot: one turn of it less waits."""
    if entry := turns.callers.get(caller):
        entry.queued = max(0, entry.queued - 1)
