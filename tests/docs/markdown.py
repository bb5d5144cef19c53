"""The project's Markdown documents as the docs tests read them: fenced code blocks (with their info strings), the
prose around them, inline code and headings.

A code block is *runnable* when its info string says so (```` ```bash runnable ````, ```` ```python runnable ````);
the block right after it may be its expected output (```` ```text output ````). GitHub highlights such a block by
its first word and shows nothing of the rest.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every document a reader follows. bench/results/*.md are written by the benchmarks, not by hand.
DOCUMENTS = (
    "README.md",
    "docs/*.md",
    "bench/README.md",
    "infra/README.md",
    "client/README.md",
    "local/emulator/README.md",
    "local/functions_host/README.md",
)
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.S)  # within a paragraph


def documents() -> list[Path]:
    found = {path for pattern in DOCUMENTS for path in REPO.glob(pattern)}
    return sorted(found)


@dataclass(frozen=True)
class Block:
    doc: Path  # relative to the repository
    line: int  # line of the opening fence (1-based)
    lang: str  # first word of the info string ("" when none)
    flags: frozenset[str]
    code: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def runnable(self) -> bool:
        return "runnable" in self.flags

    @property
    def is_output(self) -> bool:
        return "output" in self.flags


@dataclass
class Document:
    path: Path  # relative to the repository
    text: str
    blocks: list[Block] = field(default_factory=list)
    prose_lines: list[str] = field(default_factory=list)  # the text with every code block's lines blanked

    @classmethod
    def read(cls, path: Path) -> Document:
        path = Path(path) if Path(path).is_absolute() else REPO / path
        doc = cls(path.relative_to(REPO), path.read_text(encoding="utf-8"))
        doc._parse()
        return doc

    @classmethod
    def from_text(cls, name: str, text: str) -> Document:
        doc = cls(Path(name), text)
        doc._parse()
        return doc

    def _parse(self) -> None:
        lines = self.text.split("\n")
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if opening and opening["fence"][0] == "`" and "`" in opening["info"]:
                opening = None  # CommonMark: a backtick fence's info string has no backtick (this is inline code)
            if not opening:
                self.prose_lines.append(lines[i])
                i += 1
                continue
            indent, fence = len(opening["indent"]), opening["fence"]
            words = opening["info"].split()
            body: list[str] = []
            j = i + 1
            while j < len(lines):
                closing = FENCE.match(lines[j])
                if (
                    closing
                    and closing["fence"][0] == fence[0]
                    and len(closing["fence"]) >= len(fence)
                    and not closing["info"].strip()
                ):
                    break
                line = lines[j]
                body.append(line[min(indent, len(line) - len(line.lstrip())) :])  # less the fence's indentation
                j += 1
            self.blocks.append(
                Block(self.path, i + 1, words[0] if words else "", frozenset(words[1:]), "\n".join(body) + "\n")
            )
            self.prose_lines += [""] * (j + 1 - i)
            i = j + 1

    @property
    def directory(self) -> Path:
        return self.path.parent

    def runnable(self) -> list[tuple[Block, Block | None]]:
        """Each runnable block with the output block that follows it (None when there is none)."""
        pairs = []
        for n, block in enumerate(self.blocks):
            if block.runnable:
                after = self.blocks[n + 1] if n + 1 < len(self.blocks) else None
                pairs.append((block, after if after is not None and after.is_output else None))
        return pairs

    def inline_code(self) -> list[tuple[int, str]]:
        """(line, text) of every `inline code` span of the prose (a span may wrap over two lines)."""
        prose = "\n".join(self.prose_lines)
        return [
            (prose.count("\n", 0, match.start()) + 1, " ".join(match[2].split()))
            for match in INLINE_CODE.finditer(prose)
        ]

    def prose_without_code(self) -> list[tuple[int, str]]:
        """(line, text) of the prose with inline code spans blanked out."""
        prose = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), "\n".join(self.prose_lines))
        return list(enumerate(prose.split("\n"), start=1))

    @cached_property
    def anchors(self) -> set[str]:
        """The ids GitHub gives the headings of this document."""
        seen: dict[str, int] = {}
        ids = set()
        for title in self.headings:
            slug = github_slug(title)
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            ids.add(slug if count == 0 else f"{slug}-{count}")
        return ids

    @cached_property
    def headings(self) -> list[str]:
        return [line.lstrip("#").strip() for line in self.prose_lines if re.match(r"#{1,6}\s", line)]


def github_slug(title: str) -> str:
    """GitHub's heading anchor: lower case, markup and punctuation dropped, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link: its text
    title = title.replace("`", "").replace("*", "")
    kept = "".join(ch for ch in title.lower() if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")
