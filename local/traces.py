"""Read the traces `make run` wrote with TELEMETRY_FILE (OTLP/JSON lines) as trees, one per run.

TELEMETRY_FILE=.local/telemetry.jsonl make run           # then start a few runs
python -m local.traces .local/telemetry.jsonl            # every trace
python -m local.traces .local/telemetry.jsonl run_...    # the trace of one run
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from shared.telemetry.local_export import attributes, read_spans

SHOWN = (
    "bgruns.run_id",
    "bgruns.outcome",
    "bgruns.provider_status",
    "bgruns.next_poll_in",
    "gen_ai.response.id",
    "http.response.status_code",
    "bgruns.webhook.attempt",
    "error.type",
)


def _print_tree(children: dict[str, list[dict]], parent: str, depth: int, t0: int) -> None:
    for span in sorted(children[parent], key=lambda s: int(s["startTimeUnixNano"])):
        print(_line(span, depth, t0))
        _print_tree(children, span["spanId"], depth + 1, t0)


def _line(span: dict, depth: int, t0: int) -> str:
    start, end = int(span.get("startTimeUnixNano", 0)), int(span.get("endTimeUnixNano", 0))
    attrs = attributes(span)
    details = " ".join(f"{k.split('.')[-1]}={attrs[k]}" for k in SHOWN if k in attrs and k != "bgruns.run_id")
    return f"{(start - t0) / 1e9:+9.3f}s {(end - start) / 1e6:8.1f} ms  {'  ' * depth}{span['name']}" + (
        f"  [{details}]" if details else ""
    )


def print_traces(path: str, run_id: str | None = None) -> int:
    spans = read_spans(path)
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        by_trace[span["traceId"]].append(span)
    shown = 0
    for trace_id, members in sorted(
        by_trace.items(), key=lambda item: min(int(s["startTimeUnixNano"]) for s in item[1])
    ):
        runs = {attributes(s).get("bgruns.run_id") for s in members} - {None}
        if run_id and run_id not in runs:
            continue
        ids = {s["spanId"] for s in members}
        children: dict[str, list[dict]] = defaultdict(list)
        for span in members:
            children[span.get("parentSpanId") if span.get("parentSpanId") in ids else ""].append(span)
        t0 = min(int(s["startTimeUnixNano"]) for s in members)
        print(f"trace {trace_id}  runs: {', '.join(sorted(runs)) or '-'}")
        _print_tree(children, "", 1, t0)
        shown += 1
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("run_id", nargs="?")
    args = parser.parse_args()
    if not print_traces(args.path, args.run_id):
        raise SystemExit("no trace found" + (f" for {args.run_id}" if args.run_id else ""))


if __name__ == "__main__":
    main()
