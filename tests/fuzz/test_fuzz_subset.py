"""A short, seeded `make fuzz` inside `make test`: schemathesis against openapi.yaml on its own local stack
with function keys switched on (tests/fuzz/run.py). It fails on any finding that is not in
tests/fuzz/known_findings.json, so a new 500, an undocumented status or a response that breaks the document
is caught here; `make fuzz` runs the same with many more cases."""

from __future__ import annotations

import pytest

from .run import fuzz_stack, run_schemathesis

pytestmark = pytest.mark.slow

SEED = 20261130


def test_a_seeded_fuzz_run_finds_nothing_new() -> None:
    with fuzz_stack("fuzz-test") as stack:
        result = run_schemathesis(
            stack, seed=SEED, max_examples=5, phases="examples,coverage,fuzzing,stateful", echo=False
        )
    print(result.summary())
    assert result.returncode == 0, f"{result.output[-8000:]}\n{result.summary()}"
    assert result.new_failures == 0
