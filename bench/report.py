"""Markdown table and PNG plots from bench/results/results.json (`python -m bench.report` redraws them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .common import RESULTS


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _s(d: dict[str, Any], digits: int = 2) -> str:
    return f"{_f(d.get('p50'), digits)} / {_f(d.get('p95'), digits)} / {_f(d.get('max'), digits)}"


def write_markdown(r: dict[str, Any]) -> str:
    _fix_capacity(r)
    m = r["machine"]
    out = [
        f"# Benchmark results{' (quick)' if r.get('quick') else ''}",
        "",
        f"Machine: {m['nproc']} vCPU ({m['cpu']}), {m['memory_gib']} GiB RAM, Python {m['python']}. "
        f"Started {r['started']}, wall time {r.get('bench_wall_seconds', 0):.0f} s. "
        "All values p50 / p95 / max unless noted."
        + "".join(
            f" Section(s) `{x['phases']}` re-run alone at {x['started']} ({x['wall_seconds']:.0f} s) and merged."
            for x in r.get("reruns", [])
        ),
        "",
    ]
    out += [
        "## 1–3. Completion-detection lag, provider calls, storage transactions per run",
        "",
        "| run duration | runs | lag → run terminal in storage (s) | lag → webhook received (s) | "
        "baseline 2 s poll lag (s) | ours/baseline lag (p50, webhook) | provider calls ours (mean; p50/p95/max) | "
        "baseline calls (mean) | ours/baseline calls | storage requests / run: all (service + trigger net of idle) | "
        "host CPU ms / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r.get("lag", []):
        out.append(
            f"| {x['duration_s']:.0f} s | {x['runs']} | {_s(x['lag_to_storage_s'])} | {_s(x['lag_to_webhook_s'])} | "
            f"{_s(x['baseline_lag_s'])} | {_f(x['ratio_lag_webhook_p50_vs_baseline'])} | "
            f"{_f(x['provider_calls']['mean'], 1)} ({_s(x['provider_calls'], 0)}) | "
            f"{_f(x['baseline_provider_calls']['mean'], 1)} | {_f(x['ratio_calls_vs_baseline'])} | "
            f"{_f(x['storage_per_run_total'], 1)} ({_f(x['storage_per_run_service'], 1)} + "
            f"{_f(x['storage_per_run_trigger_net_of_idle'], 1)}) | {_f(1000 * x['host_cpu_s_per_run'], 1)} |"
        )
    out += [
        "",
        "Storage requests per run by operation, counted at a proxy in front of Azurite (every request the "
        "host process made: the service's own calls and the queue trigger's receive/delete/update; `queue.receive` "
        "includes the trigger's idle polling during the window, "
        f"idle rate {r.get('idle_storage_per_minute', {})} per minute):",
        "",
        "| run duration | " + " | ".join(_keys(r)) + " |",
        "|---|" + "---|" * len(_keys(r)),
    ]
    for x in r.get("lag", []):
        out.append(
            f"| {x['duration_s']:.0f} s | "
            + " | ".join(_f(x["storage_per_run"].get(k, 0.0), 1) for k in _keys(r))
            + " |"
        )
    out += [
        "",
        "## 4. POST /api/runs throughput and latency",
        "",
        "| concurrent clients | requests | accepted/s | latency ms p50 / p95 / max | statuses |",
        "|---|---|---|---|---|",
    ]
    for x in r.get("throughput", []):
        out.append(
            f"| {x['clients']} | {x['requests']} | {_f(x['throughput_rps'], 1)} | {_s(x['latency_ms'], 0)} | "
            f"{x['statuses']} |"
        )
    out += [
        "",
        "## 5. Poller capacity (long runs in flight; measured with POLL_MAX_DELAY_SECONDS=30, see bench/README.md)",
        "",
        "| runs in flight | polls/s achieved | polls/s the backoff asks for | achieved/asked | runs >5 s overdue | "
        "host CPU ms / poll | cores used: host / Azurite / emulator | host max RSS MiB | creation (s, errors) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r.get("capacity", []):
        c = x.get("creation", {})
        out.append(
            f"| {x['in_flight']} | {_f(x['polls_per_s'], 1)} | {_f(x['expected_polls_per_s'], 1)} | "
            f"{_f(x['keeping_up_ratio'])} | {x['overdue_runs_gt5s']} | {_f(x['cpu_ms_per_poll'])} | "
            f"{_cores(x)} | {_f(x['host_max_rss_mib'], 0)} | "
            f"{_f(c.get('seconds'), 0)}, {c.get('errors')} |"
        )
    s = r.get("streaming", {})
    if s:
        out += [
            "",
            "## 6. Streaming",
            "",
            "| measure | direct to emulator (openai SDK) | through our relay |",
            "|---|---|---|",
        ]
        for label, key in (
            ("events/s, one unpaced stream (2,000 deltas)", "throughput_sequential_{}_events_per_s"),
            ("events/s, 8 concurrent unpaced streams (total)", "throughput_concurrent8_{}_events_per_s"),
        ):
            out.append(
                f"| {label} | {_s(s.get(key.format('direct'), {}), 0)} | {_s(s.get(key.format('ours'), {}), 0)} |"
            )
        out.append(
            f"| paced stream: first delta after provider start (ms) | "
            f"{_s(s.get('paced_first_delta_after_start_ms_direct', {}), 0)} | "
            f"{_s(s.get('paced_first_delta_after_start_ms_ours', {}), 0)} |"
        )
        out.append(
            f"| paced stream: terminal event after provider finished_at (ms) | "
            f"{_s(s.get('paced_terminal_after_finish_ms_direct', {}), 0)} | "
            f"{_s(s.get('paced_terminal_after_finish_ms_ours', {}), 0)} |"
        )
        out.append(
            f"| resume `?starting_after=N` → first event, run live (ms) | – | "
            f"{_s(s.get('resume_first_event_ms_live', {}), 0)} |"
        )
        out.append(
            f"| resume `?starting_after=N` → first event, run finished (ms) | – | "
            f"{_s(s.get('resume_first_event_ms_finished', {}), 0)} |"
        )
    out.append("")
    return "\n".join(out)


def _schedule_times(cap: float = 30.0, initial: float = 1.0, mult: float = 1.5, horizon: float = 8000.0) -> list[float]:
    """Expected ages (s) at which a run is polled: delay k = ceil(base_k x jitter 0.8..1.2) with
    base_k = min(cap, initial x mult^k) (lifecycle.next_poll_delay; the queue delay is whole seconds)."""
    import math

    times, t, k = [], 0.0, 0
    while t < horizon and k < 10_000:
        base = min(cap, initial * mult**k)
        t += sum(math.ceil(base * (0.8 + 0.04 * j)) for j in range(11)) / 11
        times.append(t)
        k += 1
    return times


def expected_polls_per_s(ages_mid: list[float], window: float) -> float:
    """Polls/s the backoff schedule asks for in a window, given each run's age at mid-window."""
    import bisect

    times = _schedule_times()
    polls = 0
    for a in ages_mid:
        lo, hi = a - window / 2, a + window / 2
        polls += bisect.bisect_right(times, hi) - bisect.bisect_right(times, lo)
    return polls / window


def _fix_capacity(r: dict[str, Any]) -> None:
    for x in r.get("capacity", []):
        if x.get("ages_at_mid_window_s"):
            x["expected_polls_per_s"] = expected_polls_per_s(x["ages_at_mid_window_s"], x["window_s"])
            x["keeping_up_ratio"] = x["polls_per_s"] / x["expected_polls_per_s"] if x["expected_polls_per_s"] else None


def _cores(x: dict[str, Any]) -> str:
    p = x.get("cpu_utilisation_by_process")
    if not p:
        return f"{_f(x['host_cpu_utilisation'])} / – / –"
    return " / ".join(_f(p.get(k)) for k in ("host", "azurite", "emulator"))


def _keys(r: dict[str, Any]) -> list[str]:
    keys: set[str] = set()
    for x in r.get("lag", []):
        keys |= set(x["storage_per_run"])
    return sorted(keys)


def write_plots(r: dict[str, Any], out: Path) -> None:
    _fix_capacity(r)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lag = r.get("lag", [])
    if lag:
        labels = [f"{x['duration_s']:.0f} s" for x in lag]
        series = [
            ("run terminal in storage", "lag_to_storage_s"),
            ("webhook received", "lag_to_webhook_s"),
            ("baseline: 2 s polling", "baseline_lag_s"),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
        for ax, stat in zip(axes, ("p50", "p95", "max"), strict=True):
            xs = np.arange(len(labels))
            for i, (name, key) in enumerate(series):
                ax.bar(xs + (i - 1) * 0.27, [x[key][stat] or 0 for x in lag], 0.27, label=name)
            ax.set_xticks(xs, labels)
            ax.set_title(f"completion-detection lag, {stat}")
            ax.set_xlabel("run duration")
        axes[0].set_ylabel("seconds after provider finished_at")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig1_completion_lag.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = np.arange(len(labels))
        for i, (name, key) in enumerate(
            (("ours", "provider_calls"), ("baseline 2 s polling", "baseline_provider_calls"))
        ):
            vals = [x[key]["p50"] or 0 for x in lag]
            err = [[0] * len(lag), [(x[key]["max"] or 0) - (x[key]["p50"] or 0) for x in lag]]
            ax.bar(xs + (i - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=3, label=f"{name} (p50, bar to max)")
        ax.set_xticks(xs, labels)
        ax.set_yscale("log")
        ax.set_ylabel("provider API calls per run")
        ax.set_xlabel("run duration")
        ax.set_title("provider calls per run")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig2_provider_calls.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4.2))
        bottom = np.zeros(len(lag))
        for key in _keys(r):
            vals = np.array([x["storage_per_run"].get(key, 0.0) for x in lag])
            ax.bar(labels, vals, bottom=bottom, label=key)
            bottom += vals
        ax.set_ylabel("storage requests per run")
        ax.set_xlabel("run duration")
        ax.set_title("storage requests per run (service + queue trigger, at the proxy)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig3_storage_per_run.png", dpi=110)
        plt.close(fig)

    tp = r.get("throughput", [])
    if tp:
        fig, ax1 = plt.subplots(figsize=(7, 4.2))
        labels = [str(x["clients"]) for x in tp]
        ax1.bar(labels, [x["throughput_rps"] for x in tp], color="tab:blue", alpha=0.6, label="accepted/s")
        ax1.set_ylabel("accepted runs / s")
        ax1.set_xlabel("concurrent clients")
        ax2 = ax1.twinx()
        for stat, style in (("p50", "o-"), ("p95", "s--"), ("max", "^:")):
            ax2.plot(labels, [x["latency_ms"][stat] for x in tp], style, color="tab:red", label=f"latency {stat}")
        ax2.set_ylabel("latency (ms)")
        ax2.set_yscale("log")
        ax1.set_title("POST /api/runs throughput and latency")
        fig.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig4_start_throughput.png", dpi=110)
        plt.close(fig)

    cap = r.get("capacity", [])
    if cap:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        labels = [str(x["in_flight"]) for x in cap]
        xs = np.arange(len(labels))
        axes[0].bar(xs - 0.2, [x["polls_per_s"] for x in cap], 0.4, label="achieved")
        axes[0].bar(xs + 0.2, [x["expected_polls_per_s"] for x in cap], 0.4, label="backoff asks")
        axes[0].set_xticks(xs, labels)
        axes[0].set_title("polls / s")
        axes[0].legend(fontsize=8)
        axes[1].bar(labels, [x["cpu_ms_per_poll"] or 0 for x in cap])
        axes[1].set_title("host CPU ms per poll")
        axes[2].bar(labels, [x["host_max_rss_mib"] for x in cap])
        axes[2].set_title("host max RSS (MiB)")
        for ax in axes:
            ax.set_xlabel("runs in flight")
        fig.tight_layout()
        fig.savefig(out / "fig5_poller_capacity.png", dpi=110)
        plt.close(fig)

    s = r.get("streaming")
    if s:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        groups = [
            ("1 stream", "throughput_sequential_{}_events_per_s"),
            ("8 streams", "throughput_concurrent8_{}_events_per_s"),
        ]
        xs = np.arange(len(groups))
        for i, kind in enumerate(("direct", "ours")):
            axes[0].bar(
                xs + (i - 0.5) * 0.38,
                [s[g.format(kind)]["p50"] or 0 for _, g in groups],
                0.38,
                label="direct (SDK)" if kind == "direct" else "our relay",
            )
        axes[0].set_xticks(xs, [g for g, _ in groups])
        axes[0].set_ylabel("events / s (p50)")
        axes[0].set_title("unpaced stream throughput")
        axes[0].legend(fontsize=8)
        items = [
            ("first delta\n(direct)", "paced_first_delta_after_start_ms_direct"),
            ("first delta\n(relay)", "paced_first_delta_after_start_ms_ours"),
            ("terminal\n(direct)", "paced_terminal_after_finish_ms_direct"),
            ("terminal\n(relay)", "paced_terminal_after_finish_ms_ours"),
            ("resume\n(live)", "resume_first_event_ms_live"),
            ("resume\n(finished)", "resume_first_event_ms_finished"),
        ]
        xs = np.arange(len(items))
        for i, stat in enumerate(("p50", "p95", "max")):
            axes[1].bar(xs + (i - 1) * 0.27, [s[k][stat] or 0 for _, k in items], 0.27, label=stat)
        axes[1].set_xticks(xs, [n for n, _ in items], fontsize=8)
        axes[1].set_ylabel("ms")
        axes[1].set_title("stream latencies")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig6_streaming.png", dpi=110)
        plt.close(fig)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(write_markdown(results))
    write_plots(results, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
