"""Which module of the service imports which: `python -m tests.unit.module_graph` prints it.

Read from the source with `ast` (nothing is imported), for function_app.py and every module under shared/.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _is_module(name: str) -> bool:
    base = ROOT / Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of the service it imports, other modules it imports, dotted as written)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            if target.split(".")[0] in ("shared", "function_app"):
                ours.add(target)
            else:
                theirs.add(target)
    ours.discard(name)
    return ours, theirs


def graph() -> dict[str, tuple[set[str], set[str]]]:
    files = [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]
    return {_module_name(path): imports(path) for path in files}


if __name__ == "__main__":
    for module, (ours, _) in graph().items():
        print(f"{module} -> {', '.join(sorted(m.removeprefix('shared.') for m in ours)) or '-'}")
