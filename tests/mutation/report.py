"""The score of `make mutate`: mutmut's results in mutants/, less the mutants listed as equivalent.

Each mutant is named by a key that survives renumbering: the function it mutates and a hash of the lines it
changes (`shared.runs.sessions.SessionStore.save@1a2b3c4d`), so an entry of `equivalent.txt` keeps naming the
same mutant when mutmut numbers a function's mutants differently; an entry that no longer names a surviving
mutant is reported as stale. A timeout counts as killed (the suite did not pass). Exits 1 when the score of the
non-equivalent mutants is under GOAL (the survivors not listed are what a test should kill next).

    python -m tests.mutation.report            # after `mutmut run`, from the repository root
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

EQUIVALENT_FILE = Path(__file__).with_name("equivalent.txt")
GOAL = 0.90
SEPARATOR = "ǁ"  # how mutmut joins a class and its method in a mutant's name
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's name (what `mutmut show` takes)
    status: str
    changes: tuple[str, ...]  # the diff's removed and added lines, stripped

    @property
    def function(self) -> str:
        module, _, mangled = self.name.partition("__mutmut_")[0].rpartition(".")
        parts = [p for p in mangled.split(SEPARATOR) if p and p != "x"] if SEPARATOR in mangled else [mangled[2:]]
        return ".".join([module, *parts])


def changes(diff: str) -> tuple[str, ...]:
    return tuple(
        line[0] + line[1:].strip()
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def keys(mutants: list[Mutant]) -> dict[str, Mutant]:
    """Stable keys: function@hash of the changed lines (#2, #3 for identical changes in one function)."""
    seen: Counter = Counter()
    keyed = {}
    for mutant in sorted(mutants, key=lambda m: (m.function, _number(m.name))):
        key = f"{mutant.function}@{hashlib.sha256(chr(10).join(mutant.changes).encode()).hexdigest()[:8]}"
        seen[key] += 1
        keyed[key if seen[key] == 1 else f"{key}#{seen[key]}"] = mutant
    return keyed


def _number(name: str) -> int:
    return int(name.rpartition("__mutmut_")[2])


def read_equivalent(text: str) -> dict[str, str]:
    """`key  reason` per line; blank lines and lines starting with # are ignored. Every entry needs a reason."""
    listed = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, reason = line.partition(" ")
        if not reason.strip():
            raise ValueError(f"{EQUIVALENT_FILE.name}:{number}: {key} has no reason")
        if key in listed:
            raise ValueError(f"{EQUIVALENT_FILE.name}:{number}: {key} is listed twice")
        listed[key] = reason.strip()
    return listed


@dataclass
class Score:
    total: int
    killed: int
    equivalent: list[str]  # keys of surviving mutants listed as equivalent
    survivors: list[str]  # keys of surviving mutants not listed
    stale: list[str]  # listed keys that name no surviving mutant

    @property
    def judged(self) -> int:
        return self.total - len(self.equivalent)

    @property
    def ratio(self) -> float:
        return self.killed / self.judged if self.judged else 1.0


def score(keyed: dict[str, Mutant], listed: dict[str, str]) -> Score:
    alive = {key for key, m in keyed.items() if m.status not in KILLED}
    return Score(
        total=len(keyed),
        killed=len(keyed) - len(alive),
        equivalent=sorted(alive & listed.keys()),
        survivors=sorted(alive - listed.keys()),
        stale=sorted(listed.keys() - alive),
    )


def load_results() -> list[Mutant]:
    """mutmut's results for every mutated file (run from the repository root, after `mutmut run`)."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files

    mutants = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            # only survivors need their diff (the key); a killed or unchecked one is keyed by name, never listed
            survived = status not in KILLED and status != "not checked"
            diff = changes(get_diff_for_mutant(name, path=path)) if survived else (name,)
            mutants.append(Mutant(name, status, diff))
    return mutants


def main() -> int:
    mutants = load_results()
    if not mutants:
        print("no mutmut results in mutants/: run `make mutate`")
        return 1
    unchecked = [m.name for m in mutants if m.status == "not checked"]
    keyed = keys(mutants)
    result = score(keyed, read_equivalent(EQUIVALENT_FILE.read_text()))
    for key in result.survivors:
        mutant = keyed[key]
        print(f"survived: {key}  ({mutant.status}; mutmut show {mutant.name})")
        for line in mutant.changes:
            print(f"    {line}")
    for key in result.stale:
        print(f"stale entry in {EQUIVALENT_FILE.name} (killed now, or the code changed): {key}")
    by_status = Counter(m.status for m in mutants)
    print(
        f"\nmutants: {result.total} ({', '.join(f'{n} {s}' for s, n in by_status.most_common())}); "
        f"{len(result.equivalent)} listed as equivalent"
    )
    print(
        f"mutation score: {result.killed}/{result.judged} non-equivalent mutants killed = {result.ratio:.1%} "
        f"(goal {GOAL:.0%}); {len(result.survivors)} survivors not listed"
    )
    if unchecked:
        print(f"{len(unchecked)} mutants were not checked (an interrupted run?)")
    return 0 if result.ratio >= GOAL and not unchecked else 1


if __name__ == "__main__":
    sys.exit(main())
