"""The layers of the service, as its imports show them: entry points on top, the API layer beside them, the
composition root, the executor (runs the function app performs itself), the run's life below it, the provider and
the framework-free libraries at the bottom, the Responses vocabulary under everything; no cycles. One way to end a
run: only runs.ending calls the lifecycle's finish."""

from __future__ import annotations

import ast

from .module_graph import ROOT, graph

GRAPH = graph()
FRAMEWORKS = ("fastapi", "starlette", "azurefunctions", "azure.functions")
DOMAIN_AND_LIBRARIES = (
    "shared.executor",
    "shared.runs",
    "shared.provider",
    "shared.webhooks",
    "shared.clock",
    "shared.errors",
    "shared.retry_after",
    "shared.settings",
    "shared.storage",
    "shared.responses_vocabulary",
)


def _third_party(module: str) -> set[str]:
    return GRAPH[module][1]


def _ours(module: str) -> set[str]:
    return GRAPH[module][0]


def test_there_are_no_import_cycles():
    def visit(module: str, path: list[str]) -> None:
        assert module not in path, " -> ".join(path + [module])
        for dep in _ours(module):
            if dep in GRAPH:
                visit(dep, path + [module])

    for module in GRAPH:
        visit(module, [])


def test_the_run_domain_and_the_libraries_know_nothing_of_http_or_functions():
    for module in (m for m in GRAPH if m.startswith(DOMAIN_AND_LIBRARIES)):
        assert not {t for t in _third_party(module) if t.startswith(FRAMEWORKS)}, module
        assert not {
            d for d in _ours(module) if d.startswith(("shared.api", "shared.functions", "shared.composition"))
        }, module


def test_the_run_domain_knows_nothing_of_the_executor_and_the_provider_nothing_of_either():
    """The executor is built on the run's life (its runs end through runs.ending, its backend is a RunBackend); the
    run's life reaches it only through the RunBackend seam, and the provider is below both."""
    for module in GRAPH:
        if module.startswith(("shared.runs", "shared.provider")):
            assert not {d for d in _ours(module) if d.startswith("shared.executor")}, module
        if module.startswith("shared.provider"):
            assert not {d for d in _ours(module) if d.startswith("shared.runs")}, module


def test_the_responses_vocabulary_is_a_leaf():
    assert _ours("shared.responses_vocabulary") == set()


def test_the_webhooks_library_depends_only_on_leaf_helpers():
    for module in GRAPH:
        if module.startswith("shared.webhooks"):
            outside = {d for d in _ours(module) if not d.startswith("shared.webhooks")}
            assert outside <= {"shared.clock", "shared.retry_after"}, (module, outside)


def test_entry_points_do_not_import_each_other():
    entry_points = {m for m in GRAPH if m.startswith("shared.functions.") and m != "shared.functions.queue_messages"}
    for module in entry_points:
        assert not _ours(module) & entry_points, module


def test_function_app_only_wires_blueprints():
    assert {d.rpartition(".")[0] or d for d in _ours("function_app")} <= {"shared.functions"}


def test_telemetry_is_a_library_below_everything():
    """shared.telemetry knows nothing of the service (only the clock and the Responses vocabulary) nor of HTTP or
    Functions, so every layer can hook into it without a cycle."""
    for module in GRAPH:
        if module.startswith("shared.telemetry"):
            outside = {d for d in _ours(module) if not d.startswith("shared.telemetry")}
            assert outside <= {"shared.clock", "shared", "shared.responses_vocabulary"}, (module, outside)
            assert not {t for t in _third_party(module) if t.startswith(FRAMEWORKS)}, module


def test_only_runs_ending_ends_a_run():
    """Every path that ends a run goes through runs.ending (status, result, the deadline rule, the first webhook
    attempt); RunLifecycle.finish, the sticky save under it, is called nowhere else."""
    callers = set()
    for path in [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "finish"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "_lifecycle"
            ):
                callers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"shared/runs/ending.py"}
