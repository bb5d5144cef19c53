"""Capacity (issue 23): three facade callers against a provider quota, before and with admission, side by side.

Two stacks, one after the other in one invocation, each fresh (Azurite, the emulator with the same quota, the
host behind the counting storage proxy):
- `before`: ADMISSION_MAX_WAIT_SECONDS=0, the behaviour before admission: a start the provider answers 429/503 is
  refused with 503, and the callers' `openai` SDK retries it as it does by default (max_retries=2);
- `now`: admission on (the default): such a start is accepted `queued` and started when the provider has room.
  `--setting NAME=VALUE` (repeatable) adds service settings to this mode only, e.g. a shared limiter's.

Load (the quota is a rolling window, `openai` style, on one model; tokens are budgeted too): caller A submits
`a` runs at once at t0, B `b` runs evenly over `spread` seconds, C `c` runs at once at t0 + `c_at`; each run
lasts `run_seconds` at the provider. Every run is created with `background=true` through the facade.

Measured per mode:
- refused: starts that got an error, by HTTP status (429 is a caller's own quota, 503 the provider's capacity);
- provider 429s per started run: the emulator's quota counters (every refused create, the service's retries too);
- share of the allowed starts: provider creates from t0 to the last create against what the quota admits in that
  time (a full bucket at t0 plus the refill), requests or tokens, whichever is tighter;
- wait per caller: the provider's `created_at` of the run's response minus the caller's first request
  (in `now` the run is accepted within ms of it; in `before` it includes the SDK's retries);
- Jain's fairness index over the callers' throughput normalised by their max-min fair share: in the first
  `spread` seconds, each caller's creates divided by its share of all creates in that time under max-min
  fairness of what it had submitted by then (1.0 = every caller got its fair share; 1/3 = one caller got all);
- completed: every accepted run read back through the facade until it ended;
- host CPU and storage requests (the proxy: the service's and the Functions host's own) per started run, and the
  other processes' CPU on the machine during the mode (the machine is shared).

Results: bench/results/capacity.json (or `--out`) and the .png beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil

from shared.settings import declared_settings

from . import capacity_pool
from .common import RESULTS, LocalStack, dump_json, summary
from .http_concurrency import cpu_seconds

MODEL = "cap-model"
CALLERS = ("A", "B", "C")
OUTPUT_CAP = 1000  # max_output_tokens of every run: the emulator's token estimate is the prompt plus this
TOKEN_SLACK = 1.2  # the token budget admits 20 % more runs than the request budget: requests bind, tokens count


@dataclass(frozen=True)
class Profile:
    rpm: int  # provider creates per minute (rolling window)
    a: int  # A's runs, all at t0
    b: int  # B's runs, evenly over `spread`
    c: int  # C's runs, all at t0 + c_at
    run_seconds: float
    spread: float
    c_at: float

    @property
    def tpm(self) -> int:
        return int(self.rpm * (OUTPUT_CAP + 10) * TOKEN_SLACK)


PROFILES = {
    "full": Profile(rpm=60, a=600, b=60, c=6, run_seconds=20, spread=60, c_at=5),
    "quick": Profile(rpm=30, a=60, b=12, c=3, run_seconds=5, spread=30, c_at=2),
}


# -- pure helpers ----------------------------------------------------------------------------------------------------
def jain_index(values: list[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1.0 when all are equal, 1/n when one has everything."""
    if not values:
        return None
    squares = sum(x * x for x in values)
    if squares == 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def max_min_fair(capacity: float, demands: list[float]) -> list[float]:
    """Max-min fair shares of `capacity`: water-filling, no one gets more than it asked for, leftovers shared."""
    shares = [0.0] * len(demands)
    open_ = [i for i, d in enumerate(demands) if d > 0]
    left = float(capacity)
    while open_ and left > 1e-9:
        each = left / len(open_)
        satisfied = [i for i in open_ if demands[i] - shares[i] <= each]
        if not satisfied:
            for i in open_:
                shares[i] += each
            break
        for i in satisfied:
            left -= demands[i] - shares[i]
            shares[i] = demands[i]
        open_ = [i for i in open_ if i not in satisfied]
    return shares


def allowed_starts(limit_per_minute: float, seconds: float, cost: float = 1.0) -> float:
    """Requests of `cost` a rolling per-minute budget admits in `seconds` from full: the burst plus the refill."""
    return (limit_per_minute + limit_per_minute * max(0.0, seconds) / 60.0) / cost


def normalised_throughput(served: list[int], demands: list[int]) -> list[float]:
    """Each caller's served count over its max-min fair share of everything served (callers without demand are
    left out)."""
    fair = max_min_fair(sum(served), [float(d) for d in demands])
    return [s / f for s, f in zip(served, fair, strict=True) if f > 0]


# -- one mode ----------------------------------------------------------------------------------------------------
@dataclass
class Submission:
    caller: str
    index: int
    sent_at: float
    accepted_at: float | None = None
    run_id: str | None = None
    refused: str | None = None  # "503 ..." / "429 ..."
    created_at: float | None = None  # the provider's create
    final: str | None = None


@dataclass
class CallerClient:
    name: str
    key: str
    requests: Counter[str] = field(default_factory=Counter)  # HTTP statuses the caller saw (the SDK's retries too)


def facade_keys() -> dict[str, str]:
    return {name: secrets.token_urlsafe(32) for name in CALLERS}


def host_env(keys: dict[str, str], admission: bool, extra: dict[str, str]) -> dict[str, str]:
    env = {
        "RESPONSES_API_KEYS": " ".join(f"{name}:{key}" for name, key in keys.items()),
        "DEFAULT_MODEL": MODEL,
        "ADMISSION_MAX_WAIT_SECONDS": "3600" if admission else "0",
        # bound as %SWEEP_SCHEDULE%, so the host needs it set: the shipped default
        "SWEEP_SCHEDULE": next(s.default for s in declared_settings() if s.name == "SWEEP_SCHEDULE"),
    }
    return {**env, **extra} if admission else env


def our_cpu_seconds() -> float:
    """CPU of this process and everything it started (Azurite, emulator, proxy, host and its worker)."""
    return cpu_seconds(psutil.Process())


def machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return times.user + times.system + times.nice + getattr(times, "irq", 0) + getattr(times, "softirq", 0)


class Mode:
    def __init__(self, name: str, profile: Profile, extra: dict[str, str]) -> None:
        self.name = name
        self.profile = profile
        self.keys = facade_keys()
        self.admission = name == "now"
        self.extra = extra
        self.tag = f"cap-{name}-{time.time_ns()}"
        self.subs: list[Submission] = []

    async def run(self) -> dict[str, Any]:
        p = self.profile
        config = {"rpm_limit": 0, "model_limits": {MODEL: {"rpm": p.rpm, "tpm": p.tpm}}, "quota_window_s": 60.0}
        stack = LocalStack(
            f"capacity-{self.name}",
            host_env=host_env(self.keys, self.admission, self.extra),
            emulator_config=config,
            use_proxy=True,
        )
        await asyncio.to_thread(stack.start)
        try:
            return await self._measure(stack)
        finally:
            await asyncio.to_thread(stack.stop)

    async def _measure(self, stack: LocalStack) -> dict[str, Any]:
        p = self.profile
        metrics0 = await asyncio.to_thread(stack.metrics)
        proxy0 = await asyncio.to_thread(stack.storage_counts)
        ours0, busy0, wall0 = our_cpu_seconds(), machine_busy_seconds(), time.monotonic()
        clients = {name: CallerClient(name, key) for name, key in self.keys.items()}
        t0 = time.time()
        await asyncio.gather(
            self._submit(stack, clients["A"], [0.0] * p.a),
            self._submit(stack, clients["B"], [p.spread * i / p.b for i in range(p.b)]),
            self._submit(stack, clients["C"], [p.c_at] * p.c),
        )
        submitted_s = time.time() - t0
        accepted = [s for s in self.subs if s.run_id]
        await self._await_creates(stack, accepted)
        await self._await_ended(stack, accepted, clients)
        metrics1 = await asyncio.to_thread(stack.metrics)
        proxy1 = await asyncio.to_thread(stack.storage_counts)
        ours1, busy1, wall1 = our_cpu_seconds(), machine_busy_seconds(), time.monotonic()
        stats = await asyncio.to_thread(stack.emulator.stats)
        storage = sum(proxy1.values()) - sum(proxy0.values())
        cpu = metrics1["cpu_seconds"] - metrics0["cpu_seconds"]
        wall = wall1 - wall0
        result = self._report(t0, stats, clients)
        started = result["started"]
        result.update(
            {
                "submitted_in_s": round(submitted_s, 1),
                "measured_s": round(wall, 1),
                "host_cpu_ms_per_start": 1000 * cpu / started if started else None,
                "storage_requests_per_start": storage / started if started else None,
                "storage_requests": storage,
                "others_cpu_percent": max(0.0, 100 * ((busy1 - busy0) - (ours1 - ours0)) / wall),
                "ours_cpu_percent": 100 * (ours1 - ours0) / wall,
                "settings": host_env(dict.fromkeys(self.keys, "***"), self.admission, self.extra),
            }
        )
        return result

    async def _submit(self, stack: LocalStack, caller: CallerClient, offsets: list[float]) -> None:
        async def seen(response: httpx.Response) -> None:
            caller.requests[str(response.status_code)] += 1

        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            timeout=httpx.Timeout(300, connect=10),
            event_hooks={"response": [seen]},
        )
        sdk = openai.AsyncOpenAI(base_url=f"{stack.api}/api/v1", api_key=caller.key, http_client=http)
        start = time.monotonic()

        async def one(index: int, offset: float) -> None:
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            sub = Submission(caller.name, index, time.time())
            self.subs.append(sub)
            try:
                response = await sdk.responses.create(
                    model=MODEL,
                    input=f"capacity {caller.name} {index}",
                    background=True,
                    max_output_tokens=OUTPUT_CAP,
                    metadata={
                        "cap_bench": self.tag,
                        "caller": caller.name,
                        "emulator_duration_ms": str(int(self.profile.run_seconds * 1000)),
                        "emulator_output_chars": "40",
                    },
                )
                sub.run_id, sub.accepted_at = response.id, time.time()
            except openai.APIStatusError as error:
                sub.refused = f"{error.status_code} {error.code or ''}".strip()
            except openai.OpenAIError as error:
                sub.refused = type(error).__name__

        try:
            await asyncio.gather(*(one(i, offset) for i, offset in enumerate(offsets)))
        finally:
            await sdk.close()

    async def _await_creates(self, stack: LocalStack, accepted: list[Submission]) -> None:
        """Until the provider has created every accepted run's response (or it cannot: bounded by the quota)."""
        by_run = {s.run_id: s for s in accepted}
        budget = 120 + 60 * len(accepted) / self.profile.rpm
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(stack.emulator.responses, cap_bench=self.tag)
            for row in rows:
                sub = by_run.get((row.get("metadata") or {}).get("bg_run_id"))
                if sub is not None and sub.created_at is None:
                    sub.created_at = row["created_at"]
            if all(s.created_at is not None for s in accepted):
                return
            await asyncio.sleep(2)

    async def _await_ended(self, stack: LocalStack, accepted: list[Submission], clients: dict) -> None:
        """Read every accepted run back through the facade (its caller's key) until it ended."""
        sdks = {
            name: openai.AsyncOpenAI(base_url=f"{stack.api}/api/v1", api_key=c.key, max_retries=5)
            for name, c in clients.items()
        }
        sem = asyncio.Semaphore(8)

        async def look(sub: Submission) -> None:
            async with sem:
                try:
                    sub.final = (await sdks[sub.caller].responses.retrieve(sub.run_id)).status
                except openai.OpenAIError as error:
                    sub.final = f"error {type(error).__name__}"

        deadline = time.monotonic() + 60 + 2 * self.profile.run_seconds
        try:
            pending = list(accepted)
            while pending and time.monotonic() < deadline:
                await asyncio.gather(*(look(s) for s in pending))
                pending = [s for s in pending if s.final in ("queued", "in_progress")]
                if pending:
                    await asyncio.sleep(3)
        finally:
            for sdk in sdks.values():
                await sdk.close()

    def _report(self, t0: float, stats: dict[str, Any], clients: dict[str, CallerClient]) -> dict[str, Any]:
        p = self.profile
        quota = stats["quota"]
        started_subs = [s for s in self.subs if s.created_at is not None]
        started = len(started_subs)
        provider_429 = quota.get("limited_requests", 0) + quota.get("limited_tokens", 0)
        creates = sorted(s.created_at - t0 for s in started_subs)
        span = creates[-1] if creates else 0.0
        cost = OUTPUT_CAP + 4  # the prompt's tokens (ceil(chars / 4)) plus the output cap
        allowed = min(allowed_starts(p.rpm, span), allowed_starts(p.tpm, span, cost))
        window_end = t0 + p.spread
        served = [sum(1 for s in started_subs if s.caller == c and s.created_at <= window_end) for c in CALLERS]
        demand = [sum(1 for s in self.subs if s.caller == c and s.sent_at <= window_end) for c in CALLERS]
        per_caller = {}
        for name in CALLERS:
            mine = [s for s in self.subs if s.caller == name]
            waits = [s.created_at - s.sent_at for s in mine if s.created_at is not None]
            per_caller[name] = {
                "submitted": len(mine),
                "accepted": sum(1 for s in mine if s.run_id),
                "refused": dict(Counter(s.refused for s in mine if s.refused)),
                "started": len(waits),
                "completed": sum(1 for s in mine if s.final == "completed"),
                "wait_s": {k: _round(v) for k, v in summary(waits).items()},
                "http_statuses_seen": dict(clients[name].requests),
            }
        refused = Counter(s.refused for s in self.subs if s.refused)
        return {
            "submitted": len(self.subs),
            "accepted": sum(1 for s in self.subs if s.run_id),
            "refused": dict(refused),
            "refused_beyond_own_quota": sum(n for why, n in refused.items() if not why.startswith("429")),
            "started": started,
            "completed": sum(1 for s in self.subs if s.final == "completed"),
            "not_completed": dict(Counter(s.final for s in self.subs if s.run_id and s.final != "completed")),
            "provider_429": provider_429,
            "provider_429_per_start": provider_429 / started if started else None,
            "provider_quota_counters": quota,
            "first_to_last_create_s": round(span, 1),
            "allowed_starts_in_span": round(allowed, 1),
            "start_share_of_allowed": started / allowed if allowed else None,
            "starts_per_minute": 60 * started / span if span else None,
            "fairness": {
                "window_s": p.spread,
                "served": dict(zip(CALLERS, served, strict=True)),
                "submitted": dict(zip(CALLERS, demand, strict=True)),
                "jain_normalised_throughput": jain_index(normalised_throughput(served, demand)),
            },
            "callers": per_caller,
            "create_offsets_s": [round(x, 2) for x in creates],
            "create_offsets_by_caller": {
                c: sorted(round(s.created_at - t0, 2) for s in started_subs if s.caller == c) for c in CALLERS
            },
        }


def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


# -- the plot and the summary ---------------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = results["profile"]
    modes = results["modes"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for name, mode in modes.items():
        xs = mode["create_offsets_s"]
        ax.step(xs, range(1, len(xs) + 1), where="post", label=f"{name}: {len(xs)} started")
    end = max((m["create_offsets_s"][-1] for m in modes.values() if m["create_offsets_s"]), default=1)
    grid = [end * i / 50 for i in range(51)]
    ax.plot(grid, [allowed_starts(profile["rpm"], t) for t in grid], ":", color="0.4", label="the quota allows")
    ax.set_xlabel("s since the first start")
    ax.set_ylabel("provider creates")
    ax.set_title("Provider creates over time", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    width = 0.35
    for k, (name, mode) in enumerate(modes.items()):
        p50 = [mode["callers"][c]["wait_s"]["p50"] or 0 for c in CALLERS]
        p95 = [mode["callers"][c]["wait_s"]["p95"] or 0 for c in CALLERS]
        xs = [i + (k - 0.5) * width for i in range(len(CALLERS))]
        ax.bar(xs, p95, width, alpha=0.35, color=f"C{k}")
        ax.bar(xs, p50, width, color=f"C{k}", label=f"{name} p50 (light: p95)")
    ax.set_xticks(range(len(CALLERS)), [f"caller {c}" for c in CALLERS])
    ax.set_ylabel("s from the first request to the provider's create")
    ax.set_title("Wait per caller (started runs only)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    for k, (name, mode) in enumerate(modes.items()):
        refused = [sum(mode["callers"][c]["refused"].values()) for c in CALLERS]
        xs = [i + (k - 0.5) * width for i in range(len(CALLERS))]
        ax.bar(xs, refused, width, color=f"C{k}", label=name)
    ax.set_xticks(range(len(CALLERS)), [f"caller {c}" for c in CALLERS])
    ax.set_ylabel("starts refused")
    ax.set_title("Refused starts per caller", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"Capacity: {profile['rpm']} creates/min; A {profile['a']} at once, B {profile['b']} over "
        f"{profile['spread']:.0f} s, C {profile['c']}; runs of {profile['run_seconds']:.0f} s",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def lines(results: dict[str, Any]) -> list[str]:
    out = []
    for name, m in results["modes"].items():
        waits = "; ".join(
            f"{c} {m['callers'][c]['wait_s']['p50']}/{m['callers'][c]['wait_s']['p95']} s" for c in CALLERS
        )
        out.append(
            f"{name}: submitted {m['submitted']}, refused {m['refused_beyond_own_quota']} {m['refused']}, "
            f"started {m['started']}, completed {m['completed']}; provider 429s/start "
            f"{_fmt(m['provider_429_per_start'])}; share of allowed {_fmt(m['start_share_of_allowed'])} over "
            f"{m['first_to_last_create_s']} s; wait p50/p95 {waits}; Jain "
            f"{_fmt(m['fairness']['jain_normalised_throughput'])}; host CPU {_fmt(m['host_cpu_ms_per_start'], 1)} "
            f"ms/start; storage {_fmt(m['storage_requests_per_start'], 1)}/start; others' CPU "
            f"{m['others_cpu_percent']:.0f} %"
        )
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# -- main -----------------------------------------------------------------------------------------------------------
def parse_settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--setting wants NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled down: 30/min, A=60, B=12, C=3, runs of 5 s")
    parser.add_argument("--modes", default="before,now", help="comma-separated: before, now")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="a service setting for `now`"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "capacity.json")
    parser.add_argument(
        "--deployments", action="store_true", help="a pool of two deployments and an outage (bench/capacity_pool.py)"
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.deployments:
        await capacity_pool.main(args.quick, None if args.out == RESULTS / "capacity.json" else args.out)
        return
    profile = PROFILES["quick" if args.quick else "full"]
    extra = parse_settings(args.setting)
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"before", "now"}:
        raise SystemExit(f"--modes: before and/or now, got {args.modes!r}")
    results: dict[str, Any] = {
        "profile": {"name": "quick" if args.quick else "full", **asdict(profile), "tpm": profile.tpm},
        "machine": {"cpus": psutil.cpu_count(), "load1_at_start": psutil.getloadavg()[0]},
        "modes": {},
    }
    for name in modes:
        started = time.monotonic()
        results["modes"][name] = await Mode(name, profile, extra).run()
        results["modes"][name]["mode_seconds"] = round(time.monotonic() - started, 1)
        print(lines({"modes": {name: results["modes"][name]}})[0], flush=True)
    dump_json(args.out, results)
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    asyncio.run(main())
