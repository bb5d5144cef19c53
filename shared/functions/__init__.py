"""The entry points, one module per thing served, each a Functions Blueprint registered in function_app.py.
They turn a trigger's input into one call of the collaborator they serve and nothing more, inside a telemetry
step (a span when telemetry is on, and one log line per step about a run).

Telemetry is set up here, when the worker indexes the app, before any invocation: from the settings, or not
at all (shared/telemetry/setup.py)."""

from .. import telemetry

telemetry.configure()
