"""The files `azd deploy` puts in a Python function app's zip, computed the way azd >= 1.18.0 computes them.

Read from the azd sources (Azure/azure-dev, cli/azd/pkg/project/project_utils.go `createDeployableZip` and
cli/azd/pkg/rzip/rzip.go, since #5383 in azd 1.18.0; the ignore file is `ServiceTargetKind.IgnoreFile()`,
`.funcignore` for `host: function`) and from github.com/denormal/go-gitignore, which azd uses to read it:

- Python needs no build: the service folder itself (`project: .`) is zipped, walked entry by entry; an entry the
  rules exclude is skipped whole, so nothing inside an excluded folder can come back.
- Always left out: any folder named `.azure`, any file named like the ignore file, and (functions) any file named
  `local.settings.json`.
- With a `.funcignore` it alone decides the rest (`ignorer.Absolute(path, isDir)`): azd's defaults (folders
  holding a `pyvenv.cfg`, `__pycache__`) apply only when there is none.
- Symlinks are followed: a linked folder that is not excluded at the link is walked at its target, and the
  paths below it are the target's, outside the service folder, which go-gitignore never matches: everything in
  it is uploaded, caches included.
- go-gitignore: the last matching line wins; a line with no `/` inside matches the entry's own name (with a
  leading `/`, the whole relative path), `*` crossing `/` there; a line with a `/` inside matches the whole
  relative path with fnmatch(FNM_PATHNAME) (anchored, whether or not it starts with `/`); `**` components match
  any number of folders; a trailing `/` matches folders only. Until azd 1.23.13 (#7311) a negated line (`!x`)
  excluded what it matched too, and a UTF-8 BOM broke the first line: the checks below refuse both.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".funcignore"


def azd_restore_venv(project_dir: Path) -> str:
    """The venv `azd restore` creates in a Python service folder (pkg/tools/python VenvNameForDir)."""
    return Path(project_dir).name + "_env"


@dataclass(frozen=True)
class Pattern:
    line: str
    anchored: bool
    directory: bool
    kind: str  # name | path | any
    glob: str

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.directory and not is_dir:
            return False
        if self.kind == "name":
            return _fnmatch(self.glob, rel if self.anchored else rel.rsplit("/", 1)[-1], pathname=False)
        if self.kind == "path":
            return _fnmatch(self.glob, rel, pathname=True)
        return _match_any(rel.split("/"), self.glob.split("/"))


def parse(text: str) -> list[Pattern]:
    """The lines of an ignore file as go-gitignore reads them (the subset this repository may use)."""
    assert not text.startswith("\ufeff"), f"{IGNORE_FILE} starts with a BOM: azd < 1.23.13 misreads its first line"
    patterns = []
    for raw in text.splitlines():
        line = raw.rstrip(" \t\r")
        if not line or line.startswith("#"):
            continue
        assert line == line.lstrip(), f"{IGNORE_FILE} line {raw!r}: leading whitespace is part of the pattern"
        assert "\\" not in line, f"{IGNORE_FILE} line {raw!r}: escapes are not modelled here"
        assert not line.startswith("!"), (
            f"{IGNORE_FILE} line {raw!r}: azd before 1.23.13 excludes what a negated "
            "line matches, later ones include it"
        )
        body = line
        anchored, body = body.startswith("/"), body.lstrip("/")
        directory, body = body.endswith("/"), body.rstrip("/")
        parts = body.split("/")
        assert all(part == "**" or "**" not in part for part in parts), f"{line!r}: `**` inside a name"
        kind = "any" if "**" in parts else "path" if len(parts) > 1 else "name"
        patterns.append(Pattern(line, anchored, directory, kind, body))
    return patterns


class Ignorer:
    """go-gitignore's GitIgnore for one file: `absolute(path, is_dir)` is the last line that matches, or None."""

    def __init__(self, patterns: list[Pattern], base: str) -> None:
        self.patterns, self.base = patterns, base

    def absolute(self, path: str, is_dir: bool) -> Pattern | None:
        if not path.startswith(self.base):  # below a followed symlink: never matched
            return None
        rel = path[len(self.base) + 1 :]
        return next((p for p in reversed(self.patterns) if p.matches(rel, is_dir)), None)


def package_files(root: Path) -> set[str]:
    """The archive names `azd package` / `azd deploy` zip from the service folder `root` (a Python function)."""
    root = Path(root).resolve()
    ignore_path = root / IGNORE_FILE
    ignorer = Ignorer(parse(ignore_path.read_text(encoding="utf-8")), str(root)) if ignore_path.is_file() else None
    files: set[str] = set()

    def include(src: str, info: os.stat_result, name: str) -> bool:  # createDeployableZip's onZip
        is_dir = os.path.isdir(src) if os.path.islink(src) else _is_dir(info)
        if (name == ".azure" and is_dir) or (name in (IGNORE_FILE, "local.settings.json") and not is_dir):
            return False
        if ignorer is not None:
            return ignorer.absolute(src, is_dir) is None
        if is_dir and (os.path.exists(os.path.join(src, "pyvenv.cfg")) or name.lower() == "__pycache__"):
            return False
        return True

    def add_dir(dest: str, src: str, depth: int) -> None:  # rzip.addDir
        if depth > 40:
            return
        for name in sorted(os.listdir(src)):
            path = os.path.join(src, name)
            info = os.lstat(path)
            if not include(path, info, name):
                continue
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.isdir(target):
                    add_dir(f"{dest}{name}/", target, depth + 1)
                else:
                    files.add(dest + name)
            elif _is_dir(info):
                add_dir(f"{dest}{name}/", path, depth)
            else:
                files.add(dest + name)

    add_dir("", str(root), 0)
    return files


def _is_dir(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode)


def _match_any(path: list[str], tokens: list[str]) -> bool:
    if not tokens:
        return not path
    if tokens[0] == "**":
        return _match_any(path, tokens[1:]) or (bool(path) and _match_any(path[1:], tokens))
    return bool(path) and _fnmatch(tokens[0], path[0], pathname=True) and _match_any(path[1:], tokens[1:])


def _fnmatch(glob: str, text: str, *, pathname: bool) -> bool:
    """fnmatch(3) as github.com/danwakefield/fnmatch does it, without FNM_PERIOD: with FNM_PATHNAME, `*`, `?`
    and brackets do not match `/`."""
    any_char = "[^/]" if pathname else "."
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(any_char + "*")
        elif char == "?":
            out.append(any_char)
        elif char == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{'/' if negate and pathname else ''}{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.fullmatch("".join(out), text, re.DOTALL) is not None
