"""Provider pacing: each model (the deployment) gets its creates at the rate it can take, from every instance.

Without it, every queued run (runs.admission) retries on its own schedule and a full provider answers each try
with a 429. With it, a create first takes the model's next slot here; a start whose slot is later is queued, as a
429 would queue it (`admission.reason` "paced"), with its try scheduled at its slot, and the provider is not
called. The slot is a reservation: the try at the slot goes straight to the provider.

The slots come from two budgets per model, configured once for every model (PACING_REQUESTS_PER_MINUTE,
PACING_TOKENS_PER_MINUTE) and refined by what the provider says:
- requests: one slot every `60 / rpm` seconds, after a burst of up to PACING_BURST of a minute's budget: a token
  bucket of `burst * rpm` requests that starts full and refills at `rpm` (GCRA: the slot may be up to the
  bucket's depth earlier than the even spacing). The provider's own window starts full too: a burst that fits in
  it keeps the provider busy when starts come in bursts, and a bucket no deeper than the provider's window
  (its rate below the provider's) never meets a 429 however late the creates arrive;
- tokens: each create moves the token clock on by its estimate (`estimate_tokens`) at `tpm` tokens per minute,
  with the same burst (`burst * tpm` tokens);
- the provider's `x-ratelimit-remaining-*` at 0, under a valid `x-ratelimit-limit-*` and with a valid
  `reset-*`, holds starts for `reset / limit`: the reset is the time until the budget is back to its initial
  state, so in a window that refills continuously (OpenAI's) one more request is allowed after that share of it
  (holding until the whole reset left the provider idle for up to a minute after a burst drained its window; a
  fixed window that allows nothing before its reset answers a 429 instead, whose Retry-After holds). Azure
  OpenAI's Responses API sends `-1`/`0`: such values are ignored.
  The limits themselves are not taken as per-minute rates: their window is the provider's (OpenAI's lower tiers
  count requests per day), while remaining and reset mean the same whatever the window;
- a rate-limit 429 holds starts for its Retry-After (1 s when it gives none);
- PACING_ADAPTIVE learns a request rate where none is known (AIMD): the first 429 sets it to half the starts of
  about the last minute, a later one halves it (at most once per CUT_COOLDOWN: the 429s of creates already in
  flight say the same thing), and each start grows it by GROWTH_PER_START (5 % a minute at that rate), up to
  PACING_REQUESTS_PER_MINUTE when that is set.
All off (the defaults) costs nothing: no storage request, no wait.

With a pool of deployments (PROVIDER_DEPLOYMENTS, provider.pool) the row is the deployment's (`key`: its name)
and its budgets are the deployment's `requests_per_minute` / `tokens_per_minute` where it sets them
(`budgets`), else the PACING_* ones; without one, the row is the create's model, as above.
A run holding a slot that starts elsewhere instead (placement found an earlier one at a better deployment,
runs.admission) gives it back (`release`): the row keeps the given-back slots still ahead (`returned`, at most
MAX_GIVEN_BACK), and a later reservation takes the earliest one large enough for it before a new slot, so the
budget is neither spent twice for one create nor lost (one gone by unused is spent, as any unused slot).

Fair order across callers (runs.fairness): a create that names its caller first takes a turn among the callers
of its model, in the same row; only a due turn takes a slot. A run whose turn is not due yet is queued (`reason`
"fair turn") until it is due and the limiter would have a slot for it, and then asks again with its turn: one more
reservation (two storage requests) for each run that waits behind more than its caller's next turn, and more while
other callers wait (it asks when it would be due were its caller alone; measured in bench/README.md "Capacity").

State: one row per model in the run index table (partition `pacing`), read and rewritten If-Match its ETag by
each reservation: two storage requests per start at steady state, fewer in a burst (within an instance, the creates
of a model that wait while one reservation is under way are reserved together by the next, with one read and one
write). A reservation that loses the race to another instance reads again; only other instances' contend.
What the headers of a successful create say is kept in memory and written with the next reservation (no request
of its own); a 429 rewrites the row at once (two requests, only on a 429).

Fails open: a row that cannot be read or written within STORAGE_TIMEOUT (storage down, throttled, contention
that does not clear) lets the create go now, and this instance skips pacing for FAIL_OPEN_SECONDS (so a storage
outage costs one timeout per instance, not one per start); the provider's own 429s are the brake meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from .. import clock
from ..settings import PacingSettings
from ..storage import Table
from . import fairness

log = logging.getLogger("bgruns.pacing")

PARTITION = "pacing"
# Why a queued run waits (`Admission.reason`), when the pacing is why:
PACED = "paced"  # the limiter holds a later slot for it
FAIR_TURN = "fair turn"  # the budget is the bottleneck and other callers' runs are due first (runs.fairness)
DEFAULT_OUTPUT_TOKENS = 1024  # a create without `max_output_tokens` (the emulator's default estimate)
CHARS_PER_TOKEN = 4  # the provider's rule of thumb for English text, and the emulator's count
MIN_RATE = 1.0  # requests per minute below which AIMD never goes
GROWTH_PER_START = 0.05  # requests per minute added to a learned rate by each start
CUT_COOLDOWN = 5.0  # seconds: one halving per this long
DEFAULT_HOLD = 1.0  # seconds a 429 without Retry-After holds starts
STORAGE_TIMEOUT = 2.0  # seconds one storage request of the limiter may take before it fails open
FAIL_OPEN_SECONDS = 10.0
MAX_TRIES = 20  # reservations lost to other instances before it fails open
MAX_PAUSE = 0.2
MAX_GIVEN_BACK = 200  # given-back slots a row keeps (beyond: the latest are spent unused; 4 kB of its 64)
# Not text a model reads: left out of the prompt's size.
_NOT_PROMPT = frozenset({"type", "role", "id", "status", "call_id", "detail", "format"})

T = TypeVar("T")


@dataclass
class PaceState:
    """One model's pacing, as its row stores it (times are epoch seconds)."""

    requests_at: float = 0.0  # the next request slot
    tokens_at: float = 0.0  # when the token budget has room for the next create
    hold_until: float = 0.0  # the provider said "not before" (a 429, spent headers)
    rate: float = 0.0  # learned requests per minute (PACING_ADAPTIVE); 0: none learned yet
    recent: float = 0.0  # starts of about the last minute (a count decaying by e every minute)
    recent_at: float = 0.0
    cut_at: float = 0.0  # when the learned rate was last halved
    clock: float = 0.0  # the callers' fair order (runs.fairness): its virtual clock, when it was read, the turns
    clock_at: float = 0.0
    turns: str = ""
    returned: str = ""  # slots given back by runs that started elsewhere (`release`): "at:tokens" ...

    def given_back(self) -> list[tuple[float, int]]:
        """The given-back slots, earliest first: each its time and the tokens it was taken for."""
        pairs = (item.split(":") for item in self.returned.split())
        return sorted((float(at), int(tokens)) for at, tokens in pairs)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> PaceState:
        return cls(**{f.name: row[f.name] for f in fields(cls) if row.get(f.name) is not None})


def spent_until(headers: Mapping[str, str], now: float) -> float:
    """Until when OpenAI's `x-ratelimit-*` headers say a budget is spent (0: none is, or nothing valid): its
    remaining count 0 under a limit above 0, and a reset that is a positive duration (`1s`, `6m0s`, `20ms`, or
    seconds), the time until the whole budget is back; one request's share of it comes back after reset / limit."""
    until = 0.0
    for kind in ("requests", "tokens"):
        limit = _whole(headers.get(f"x-ratelimit-limit-{kind}"))
        remaining = _whole(headers.get(f"x-ratelimit-remaining-{kind}"))
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if limit is not None and limit > 0 and remaining == 0 and reset:
            until = max(until, now + reset / limit)
    return until


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """A positive duration as OpenAI writes it (Go's format) or as plain seconds; None if not one."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            return None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return seconds if 0 < seconds < 86400 else None


def _whole(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def estimate_tokens(params: Mapping[str, Any]) -> int:
    """A create's tokens as the provider counts them at admission: the prompt (the characters of its text:
    `input` and `instructions`, CHARS_PER_TOKEN to a token) plus the output cap (`max_output_tokens`, else
    DEFAULT_OUTPUT_TOKENS)."""
    chars = _text_chars(params.get("input")) + _text_chars(params.get("instructions"))
    cap = params.get("max_output_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        cap = DEFAULT_OUTPUT_TOKENS
    return math.ceil(chars / CHARS_PER_TOKEN) + cap


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_text_chars(v) for k, v in value.items() if k not in _NOT_PROMPT)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


@dataclass(frozen=True)
class Budgets:
    """The rates a reservation paces by (per minute; 0: that budget is not paced)."""

    requests: float
    tokens: float


def budgets(settings: PacingSettings, state: PaceState) -> Budgets:
    """The configured budgets; with PACING_ADAPTIVE, the learned rate where it is lower."""
    learned = state.rate if settings.adaptive else 0.0
    requests = [r for r in (settings.requests_per_minute, learned) if r > 0]
    return Budgets(min(requests, default=0.0), float(settings.tokens_per_minute))


def cost_seconds(rates: Budgets, tokens: int) -> float:
    """The seconds of the model's budget a create of `tokens` uses (0: no budget is known yet)."""
    return max(60.0 / rates.requests if rates.requests else 0.0, tokens * 60.0 / rates.tokens if rates.tokens else 0.0)


def take_turn(
    settings: PacingSettings, state: PaceState, now: float, ask: Ask
) -> tuple[float | None, float, PaceState]:
    """The ask's turn among the callers (runs.fairness), how long until it is due (0: now), and the state after
    it; a create without a caller, or before any budget is known, is due at once and takes no turn."""
    cost = cost_seconds(budgets(settings, state), ask.tokens)
    if ask.caller is None or not cost:
        return ask.turn, 0.0, state
    turns = fairness.Turns.load(state.clock, state.clock_at, state.turns)
    horizon = settings.burst * 60.0  # a burst the bucket can take is due at once
    turns, turn, wait = fairness.take(turns, now, ask.caller, ask.weight, cost, ask.turn, horizon=horizon)
    return turn, wait, replace(state, clock=turns.clock, clock_at=turns.at, turns=turns.dump())


def plan(settings: PacingSettings, state: PaceState, now: float, tokens: int) -> tuple[float, PaceState]:
    """The slot of a create of `tokens` made at `now`, and the model's state once it is taken: a given-back slot
    (`release`) that is earlier than the next one and large enough, else the next one."""
    slot, after = _next_slot(settings, state, now, tokens)
    given_back = [(at, t) for at, t in state.given_back() if at >= now]  # one gone by unused is spent
    earlier = [(at, t) for at, t in given_back if t >= tokens and max(at, state.hold_until) < slot]
    if earlier:  # taken instead: the budget's clocks stay where they are
        taken = earlier[0]
        given_back.remove(taken)
        slot, after = max(taken[0], state.hold_until), replace(after, requests_at=state.requests_at)
        after.tokens_at = state.tokens_at
    after.returned = _given_back(given_back)
    return slot, after


def release(state: PaceState, now: float, at: float, tokens: int) -> PaceState:
    """The state once the slot at `at` (taken for `tokens`) is given back: a later create may take it."""
    if at < now:
        return state
    return replace(state, returned=_given_back([*state.given_back(), (at, tokens)]))


def _given_back(slots: list[tuple[float, int]]) -> str:
    """The slots as the row stores them: the earliest MAX_GIVEN_BACK (any later are spent unused)."""
    return " ".join(f"{at:.3f}:{tokens}" for at, tokens in sorted(slots)[:MAX_GIVEN_BACK])


def _next_slot(settings: PacingSettings, state: PaceState, now: float, tokens: int) -> tuple[float, PaceState]:
    rates = budgets(settings, state)
    depth = settings.burst * 60.0  # seconds of budget the bucket holds
    slot = max(now, state.hold_until)
    if rates.requests:
        slot = max(slot, state.requests_at - max(0.0, depth - 60.0 / rates.requests))
    if rates.tokens:
        slot = max(slot, state.tokens_at - max(0.0, depth - tokens * 60.0 / rates.tokens))
    after = replace(state)
    if rates.requests:
        after.requests_at = max(state.requests_at, slot) + 60.0 / rates.requests
    if rates.tokens:
        after.tokens_at = max(state.tokens_at, slot) + tokens * 60.0 / rates.tokens
    after.recent = state.recent * math.exp(-max(0.0, now - state.recent_at) / 60.0) + 1.0
    after.recent_at = now
    if settings.adaptive and state.rate:
        after.rate = min(state.rate + GROWTH_PER_START, settings.requests_per_minute or math.inf)
    return slot, after


def throttled(settings: PacingSettings, state: PaceState, now: float, retry_after: float | None) -> PaceState:
    """The model's state after a rate-limit 429: starts held for its Retry-After, the learned rate cut."""
    after = replace(state, hold_until=max(state.hold_until, now + (retry_after or DEFAULT_HOLD)))
    if settings.adaptive and now - state.cut_at >= CUT_COOLDOWN:
        recent = state.recent * math.exp(-max(0.0, now - state.recent_at) / 60.0)
        after.rate = max(MIN_RATE, (state.rate or recent) / 2)
        after.cut_at = now
    return after


def granted_turn(state: PaceState, ask: Ask) -> PaceState:
    """The state once the ask's run took its slot: its caller has one turn less waiting."""
    if ask.caller is None or not state.turns:
        return state
    turns = fairness.Turns.load(state.clock, state.clock_at, state.turns)
    fairness.granted(turns, ask.caller)
    return replace(state, turns=turns.dump())


@dataclass(frozen=True)
class Reserved:
    """What a reservation gave a create: a slot `wait` seconds away (`held`: the create goes then without asking
    again), or, when its caller's turn is not due (runs.fairness), the time to ask again; the run keeps `turn`."""

    wait: float
    turn: float | None = None
    held: bool = True
    recheck: float | None = None  # placement: look again this soon for an earlier slot elsewhere (runs.admission)


GO = Reserved(0.0)


@dataclass(frozen=True)
class Ask:
    """A create waiting for its slot: what it costs, how long its run may wait, its caller (None: not ordered
    among callers), the caller's weight and the run's turn if it has one; its reservation, once answered."""

    tokens: int
    within: float
    answer: asyncio.Future[Reserved]
    caller: str | None = None
    weight: float = 1.0
    turn: float | None = None
    probe: bool = False  # takes a turn only with a slot (placement looking at each deployment of a pool)


class ProviderPacing:
    def __init__(
        self,
        table: Table,
        settings: PacingSettings,
        *,
        row_budgets: Mapping[str, tuple[int, int]] | None = None,
        weight_of: Callable[[str], float] = lambda caller: 1.0,
        timeout: float = STORAGE_TIMEOUT,
    ) -> None:
        """`row_budgets`: the (requests, tokens) per-minute budgets of rows that have their own (the deployments of
        PROVIDER_DEPLOYMENTS, by name); any set turns pacing on. `weight_of` gives a caller's weight in the fair
        order across callers (runs.fairness)."""
        self._table = table
        self._settings = settings
        self._row_budgets = dict(row_budgets or {})
        self._budgeted = any(any(b) for b in self._row_budgets.values())
        self._weight_of = weight_of
        self._timeout = timeout
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._asking: defaultdict[str, list[Ask]] = defaultdict(list)  # creates waiting for a slot, per model
        self._pending: dict[str, float] = {}  # per model, spent until (headers), written with its next reservation
        self._open_until = 0.0  # skip pacing until then: its storage failed

    @property
    def enabled(self) -> bool:
        return self._settings.enabled or self._budgeted

    def _limits(self, budgets: tuple[int, int]) -> PacingSettings:
        """The settings of a row with these (requests, tokens) per-minute budgets (0: the PACING_* one)."""
        requests, tokens = budgets
        if not requests and not tokens:
            return self._settings
        return replace(
            self._settings,
            requests_per_minute=requests or self._settings.requests_per_minute,
            tokens_per_minute=tokens or self._settings.tokens_per_minute,
        )

    async def reserve_turn(
        self,
        params: Mapping[str, Any],
        *,
        within: float,
        key: str | None = None,
        budgets: tuple[int, int] = (0, 0),
        caller: str | None = None,
        turn: float | None = None,
        probe: bool = False,
    ) -> Reserved:
        """Take the next slot of the create `params` at its row (`key`, default its model; `budgets`: the row's own
        (requests, tokens) per minute): `wait` seconds until it (0: go now). A slot more than `within` seconds away
        is not taken (its run cannot wait that long): its wait is returned all the same. In the fair order across
        callers when `caller` is given: the create first takes its turn
        at the row (or keeps `turn`, its run's there), and takes a slot only once the turn is due. A `probe` keeps
        a new turn only with a slot: a run looking at several deployments is not charged a turn at each."""
        model = key or str(params.get("model") or "")
        settings = self._limits(budgets)
        if not settings.enabled or clock.now() < self._open_until:
            return Reserved(0.0, turn)
        weight = self._weight_of(caller) if caller is not None else 1.0
        future: asyncio.Future[Reserved] = asyncio.get_running_loop().create_future()
        ask = Ask(estimate_tokens(params), within, future, caller, weight, turn, probe)
        self._asking[model].append(ask)
        async with self._turns[model]:
            if not ask.answer.done():  # its turn: it reserves for every create of the model waiting by now
                asks, self._asking[model] = self._asking[model], []
                # also if this one is cancelled meanwhile: the others go unpaced
                reserved = [Reserved(0.0, a.turn) for a in asks]
                try:
                    if clock.now() >= self._open_until:  # else it failed while these waited their turn
                        reserved = await self._failing_open(model, self._reserve(model, asks, settings), reserved)
                finally:
                    for waiting, answer in zip(asks, reserved, strict=True):
                        waiting.answer.set_result(answer)
        return ask.answer.result()

    def noted(self, model: str, rate_limits: Mapping[str, str]) -> None:
        """The headers of a create the provider took: kept for the model's next reservation."""
        if not self.enabled or not rate_limits:
            return
        if until := spent_until(rate_limits, clock.now()):
            self._pending[model] = max(until, self._pending.get(model, 0.0))

    async def throttled(
        self, model: str, retry_after: float | None, rate_limits: Mapping[str, str], budgets: tuple[int, int] = (0, 0)
    ) -> None:
        """A create at row `model` was answered with a rate-limit 429: hold its starts, cut its learned rate."""
        settings = self._limits(budgets)
        if not settings.enabled or clock.now() < self._open_until:
            return
        self.noted(model, rate_limits)
        async with self._turns[model]:
            await self._failing_open(model, self._throttle(model, retry_after, settings), None)

    async def release(
        self, params: Mapping[str, Any], at: float, *, key: str | None = None, budgets: tuple[int, int] = (0, 0)
    ) -> None:
        """Give back the slot at `at` (epoch seconds) that the create `params` held at its row (`key`) and will not
        use (its run started elsewhere): the next reservation there may take it, so the row's budget is not spent
        twice for one create, nor lost."""
        model = key or str(params.get("model") or "")
        if not self._limits(budgets).enabled or clock.now() < self._open_until:
            return
        async with self._turns[model]:
            await self._failing_open(model, self._give_back(model, at, estimate_tokens(params)), None)

    async def _give_back(self, model: str, at: float, tokens: int) -> None:
        for _ in range(MAX_TRIES):
            state, etag = await self._read(model)
            after = release(state, clock.now(), at, tokens)
            if after is state or await self._write(model, after, etag):
                return
            await asyncio.sleep(random.uniform(0, MAX_PAUSE))
        raise TimeoutError(f"{MAX_TRIES} updates lost to other instances")

    async def _reserve(self, model: str, asks: list[Ask], settings: PacingSettings) -> list[Reserved]:
        """The turns and slots of `asks`, in order, taken with one read and one write of the model's row."""
        for _ in range(MAX_TRIES):
            state, etag = await self._read(model)
            taken = self._take_pending(model, state)
            now = clock.now()
            reserved, changed = [], False
            for ask in asks:
                before = state
                turn, due, state = take_turn(settings, state, now, ask)
                slot, after = plan(settings, state, now, ask.tokens)
                granted = not due and slot - now <= ask.within  # a slot beyond what the run may wait is not taken
                if ask.probe and not granted:  # a look at one deployment of several: no turn kept without a slot
                    state, turn = before, ask.turn
                changed |= turn != ask.turn  # a new turn is written even when its slot is not taken yet
                # not due: it asks again once it is due and the limiter would have a slot for it
                reserved.append(
                    Reserved(max(due, slot - now), turn, held=False) if due else Reserved(max(0.0, slot - now), turn)
                )
                if granted:
                    state, changed = granted_turn(after, ask), True
            if not changed:
                return reserved  # nothing taken: nothing to write
            if await self._write(model, state, etag):
                self._drop_pending(model, taken)
                return reserved
            await asyncio.sleep(random.uniform(0, MAX_PAUSE))
        raise TimeoutError(f"{MAX_TRIES} reservations lost to other instances")

    async def _throttle(self, model: str, retry_after: float | None, settings: PacingSettings) -> None:
        for _ in range(MAX_TRIES):
            state, etag = await self._read(model)
            taken = self._take_pending(model, state)
            if await self._write(model, throttled(settings, state, clock.now(), retry_after), etag):
                self._drop_pending(model, taken)
                return
            await asyncio.sleep(random.uniform(0, MAX_PAUSE))
        raise TimeoutError(f"{MAX_TRIES} updates lost to other instances")

    def _take_pending(self, model: str, state: PaceState) -> float | None:
        until = self._pending.get(model)
        if until is not None:
            state.hold_until = max(state.hold_until, until)
        return until

    def _drop_pending(self, model: str, taken: float | None) -> None:
        if taken is not None and self._pending.get(model) == taken:
            del self._pending[model]

    async def _failing_open(self, model: str, work: Awaitable[T], fallback: T) -> T:
        try:
            return await work
        except Exception as error:  # noqa: BLE001 - storage down or slow: the provider's own 429s brake meanwhile
            self._open_until = clock.now() + FAIL_OPEN_SECONDS
            log.warning(
                "pacing of %s failed (%s: %s); creates go unpaced for %.0f s",
                model,
                type(error).__name__,
                error,
                FAIL_OPEN_SECONDS,
            )
            return fallback

    # -- what operators see (the console's operator view, /api/health/details) -------------------------------------
    async def view(self) -> list[dict[str, Any]]:
        """Each paced model's limiter as it stands (one query of the `pacing` partition; none when pacing is off)."""
        if not self.enabled:
            return []
        now = clock.now()
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION})
        described = []
        async for row in rows:
            key = unquote(row["RowKey"])  # a model, or a deployment of the pool with its own budgets
            described.append(describe(self._limits(self._row_budgets.get(key, (0, 0))), key, PaceState.of(row), now))
        return described

    # -- storage ---------------------------------------------------------------------------------------------
    async def _read(self, model: str) -> tuple[PaceState, str | None]:
        try:
            row = await asyncio.wait_for(self._table.get_entity(PARTITION, _row_key(model)), self._timeout)
        except ResourceNotFoundError:
            return PaceState(), None
        return PaceState.of(row), row.metadata.get("etag")

    async def _write(self, model: str, state: PaceState, etag: str | None) -> bool:
        """Save the state if the row is unchanged since read (create it if it was absent); False if another
        instance got there first."""
        entity = {"PartitionKey": PARTITION, "RowKey": _row_key(model), **asdict(state)}
        try:
            if etag is None:
                await asyncio.wait_for(self._table.create_entity(entity), self._timeout)
            else:
                write = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
                await asyncio.wait_for(write, self._timeout)
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True


def describe(settings: PacingSettings, model: str, state: PaceState, now: float) -> dict[str, Any]:
    """A model's limiter for an operator: its budgets, the requests its bucket holds now, when its next slot is
    (for a create of the default estimate), how long the provider holds it, and the callers with runs waiting for
    their turn (each with its weight and how many seconds of budget its turns reach ahead of the fair clock)."""
    rates = budgets(settings, state)
    slot, _ = plan(settings, state, now, DEFAULT_OUTPUT_TOKENS)
    turns = fairness.advance(fairness.Turns.load(state.clock, state.clock_at, state.turns), now)
    in_bucket = None
    if rates.requests:  # GCRA: a bucket of max(depth, one interval) seconds, less how far the next slot is ahead
        interval = 60.0 / rates.requests
        depth = max(settings.burst * 60.0, interval)
        in_bucket = round(max(0.0, depth - max(0.0, state.requests_at - now)) / interval, 1)
    return {
        "model": model,
        "requests_per_minute": rates.requests or None,
        "tokens_per_minute": rates.tokens or None,
        "learned_requests_per_minute": round(state.rate, 2) if state.rate else None,
        "burst": settings.burst,
        "requests_in_bucket": in_bucket,
        "next_slot_in_seconds": round(max(0.0, slot - now), 2),
        "held_by_provider_seconds": round(max(0.0, state.hold_until - now), 2),
        "starts_last_minute": round(state.recent * math.exp(-max(0.0, now - state.recent_at) / 60.0), 1),
        "callers_waiting": {
            name: {
                "weight": caller.weight,
                "turns_waiting": caller.queued,
                "budget_seconds_ahead": round(max(0.0, caller.finish - turns.clock) * caller.weight, 1),
            }
            for name, caller in sorted(turns.waiting(now).items())
        },
    }


def _row_key(model: str) -> str:
    """The model's row (a Table key may not hold `/`, `\\`, `#`, `?`; deployment names may)."""
    return quote(model, safe="") or "-"
