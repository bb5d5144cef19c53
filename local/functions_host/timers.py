"""Timer triggers: six-field NCRONTAB `{second} {minute} {hour} {day} {month} {day-of-week}` (UTC) or a
TimeSpan `hh:mm:ss` interval; `run_on_startup`; `use_monitor` is ignored (no schedule monitor locally).

Like the host's TimerListener, one function never overlaps itself: after an invocation the next occurrence is
computed from "now", so occurrences missed while it ran are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from azure.functions.timer import TimerRequest

from .errors import StartupError
from .invoker import Invoker
from .loader import FunctionSpec

log = logging.getLogger("functions_host")

_MONTHS = {
    m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_FIELDS = [
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
]


def _value(text: str, lo: int, hi: int, names, expr: str, field: str) -> int:
    t = text.lower()
    if names and t[:3] in names and t.isalpha():
        return names[t[:3]]
    if not t.isdigit():
        raise StartupError(f"invalid NCRONTAB expression {expr!r}: bad {field} value {text!r}")
    v = int(t)
    if field == "day-of-week" and v == 7:
        v = 0
    if not lo <= v <= hi:
        raise StartupError(f"invalid NCRONTAB expression {expr!r}: {field} value {v} outside {lo}-{hi}")
    return v


def _parse_field(text: str, lo: int, hi: int, names, expr: str, field: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise StartupError(f"invalid NCRONTAB expression {expr!r}: bad step in {field}")
            step = int(step_text)
        if part in ("*", "?"):
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, lo, hi, names, expr, field), _value(b, lo, hi, names, expr, field)
        else:
            start = _value(part, lo, hi, names, expr, field)
            end = hi if step > 1 else start
        if end < start:
            raise StartupError(f"invalid NCRONTAB expression {expr!r}: empty range in {field}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass
class CronSchedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        fields = expression.split()
        if len(fields) != 6:
            raise StartupError(
                f"invalid NCRONTAB expression {expression!r}: expected 6 fields "
                f"'{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}', found {len(fields)}"
            )
        parsed = [
            _parse_field(f, lo, hi, names, expression, name)
            for f, (name, lo, hi, names) in zip(fields, _FIELDS, strict=True)
        ]
        return cls(expression, *parsed)

    def next_after(self, t: datetime) -> datetime:
        """The first occurrence strictly after t (NCRONTAB: day AND day-of-week must both match)."""
        t = t.replace(microsecond=0) + timedelta(seconds=1)
        limit = t + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
                continue
            if t.day not in self.days or (t.weekday() + 1) % 7 not in self.weekdays:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            if t.second not in self.seconds:
                t += timedelta(seconds=1)
                continue
            return t
        raise StartupError(f"NCRONTAB expression {self.expression!r} never occurs")


@dataclass
class IntervalSchedule:
    expression: str
    interval: timedelta

    def next_after(self, t: datetime) -> datetime:
        return t + self.interval


_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})$")


def parse_schedule(expression: str):
    m = _TIMESPAN.match(expression.strip())
    if m:
        days, h, mi, s = (int(x or 0) for x in m.groups())
        interval = timedelta(days=days, hours=h, minutes=mi, seconds=s)
        if interval.total_seconds() <= 0:
            raise StartupError(f"timer schedule {expression!r}: the interval must be positive")
        return IntervalSchedule(expression, interval)
    return CronSchedule.parse(expression)


class TimerListener:
    def __init__(self, spec: FunctionSpec, schedule, run_on_startup: bool, invoker: Invoker) -> None:
        self.spec = spec
        self.schedule = schedule
        self.run_on_startup = run_on_startup
        self.invoker = invoker
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last: datetime | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"timer-{self.spec.name}")
        self._task.add_done_callback(_log_crash)

    def stop_polling(self) -> None:
        self._stop.set()

    async def wait_polling_stopped(self) -> None:
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _fire(self, scheduled: datetime, nxt: datetime, past_due: bool) -> None:
        now = datetime.now(UTC)
        request = TimerRequest(
            past_due=past_due,
            schedule_status={
                "Last": (self.last or datetime.min.replace(tzinfo=UTC)).isoformat(),
                "Next": nxt.isoformat(),
                "LastUpdated": now.isoformat(),
            },
            schedule={"AdjustForDST": True},
        )
        self.last = scheduled
        try:
            await self.invoker.invoke(self.spec, request, reason=f"Timer fired at {now.isoformat()}")
        except BaseException:  # noqa: BLE001 - logged by the invoker
            pass

    async def _run(self) -> None:
        now = datetime.now(UTC)
        if self.run_on_startup and not self._stop.is_set():
            await self._fire(now, self.schedule.next_after(now), past_due=False)
        nxt = self.schedule.next_after(datetime.now(UTC))
        log.info("The next occurrence of 'Functions.%s' is %s", self.spec.name, nxt.isoformat())
        while not self._stop.is_set():
            wait = (nxt - datetime.now(UTC)).total_seconds()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                    break
                except TimeoutError:
                    pass
            # past due: we are more than a second late for the occurrence (e.g. the loop was blocked)
            late = (datetime.now(UTC) - nxt).total_seconds()
            following = self.schedule.next_after(max(nxt, datetime.now(UTC)))
            await self._fire(nxt, following, past_due=late > 1.0)
            nxt = self.schedule.next_after(datetime.now(UTC))


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Listener %s crashed", task.get_name(), exc_info=task.exception())
