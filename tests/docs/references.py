"""What the documents name must exist, and what they claim of a setting's default must be its default.

Checked in every document (tests/docs/markdown.py DOCUMENTS):
- **files**: `inline code` that is a path, a bare path in the prose, a Markdown link (relative to the document, as
  GitHub resolves it) and its `#anchor`; a path the repository ignores (.gitignore: `.local/`, `.venv`, ...) is one
  that a command creates, so it may be absent;
- **Python**: `path.py symbol` and `path.py::test` (the symbol defined in that file), `package.module.name` of the
  repository's packages, `Class.attribute` (a class of the repository, or one the code imports from a library),
  `function()`, and the module of every `python -m module`;
- **settings**: `UPPER_CASE_NAMES` (a setting of `shared.settings.declared_settings()`, or a variable the code,
  infra or Makefile reads), and `SETTING=value` in a sentence about defaults must say the default;
- **Make targets** of `make target`, in inline code and in shell blocks;
- **sections**: `see *Title*` / `see "Title"` and `<document>.md, "Title"` must name a heading (or a bold lead-in)
  there;
- **number lists** such as a webhook schedule (`0,5,300`) must be one the code holds.
"""

from __future__ import annotations

import ast
import builtins
import fnmatch
import functools
import importlib.util
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .markdown import REPO, Document

EXTENSIONS = (
    "py",
    "md",
    "json",
    "jsonl",
    "yaml",
    "yml",
    "toml",
    "txt",
    "bicep",
    "png",
    "html",
    "js",
    "css",
    "sh",
    "cfg",
    "ini",
    "sqlite",
    "log",
    "env",
)
PACKAGES = ("shared", "local", "bench", "tests", "infra")  # the repository's top-level Python packages
SOURCE_DIRS = ("shared", "local", "bench", "tests", "infra", "client")
SKIP_DIRS = {".git", "node_modules", ".venv", ".local", ".azurite", "mutants", "__pycache__", ".pytest_cache"}

SETTING_TOKEN = re.compile(
    r"(?<![\w$])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?:_\*)?|AzureWebJobs[A-Za-z_.]*)"
    r"(?:=([^\s`'\"]*))?"
)
PATH_AND_SYMBOL = re.compile(r"^(?P<path>[\w./-]+\.py)(?:::(?P<test>\w+)|\s+(?P<symbol>[A-Za-z_][\w.]*)(?:\(\))?)$")
DOTTED = re.compile(r"^(?P<dotted>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")
CALL = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)\((?:\w+(?:,\s*\w+)*)?\)$")  # `finish()`, `plan(a, b)`
PYTHON_M = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)")
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][\w-]*)")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
BARE_PATH = re.compile(r"(?<![\w/.:@-])((?:\.?[\w-]+/)+[\w.-]*?\w\.(?:" + "|".join(EXTENSIONS) + r"))\b(?![/\w])")
SEE_SECTION = re.compile(r"\bsee\s+(?:\*(?P<star>[^*]+)\*|\"(?P<quoted>[^\"]+)\")", re.I)
FILE_SECTION = re.compile(
    r"(?:\[[^\]]*\]\((?P<link>[^)#\s]+\.md)[^)]*\)|`?(?P<file>[\w./-]*[\w-]\.md)`?),\s+"
    r"\"(?P<title>[^\"]+)\""
)
NUMBER_LIST = re.compile(r"^(?P<numbers>\d+(?:,\d+)+)(?P<more>,(?:…|\.\.\.))?$")
DEFAULT_WORD = re.compile(r"\bdefaults?\b", re.I)
PLACEHOLDER = re.compile(r"(?:^|/)(?:[A-Z][A-Z_]+(?:/|$)|<[^>]*>|[\w-]*\.\.\.)")  # DIR/results.json, <app>, run_...
# Upper-case names the docs may use although no code of ours spells them, each with where it comes from.
OUTSIDE_NAMES = {"WORKER_OPEN_TELEMETRY_ENABLED": "a capability the Azure Functions Python worker reports to the host"}


@dataclass(frozen=True)
class Finding:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class Repository:
    """Indexes of the repository, built once, that the checks look names up in."""

    root = REPO

    @cached_property
    def files(self) -> set[str]:
        found = set()
        for path in self._walk(self.root):
            found.add(path.relative_to(self.root).as_posix())
        return found

    def _walk(self, folder: Path):
        for path in folder.iterdir():
            if path.name in SKIP_DIRS:
                continue
            if path.is_dir():
                yield path
                yield from self._walk(path)
            else:
                yield path

    @cached_property
    def basenames(self) -> set[str]:
        return {name.rsplit("/", 1)[-1] for name in self.files}

    @cached_property
    def ignored(self) -> list[str]:
        """.gitignore's patterns: what commands create (.local/, .venv, local.settings.json, ...)."""
        lines = (self.root / ".gitignore").read_text().splitlines()
        return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]

    def is_ignored(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        return any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern)
            for prefix in prefixes
            for pattern in self.ignored
        )

    def exists(self, path: str) -> bool:
        path = path.strip("/")
        if any(ch in path for ch in "*?["):
            return any(fnmatch.fnmatch(name, path) for name in self.files)
        return path in self.files

    @cached_property
    def make_targets(self) -> set[str]:
        text = (self.root / "Makefile").read_text()
        return {
            name for line in text.splitlines() if (m := re.match(r"^([\w .-]+):(?!=)", line)) for name in m[1].split()
        }

    @cached_property
    def settings(self) -> dict[str, object]:
        from shared.settings import declared_settings

        return {setting.name: setting for setting in declared_settings()}

    @cached_property
    def sources(self) -> dict[str, str]:
        """Text of the Python, Bicep, JSON, YAML and TOML files and the Makefile (not lock files, test data or these
        checks, whose examples name what does not exist)."""
        wanted = (".py", ".bicep", ".json", ".yaml", ".yml", ".toml")
        texts = {}
        for name in self.files:
            if (
                (name.endswith(wanted) or name == "Makefile")
                and not name.endswith("-lock.json")
                and not name.startswith("tests/docs/")
                and (self.root / name).stat().st_size < 200_000
            ):
                texts[name] = (self.root / name).read_text(encoding="utf-8", errors="replace")
        return texts

    @cached_property
    def variables(self) -> set[str]:
        """Every UPPER_CASE name the code, the infra or the Makefile spells (environment variables, azd's)."""
        names = set()
        for text in self.sources.values():
            names |= set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))
            names |= set(re.findall(r"\bAzureWebJobs[\w.]*", text))
        return names

    @cached_property
    def string_constants(self) -> set[str]:
        return {m for text in self.sources.values() for m in re.findall(r"[\"']([^\"'\n]{1,200})[\"']", text)}

    @cached_property
    def python_files(self) -> list[str]:
        return sorted(
            name
            for name in self.sources
            if name.endswith(".py") and (name.split("/", 1)[0] in SOURCE_DIRS or "/" not in name)
        )

    @cached_property
    def _trees(self) -> dict[str, ast.Module | None]:
        return {}

    def tree(self, path: str) -> ast.Module | None:
        if path not in self._trees:
            try:
                self._trees[path] = ast.parse(self.sources.get(path) or (self.root / path).read_text(encoding="utf-8"))
            except (OSError, SyntaxError):
                self._trees[path] = None
        return self._trees[path]

    # An index by regular expression (parsing every file would take seconds); a file is parsed when a name in it
    # is looked at.
    @cached_property
    def class_files(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for path in self.python_files:
            for name in re.findall(r"^\s*class\s+(\w+)", self.sources[path], re.M):
                found.setdefault(name, []).append(path)
        return found

    def classes(self, name: str) -> list[tuple[str, ast.ClassDef]]:
        return [
            (path, node)
            for path in self.class_files.get(name, ())
            for node in ast.walk(self.tree(path) or ast.Module([], []))
            if isinstance(node, ast.ClassDef) and node.name == name
        ]

    @cached_property
    def functions(self) -> set[str]:
        return {
            name
            for path in self.python_files
            for name in re.findall(r"^\s*(?:async\s+)?def\s+(\w+)", self.sources[path], re.M)
        }

    @cached_property
    def imported_from_libraries(self) -> set[str]:
        """Names the code imports from outside the repository (`from openai import OpenAI`: OpenAI)."""
        names = set()
        pattern = re.compile(r"^\s*from\s+([A-Za-z_][\w.]*)\s+import\s+\(?([\w\s,]+)", re.M)
        for path in self.python_files:
            for module, imported in pattern.findall(self.sources[path]):
                if module.split(".")[0] not in PACKAGES:
                    names |= {part.split()[-1] for part in imported.split(",") if part.strip()}
        return names

    def knows_function(self, name: str) -> bool:
        """Defined in the repository, imported from a library, called by the code, or a builtin."""
        return (
            name in self.functions
            or name in self.imported_from_libraries
            or name in dir(builtins)
            or any(re.search(rf"\.{name}\(", text) for text in self.sources.values())
        )

    # -- modules and their names ------------------------------------------------------------------------------------
    def module_file(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in self.files:
                return candidate
        return None

    def runnable_module(self, module: str) -> bool:
        """`python -m module` would find it: a module of the repository (a package needs __main__.py), or an
        installed one."""
        if module.split(".")[0] in PACKAGES or module.split(".")[0] == "bgruns":
            base = module.replace(".", "/")
            if module.split(".")[0] == "bgruns":
                base = "client/" + base
            return f"{base}.py" in self.files or f"{base}/__main__.py" in self.files
        return importlib.util.find_spec(module.split(".")[0]) is not None

    def defines(self, path: str, dotted: str, depth: int = 0) -> bool:
        """Whether the module at `path` defines `dotted` (`name`, `Class.attribute`), following re-exports."""
        tree = self.tree(path)
        if tree is None or depth > 5:
            return False
        first, _, rest = dotted.partition(".")
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == first:
                return not rest or (isinstance(node, ast.ClassDef) and self.has_attribute(path, node, rest))
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == first for t in targets):
                    return True
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == first:
                        source = self._imported_module(path, node)
                        if source is None:
                            return True  # from a library: not ours to check
                        target = self.module_file(source)
                        if target is None:  # `from . import module`
                            target = self.module_file(f"{source}.{alias.name}")
                            return target is not None and (not rest or self.defines(target, rest, depth + 1))
                        return self.defines(target, f"{alias.name}{'.' + rest if rest else ''}", depth + 1)
            if isinstance(node, ast.Import):
                if any((alias.asname or alias.name).split(".")[0] == first for alias in node.names):
                    return True
        submodule = self.module_file(self._module_name(path) + "." + first) if path.endswith("__init__.py") else None
        return submodule is not None and (not rest or self.defines(submodule, rest, depth + 1))

    def has_attribute(self, path: str, cls: ast.ClassDef, dotted: str) -> bool:
        name, _, rest = dotted.partition(".")
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                return not rest or (isinstance(node, ast.ClassDef) and self.has_attribute(path, node, rest))
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return True
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return True
        for sub in ast.walk(cls):  # self.name = ... in a method
            if (
                isinstance(sub, ast.Attribute)
                and isinstance(sub.ctx, ast.Store)
                and sub.attr == name
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "self"
            ):
                return True
        for base in cls.bases:  # inherited: from a class of ours, or from a library (not ours to check)
            base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if base_name not in self.class_files:
                return True
            if any(self.has_attribute(p, c, dotted) for p, c in self.classes(base_name) if c is not cls):
                return True
        return False

    def _module_name(self, path: str) -> str:
        return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")

    def _imported_module(self, path: str, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module if node.module and node.module.split(".")[0] in PACKAGES else None
        package = self._module_name(path).split(".")
        if not path.endswith("__init__.py"):
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        return ".".join(package + ([node.module] if node.module else []))


# -- the checks ------------------------------------------------------------------------------------------------------
def check_document(doc: Document, repo: Repository) -> list[Finding]:
    findings: list[Finding] = []
    said: set[tuple[int, str]] = set()

    def add(line: int, message: str) -> None:  # a reference over two lines is seen twice: said once
        if (line - 1, message) not in said and (line, message) not in said:
            findings.append(Finding(f"{doc.path}:{line}", message))
        said.add((line, message))

    for line, token in doc.inline_code():
        _check_token(doc, repo, line, token, add)
    for line, text in doc.prose_without_code():
        for match in BARE_PATH.finditer(text):
            _check_path(doc, repo, line, match[1], add)
    for line, text in enumerate(doc.prose_lines, start=1):
        for match in LINK.finditer(text):
            _check_link(doc, repo, line, match["target"], add)
    _check_sections(doc, repo, add)
    _check_default_claims(doc, repo, add)
    for block in doc.blocks:
        if block.lang in ("bash", "sh", "shell", "console"):
            for n, code_line in enumerate(block.code.splitlines(), start=block.line + 1):
                for target in MAKE.findall(code_line):
                    if target not in repo.make_targets:
                        add(n, f"`make {target}`: the Makefile has no target {target!r}")
                for name, _ in SETTING_TOKEN.findall(code_line.split("#", 1)[0]):
                    _check_setting_name(repo, n, name, add)
        for n, code_line in enumerate(block.code.splitlines(), start=block.line + 1):
            for module in PYTHON_M.findall(code_line):
                if not repo.runnable_module(module):
                    add(n, f"`python -m {module}`: no such module")
    return findings


def _check_token(doc: Document, repo: Repository, line: int, token: str, add) -> None:
    for module in PYTHON_M.findall(token):
        if not repo.runnable_module(module):
            add(line, f"`python -m {module}`: no such module")
    for target in MAKE.findall(token):
        if target not in repo.make_targets:
            add(line, f"`make {target}`: the Makefile has no target {target!r}")
    for name, _value in SETTING_TOKEN.findall(token):
        _check_setting_name(repo, line, name, add)
    if (numbers := NUMBER_LIST.match(token)) and not _known_list(repo, numbers["numbers"], bool(numbers["more"])):
        add(line, f"`{token}`: no setting default or code holds this list")
    if token.startswith(("/", "http:", "https:")) or (" " in token and not PATH_AND_SYMBOL.match(token)):
        return
    if (match := PATH_AND_SYMBOL.match(token)) and not PLACEHOLDER.search(match["path"]):
        path = _resolve(doc, repo, match["path"])
        if path is None:
            add(line, f"`{token}`: there is no file {match['path']}")
        elif match["test"] and not repo.defines(path, match["test"]):
            add(line, f"`{token}`: {path} has no {match['test']}")
        elif match["symbol"] and not repo.defines(path, match["symbol"]):
            add(line, f"`{token}`: {path} defines no {match['symbol']}")
        return
    if _looks_like_path(doc, repo, token):
        _check_path(doc, repo, line, token, add)
        return
    if match := DOTTED.match(token):
        _check_dotted(repo, line, match["dotted"], add)
    elif (match := CALL.match(token)) and not repo.knows_function(match["name"]):
        add(line, f"`{token}`: no function {match['name']} in the repository")


def _looks_like_path(doc: Document, repo: Repository, token: str) -> bool:
    token = token.split("::", 1)[0]
    if not re.fullmatch(r"[\w.*{},/<>-]+", token) or token.startswith("-"):
        return False
    if re.fullmatch(r"\.\w+", token) and token[1:] in EXTENSIONS:
        return False  # `.json`: an extension
    if re.search(r"\.(?:" + "|".join(EXTENSIONS) + r")$", token) or re.search(r"\.\{[\w,]+\}$", token):
        return True
    if "/" in token:
        first = token.strip("/").split("/", 1)[0]
        return any(repo.exists(f"{base}{first}") or repo.is_ignored(first) for base in _bases(doc))
    return False


def _bases(doc: Document) -> list[str]:
    """Where a path in a document may be relative to: the repository, the document's folder and its parents."""
    bases, folder = [""], doc.directory
    while str(folder) not in ("", "."):
        bases.append(folder.as_posix() + "/")
        folder = folder.parent
    return bases


def _expand(path: str) -> list[str]:
    """`results.{json,md}`: both."""
    match = re.search(r"\{([^{}]+)\}", path)
    if not match:
        return [path]
    return [
        alt for choice in match[1].split(",") for alt in _expand(path[: match.start()] + choice + path[match.end() :])
    ]


def _resolve(doc: Document, repo: Repository, path: str) -> str | None:
    path = path.split("::", 1)[0]
    for base in _bases(doc):
        candidate = (base + path.lstrip("/")).replace("/./", "/")
        if repo.exists(candidate):
            return candidate
    return None


def _check_path(doc: Document, repo: Repository, line: int, token: str, add) -> None:
    if PLACEHOLDER.search(token):
        return  # a placeholder (`<app>`, `DIR/results.json`, `run_...`)
    for path in _expand(token.split("::", 1)[0]):
        if repo.is_ignored(path):
            continue
        if "/" not in path.strip("/"):
            if (
                path.strip("/") not in repo.basenames
                and not repo.exists(path)
                and not any(fnmatch.fnmatch(name, path) for name in repo.basenames)
            ):
                add(line, f"`{token}`: no file named {path} in the repository")
        elif _resolve(doc, repo, path) is None and _ours(doc, repo, path):
            add(line, f"`{token}`: there is no {path}")


def _ours(doc: Document, repo: Repository, path: str) -> bool:
    """A path that starts in one of our folders (another package's file, `azure_functions_worker/http_v2.py`, is
    not ours to check)."""
    first = path.strip("/").split("/", 1)[0]
    return any(
        repo.exists(base + first) or any(name.startswith(base + first + "/") for name in repo.files)
        for base in _bases(doc)
    )


def _check_link(doc: Document, repo: Repository, line: int, target: str, add) -> None:
    if re.match(r"^[a-z][a-z+.-]*:", target):
        return  # https:, mailto:
    path, _, anchor = target.partition("#")
    if path:
        normalised = _normalise((doc.directory / path).as_posix())
        if normalised is None or not (
            repo.exists(normalised)
            or repo.exists(normalised + "/")
            or any(name.startswith(normalised + "/") for name in repo.files)
        ):
            add(line, f"link ({target}): no {path} relative to {doc.directory.as_posix() or 'the repository root'}")
            return
        if anchor and normalised.endswith(".md"):
            if anchor not in _document(normalised).anchors:
                add(line, f"link ({target}): {normalised} has no heading #{anchor}")
    elif anchor and anchor not in doc.anchors:
        add(line, f"link (#{anchor}): no such heading in {doc.path}")


def _normalise(path: str) -> str | None:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _check_dotted(repo: Repository, line: int, dotted: str, add) -> None:
    first = dotted.split(".", 1)[0]
    if first in PACKAGES:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            path = repo.module_file(".".join(parts[:n]))
            if path is not None:
                rest = ".".join(parts[n:])
                if rest and not repo.defines(path, rest):
                    add(line, f"`{dotted}`: {path} defines no {rest}")
                return
        add(line, f"`{dotted}`: no such module in the repository")
    elif re.fullmatch(r"[A-Z][a-z]\w*", first):
        rest = dotted.split(".", 1)[1]
        if first in repo.class_files:
            if not any(repo.has_attribute(path, cls, rest) for path, cls in repo.classes(first)):
                add(line, f"`{dotted}`: class {first} has no {rest}")
        elif first not in repo.imported_from_libraries:
            add(line, f"`{dotted}`: no class {first} in the repository (nor one it imports)")


def _check_setting_name(repo: Repository, line: int, name: str, add) -> None:
    if name.endswith("_*"):  # OTEL_EXPORTER_OTLP_*: a family
        if any(known.startswith(name[:-1]) for known in (*repo.settings, *repo.variables)):
            return
    if name in repo.settings or name in repo.variables or name in OUTSIDE_NAMES:
        return
    add(line, f"`{name}`: neither a setting (shared.settings.declared_settings()) nor a variable the code reads")


def _known_list(repo: Repository, numbers: str, prefix: bool) -> bool:
    values = set(repo.string_constants) | {str(s.default) for s in repo.settings.values() if s.default is not None}
    return any(value == numbers or (prefix and value.startswith(numbers + ",")) for value in values)


def _check_sections(doc: Document, repo: Repository, add) -> None:
    for line, text in enumerate(doc.prose_lines, start=1):
        for match in SEE_SECTION.finditer(text):
            title = match["star"] or match["quoted"]
            if "<" not in title and not has_section(doc, title):
                add(line, f"see {title!r}: {doc.path} has no such section")
    for line, text in _paragraph_lines(doc):
        for match in FILE_SECTION.finditer(text):
            name = match["link"] or match["file"]
            if match["link"]:
                path = _normalise((doc.directory / name).as_posix())
            else:
                path = _resolve(doc, repo, name)
            if path is None or not repo.exists(path):
                add(line, f"{name}, {match['title']!r}: no such file")
            elif not has_section(_document(path), match["title"]):
                add(line, f"{name}, {match['title']!r}: {path} has no such section")


def has_section(doc: Document, title: str) -> bool:
    """A heading, or a paragraph's bold lead-in (`**Poll chain** (...)`), that contains the title."""

    def words(text: str) -> str:
        return " ".join(text.replace("`", "").lower().split())

    lead_ins = [m[1] for line in doc.prose_lines if (m := re.match(r"^\*\*([^*]+)\*\*", line.strip()))]
    return any(words(title) in words(heading) for heading in doc.headings + lead_ins)


def _paragraph_lines(doc: Document) -> list[tuple[int, str]]:
    """Each prose line joined with the next, so that a reference broken over two lines is seen whole."""
    lines = doc.prose_lines
    return [(n, lines[n - 1] + " " + (lines[n] if n < len(lines) else "")) for n in range(1, len(lines) + 1)]


def _check_default_claims(doc: Document, repo: Repository, add) -> None:
    """`SETTING=value` (or `SETTING` = value) in a sentence that speaks of defaults must give the default."""
    paragraphs, start, current = [], 1, []
    for n, text in enumerate(doc.prose_lines, start=1):
        if text.strip():
            if not current:
                start = n
            current.append(text)
        elif current:
            paragraphs.append((start, " ".join(current)))
            current = []
    if current:
        paragraphs.append((start, " ".join(current)))
    claim = re.compile(r"`(?P<name>[A-Z][A-Z0-9_]+)(?:=(?P<v1>[^`\s]+)`|`\s*=\s*(?P<v2>[\d.]+))")
    for start, paragraph in paragraphs:
        for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z(*`])", paragraph):
            if not DEFAULT_WORD.search(sentence):
                continue
            for match in claim.finditer(sentence):
                setting = repo.settings.get(match["name"])
                value = match["v1"] or match["v2"]
                if setting is None or setting.default is None or _same(value, str(setting.default)):
                    continue
                add(
                    start,
                    f"{match['name']}={value} in a sentence about defaults: the default is "
                    f"{setting.default!r} (shared/settings.py)",
                )


def _same(value: str, default: str) -> bool:
    try:
        return float(value) == float(default)
    except ValueError:
        return value == default


@functools.cache
def _document(path: str) -> Document:
    return Document.read(REPO / path)


def check_all(docs: list[Document]) -> list[Finding]:
    repo = Repository()
    return [finding for doc in docs for finding in check_document(doc, repo)]


def section_references_in_code(repo: Repository) -> list[Finding]:
    """`README.md, "Two commands"` in the code (a docstring, an error message) must name a section that exists."""
    findings = []
    for name, text in sorted(repo.sources.items()):
        for match in re.finditer(r"(?P<file>[\w./-]*[\w-]\.md),\s+\\?\"(?P<title>[^\"\\]+)\\?\"", text):
            line = text.count("\n", 0, match.start()) + 1
            if PLACEHOLDER.search(match["file"]):
                continue
            target = _resolve(Document(Path(name), ""), repo, match["file"])
            if target is None:
                findings.append(Finding(f"{name}:{line}", f"{match['file']}: no such document"))
            elif not has_section(_document(target), match["title"]):
                findings.append(Finding(f"{name}:{line}", f"{target} has no section {match['title']!r}"))
    return findings
