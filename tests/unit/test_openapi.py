"""The OpenAPI document stays true: its routes are exactly the app's HTTP routes, and its Run schema
names exactly the fields the service returns."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml

from shared.runs.model import Admission, Run
from shared.runs.tokens import TokenCodec
from shared.runs.views import RunViews

ROOT = Path(__file__).resolve().parents[2]


def documented_routes() -> set[tuple[str, str]]:
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return {(method.upper(), "/api" + path) for path, ops in spec["paths"].items() for method in ops}


def app_routes() -> set[tuple[str, str]]:
    sys.modules.pop("function_app", None)
    app = importlib.import_module("function_app").app
    routes = set()
    for function in app.get_functions():
        trigger = function.get_trigger()
        if trigger.get_binding_name() == "httpTrigger":
            for method in trigger.methods:
                routes.add((str(method.value if hasattr(method, "value") else method).upper(), "/api/" + trigger.route))
    return routes


def test_every_route_is_documented_and_every_documented_route_exists():
    assert documented_routes() == app_routes()


def test_the_run_schema_matches_the_run_view():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    documented = set(spec["components"]["schemas"]["Run"]["properties"])
    views = RunViews(TokenCodec(b"k" * 40), poll_initial_delay=1, poll_max_delay=10)
    run = Run(
        id="run_x",
        status="completed",
        created_at=1.0,
        model="m",
        request={},
        webhook_url="https://h/x",
        result={"output": [], "output_text": "", "error": None},
        admission=Admission(queued_at=1.0),
    )
    assert set(views.render(run, timeline=True)) == documented
    admission = spec["components"]["schemas"]["Run"]["properties"]["admission"]["properties"]
    assert set(views.render(run)["admission"]) == set(admission)
    assert set(views.render(run)) == documented - {"timeline"}  # only with ?include=timeline


def test_the_timeline_schema_names_every_entry_the_service_records():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    timeline = spec["components"]["schemas"]["Timeline"]
    documented_types = set(timeline["properties"]["entries"]["items"]["properties"]["type"]["enum"])
    source = "\n".join(p.read_text() for p in (ROOT / "shared").rglob("*.py"))
    import re

    recorded = set(re.findall(r'record\(run, "(\w+)"', source)) | set(re.findall(r'event="(\w+)"', source))
    recorded |= {"created", "finished", "poll", "webhook_attempt", "cancel_failed"}
    assert recorded <= documented_types, recorded - documented_types
    views = RunViews(TokenCodec(b"k" * 40), poll_initial_delay=1, poll_max_delay=10)
    run = Run(id="run_x", status="queued", created_at=1.0, model="m", request={})
    assert set(views.render(run, timeline=True)["timeline"]) == set(timeline["properties"])


async def test_the_run_summary_schema_matches_the_listed_runs():
    from shared.runs.listing import RunLister

    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    documented = set(spec["components"]["schemas"]["RunSummary"]["properties"])
    row = {"run_id": "run_x", "status": "completed", "created_at": 1.0, "RowKey": "k"}
    assert set(await RunLister(None, None)._summary(row)) == documented


def test_every_facade_route_is_tagged_and_secured_by_a_bearer_key():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    facade = [(path, op) for path, ops in spec["paths"].items() if "/responses" in path for op in ops.values()]
    assert len(facade) == 15
    assert all(op["tags"] == ["responses"] and {"bearerKey": []} in op["security"] for _, op in facade)
