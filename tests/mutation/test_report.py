"""The score `make mutate` prints: stable keys, equivalents left out, stale entries named, every entry reasoned."""

from __future__ import annotations

import pytest

from tests.mutation.report import EQUIVALENT_FILE, Mutant, changes, keys, read_equivalent, score

DIFF = """--- shared/runs/x.py
+++ shared/runs/x.py
@@ -1,3 +1,3 @@
 def f():
-    return a + b
+    return a - b
"""


def mutant(number: int, status: str, change: tuple[str, ...] = ("-return a + b", "+return a - b")) -> Mutant:
    return Mutant(f"shared.runs.x.xǁStoreǁsave__mutmut_{number}", status, change)


def test_a_key_names_the_function_and_the_change_not_mutmuts_number():
    assert changes(DIFF) == ("-return a + b", "+return a - b")
    (first,) = keys([mutant(3, "survived")])
    (renumbered,) = keys([mutant(7, "survived")])
    assert first == renumbered and first.startswith("shared.runs.x.Store.save@")
    assert next(iter(keys([Mutant("shared.runs.x.x_helper__mutmut_1", "survived", ("+x",))]))).startswith(
        "shared.runs.x.helper@"
    )
    twins = keys([mutant(1, "survived"), mutant(2, "survived")])
    assert sorted(twins) == [first, first + "#2"]


def test_the_score_leaves_out_the_listed_survivors_and_names_stale_entries():
    keyed = keys(
        [
            mutant(1, "killed", ("a",)),
            mutant(2, "timeout", ("b",)),
            mutant(3, "survived", ("c",)),
            mutant(4, "survived", ("d",)),
            mutant(5, "no tests", ("e",)),
        ]
    )
    by_change = {m.changes[0]: key for key, m in keyed.items()}
    result = score(keyed, {by_change["c"]: "equivalent", by_change["a"]: "was equivalent once"})
    assert (result.total, result.killed, result.judged) == (5, 2, 4)
    assert result.equivalent == [by_change["c"]] and result.stale == [by_change["a"]]
    assert sorted(result.survivors) == sorted([by_change["d"], by_change["e"]]) and result.ratio == 0.5


def test_every_listed_mutant_has_a_reason_and_is_listed_once():
    assert read_equivalent("# comment\n\nk@1  why\n") == {"k@1": "why"}
    with pytest.raises(ValueError, match="no reason"):
        read_equivalent("k@1\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_equivalent("k@1 why\nk@1 why again\n")
    assert read_equivalent(EQUIVALENT_FILE.read_text())  # the checked-in list parses
