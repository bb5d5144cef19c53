"""`make fuzz`: schemathesis against openapi.yaml on the local stack with function keys switched on.

    .venv/bin/python -m tests.fuzz.run [--max-examples 300] [--seed 1] [--phases examples,coverage,fuzzing,stateful]

It starts its own LocalStack (local/stack.py) with a function key and a master key configured, the tests'
scaled-down settings, the production webhook rules (https only, no private addresses) and the webhook
delivery function disabled, so that a fuzzed `webhook_url` is checked but never called: nothing leaves the
machine. Then `schemathesis run` with tests/fuzz/schemathesis.toml: the checks not_a_server_error,
status_code_conformance, content_type_conformance, response_schema_conformance, negative_data_rejection and
ignored_auth, authenticated per security scheme (function key, master key for /metrics).

Known findings: tests/fuzz/known_findings.py lists the defects of the SERVICE that the fuzzing found and
issue 12 owns (what was sent, expected, actual, how to reproduce). It is loaded as schemathesis hooks: a
failure that matches one exactly is printed as "known, owned by issue 12" and does not fail the run; any other
finding fails it. Exit code: schemathesis's (0 when every finding is known).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from local.azurite import REPO_ROOT
from local.stack import LocalStack
from tests.fuzz.known_findings import KNOWN_FINDINGS, OWNER
from tests.stack import TEST_ENV

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "schemathesis.toml"
HOOKS = "tests.fuzz.known_findings"  # a module: schemathesis imports it from PYTHONPATH
OPENAPI = REPO_ROOT / "openapi.yaml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

FUZZ_RESPONSES_KEY = secrets.token_urlsafe(32)
FUZZ_ENV = {
    **TEST_ENV,
    # As in production: a fuzzed webhook_url must pass the real checks (https, public address).
    "WEBHOOK_ALLOW_HTTP": "false",
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "false",
    # A fuzzed webhook_url can be a public IP literal: never deliver, so no request leaves the machine.
    "AzureWebJobs.deliver_webhook.Disabled": "true",
    # The Responses API facade, with one operator caller the fuzzer authenticates as.
    "RESPONSES_API_KEYS": f"fuzz:{FUZZ_RESPONSES_KEY}:operator",
}


@dataclass
class FuzzResult:
    returncode: int
    output: str
    known: dict[str, int] = field(default_factory=dict)  # known finding id -> failures it accounted for
    new_failures: int = 0  # unique failures that no known finding explains
    host_errors: dict[str, int] = field(default_factory=dict)  # exception type -> tracebacks in the host log

    def summary(self) -> str:
        by_id = {finding.id: finding for finding in KNOWN_FINDINGS}
        lines = []
        for finding_id, count in sorted(self.known.items()):
            finding = by_id[finding_id]
            lines.append(
                f"known, owned by {OWNER}: {finding.operation}: {finding.id} ({count} failing cases)\n"
                f"    sent: {finding.sent}\n    expected: {finding.expected}\n    actual: {finding.actual}"
            )
        if self.host_errors:
            errors = ", ".join(f"{name} x{count}" for name, count in sorted(self.host_errors.items()))
            lines.append(f"host log: unhandled errors behind the 500s (known ones included): {errors}")
        unseen = sorted(set(by_id) - set(self.known))
        if unseen:
            lines.append(f"known findings this run did not meet: {', '.join(unseen)}")
        if self.returncode != 0 and not self.new_failures:
            lines.append(f"fuzz: schemathesis exited with {self.returncode} (see its output above)")
        lines.append(f"fuzz: {self.new_failures} new findings, {len(self.known)} known findings ({OWNER})")
        return "\n".join(lines)


def fuzz_stack(name: str = "fuzz") -> LocalStack:
    return LocalStack(name, env=FUZZ_ENV, function_key=secrets.token_urlsafe(24), master_key=secrets.token_urlsafe(24))


def run_schemathesis(
    stack: LocalStack,
    *,
    seed: int,
    max_examples: int,
    phases: str,
    workers: int = 1,
    echo: bool = True,
    extra_args: tuple[str, ...] = (),
) -> FuzzResult:
    """schemathesis against the running `stack`; its exit code and the known findings it met."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        report, known_log = Path(scratch) / "report.json", Path(scratch) / "known.jsonl"
        args = [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            str(OPENAPI),
            "--url",
            f"{stack.host.base_url}/api",
            "--seed",
            str(seed),
            "--max-examples",
            str(max_examples),
            "--phases",
            phases,
            "--workers",
            str(workers),
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--generation-database",
            "none",
            *extra_args,
        ]  # no example database left in the repo
        env = {
            **os.environ,
            "FUZZ_FUNCTION_KEY": stack.function_key,
            "FUZZ_MASTER_KEY": stack.master_key,
            "FUZZ_RESPONSES_KEY": FUZZ_RESPONSES_KEY,
            "SCHEMATHESIS_HOOKS": HOOKS,
            "FUZZ_KNOWN_LOG": str(known_log),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        log_start = len(stack.host.logs())
        returncode, output = _run(args, cwd=scratch, env=env, echo=echo)
        host_errors = _unhandled_errors(stack.host.logs()[log_start:])
        known: dict[str, int] = {}
        if known_log.exists():
            for line in known_log.read_text().splitlines():
                finding_id = json.loads(line)["id"]
                known[finding_id] = known.get(finding_id, 0) + 1
        unique = (_read_json(report).get("test_cases") or {}).get("unique_failures", 0)
    return FuzzResult(returncode, output, known, new_failures=int(unique or 0), host_errors=host_errors)


def _unhandled_errors(log: str) -> dict[str, int]:
    """The exception types of the tracebacks the API logged ("unhandled error in ..."), counted."""
    counts: dict[str, int] = {}
    for block in log.split("unhandled error in ")[1:]:
        traceback = block.split("\n[", 1)[0]  # up to the next timestamped log line
        raised = re.findall(r"^(?:\w+\.)*(\w+(?:Error|Exception|Failed))\b", traceback, re.M)
        name = raised[-1] if raised else "unknown"  # the last one: the exception that reached the handler
        counts[name] = counts.get(name, 0) + 1
    return counts


def _run(args: list[str], *, cwd: str, env: dict[str, str], echo: bool) -> tuple[int, str]:
    """Run a command; its output is returned and, with `echo`, shown as it comes (a fuzz run takes minutes)."""
    lines = []
    with subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
    return process.returncode, "".join(lines)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description="schemathesis against openapi.yaml on the local stack (keys on)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-examples", type=int, default=300, help="test cases per operation and phase")
    parser.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    args = parser.parse_args()
    started = time.monotonic()
    with fuzz_stack() as stack:
        print(
            f"fuzzing {OPENAPI.name} on {stack.host.base_url} (function keys on, seed {args.seed}, "
            f"{args.max_examples} examples)",
            flush=True,
        )
        result = run_schemathesis(stack, seed=args.seed, max_examples=args.max_examples, phases=args.phases)
    print(result.summary())
    print(f"fuzz: {time.monotonic() - started:.0f} s", flush=True)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
