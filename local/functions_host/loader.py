"""Load function_app.py the way the Python worker does (v2 programming model) and describe its functions.

Worker rules reproduced (azure_functions_worker/loader.py `index_function_app` and functions.py):
- import the script by its stem, with the app folder on sys.path;
- exactly one module-level `azure.functions.FunctionRegister` instance, else a ValueError naming the problem;
- `get_functions()` is called once (a second call on the same app raises in azure-functions 1.26);
- every Python parameter must be a binding name (plus an optional `context`) and vice versa;
- importing `azurefunctions.extensions.http.fastapi` switches EVERY HTTP function of the app to the
  FastAPI request/response types (HTTP "v2"); mixing with func.HttpRequest is refused.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func

from .errors import StartupError

log = logging.getLogger("functions_host")

SUPPORTED_TRIGGERS = ("httpTrigger", "queueTrigger", "timerTrigger")


@dataclass
class FunctionSpec:
    name: str
    trigger_type: str
    trigger: Any
    user_function: Callable[..., Any]
    trigger_arg: str
    is_async: bool
    wants_context: bool
    directory: str
    extra_params: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # resolved trigger settings (queue name, schedule...)


@dataclass
class LoadedApp:
    module: Any
    app: Any
    functions: list[FunctionSpec]
    http_v2: bool  # True: the FastAPI extension types are in use (whole app)
    skipped: list[str]


def _describe_import_error(exc: BaseException, script: Path) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno})"
        # The user's own file is the most useful location when the failing frame is in a library.
        user = [f for f in frames if Path(f.filename).resolve() == script.resolve()]
        if user and user[-1] is not last:
            where += f", raised from {user[-1].filename}:{user[-1].lineno}"
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    return f"{detail}{where}"


def import_app_module(app_dir: Path, script_name: str = "function_app.py"):
    script = app_dir / script_name
    if not script.exists():
        raise StartupError(f"Could not find {script_name} in {app_dir} (the worker imports {script_name})")
    app_dir_str = str(app_dir)
    if app_dir_str not in sys.path:
        sys.path.insert(0, app_dir_str)
    module_name = script.stem
    sys.modules.pop(module_name, None)
    spec = importlib.util.spec_from_file_location(module_name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        raise StartupError(f"Error importing {script}: SystemExit({exc.code}) during import") from None
    except Exception as exc:  # noqa: BLE001 - any import-time failure is a start-up error
        sys.modules.pop(module_name, None)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise StartupError(f"Error importing {script}: {_describe_import_error(exc, script)}\n{tb}") from None
    return module


def find_function_register(module, script_name: str = "function_app.py"):
    found = None
    for attr in dir(module):
        value = getattr(module, attr, None)
        if isinstance(value, func.FunctionRegister):
            if found is not None and value is not found:
                raise StartupError(
                    f"More than one {type(found).__name__} or other top level function app instances are "
                    f"defined in {script_name} (worker: ValueError). Use one FunctionApp and "
                    f"app.register_functions(blueprint) for the others."
                )
            found = value
    if found is None:
        raise StartupError(
            f"Could not find top level function app instances in {script_name} "
            f"(create one module-level `app = func.FunctionApp()`)."
        )
    return found


def http_v2_enabled() -> bool:
    """The worker's rule: the web extension module was imported (ModuleTrackerMeta)."""
    if "azurefunctions.extensions.base" not in sys.modules:
        return False
    from azurefunctions.extensions.base import HttpV2FeatureChecker

    return bool(HttpV2FeatureChecker.http_v2_enabled())


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _type_hints(fn) -> dict:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolved forward references: fall back to raw annotations
        return dict(getattr(fn, "__annotations__", {}))


def _check_http_annotation(name: str, arg: str, annotation: Any, v2: bool) -> None:
    if annotation is inspect.Parameter.empty or not inspect.isclass(annotation):
        return
    if v2:
        if issubclass(annotation, func.HttpRequest):
            raise StartupError(
                f'cannot load the {name} function: {arg!r} binding type "httpTrigger" does not match its '
                f'Python annotation "{annotation.__name__}". This app imports azurefunctions.extensions.http.'
                f"fastapi, so EVERY HTTP function must take its Request (worker rule, azure-functions-python-"
                f"worker#1807)."
            )
    else:
        try:
            from starlette.requests import Request as StarletteRequest
        except ImportError:  # pragma: no cover
            return
        if issubclass(annotation, StarletteRequest):
            raise StartupError(
                f"cannot load the {name} function: {arg!r} is annotated with a FastAPI/Starlette Request but the "
                f"app does not import azurefunctions.extensions.http.fastapi (import Request from there)."
            )


def load_app(app_dir: Path, environ=None) -> LoadedApp:
    environ = os.environ if environ is None else environ
    script_name = environ.get("PYTHON_SCRIPT_FILE_NAME") or "function_app.py"
    module = import_app_module(app_dir, script_name)
    app = find_function_register(module, script_name)
    try:
        functions = app.get_functions()  # once: a second call raises in azure-functions 1.26
    except ValueError as exc:
        raise StartupError(f"Indexing {script_name} failed: {exc}") from None
    v2 = http_v2_enabled()
    specs: list[FunctionSpec] = []
    skipped: list[str] = []
    for fn in functions:
        name = fn.get_function_name()
        trigger = fn.get_trigger()
        trigger_type = trigger.get_binding_name() if hasattr(trigger, "get_binding_name") else trigger.type
        user = fn.get_user_function()
        target = inspect.unwrap(user)
        sig = inspect.signature(target)
        params = list(sig.parameters)
        bindings = [b for b in fn.get_bindings() if b.name != "$return"]
        bound = [b.name for b in bindings]
        declared = set(params) - {"context"}
        if declared - set(bound):
            raise StartupError(
                f"cannot load the {name} function: the following parameters are declared in Python but not "
                f"in the bindings: {sorted(declared - set(bound))!r}"
            )
        if set(bound) - set(params):
            raise StartupError(
                f"cannot load the {name} function: the following parameters are declared in the bindings but "
                f"not in Python: {sorted(set(bound) - set(params))!r}"
            )
        if environ.get(f"AzureWebJobs.{name}.Disabled", "").lower() in ("1", "true"):
            skipped.append(f"{name}: disabled by AzureWebJobs.{name}.Disabled")
            continue
        if trigger_type not in SUPPORTED_TRIGGERS:
            skipped.append(f"{name}: trigger type {trigger_type!r} is not supported by the local host")
            continue
        others = [b for b in bindings if b is not trigger]
        if others:
            kinds = sorted({b.get_binding_name() for b in others})
            skipped.append(f"{name}: bindings {kinds} are not supported by the local host (use the SDKs)")
            continue
        if trigger_type == "httpTrigger":
            hints = _type_hints(target)
            _check_http_annotation(name, trigger.name, hints.get(trigger.name, inspect.Parameter.empty), v2)
        specs.append(
            FunctionSpec(
                name=name,
                trigger_type=trigger_type,
                trigger=trigger,
                user_function=user,
                trigger_arg=trigger.name,
                is_async=inspect.iscoroutinefunction(target),
                wants_context="context" in params,
                directory=str(app_dir),
            )
        )
    return LoadedApp(module=module, app=app, functions=specs, http_v2=v2, skipped=skipped)
