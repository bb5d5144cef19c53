"""Local OpenAI Responses API emulator (dev only, never deployed). Full reference: README.md here.

Start: ``python -m local.emulator [--host 127.0.0.1] [--port 7070] [--time-scale 1.0] [--db PATH]`` or
in-process ``async with EmulatorServer(port=0, time_scale=0.01) as emu`` /
``emu = EmulatorServer(port=0).start_in_thread(); ...; emu.stop()``; then
``openai.OpenAI(base_url=emu.base_url, api_key="any")``. Routes live under /v1, /openai/v1 and /openai.

Per-request knobs (``metadata`` string values; durations scaled by the time scale):
  emulator_duration_ms     created -> terminal (default 2000; 0 = create reply already completed)
  emulator_queue_ms        time in queued before in_progress (default 100)
  emulator_output_chars    exact output text length (default 200; works to 5,000,000+)
  emulator_deltas          number of output_text.delta events (default min(ceil(chars/8), 200))
  emulator_outcome         completed | failed (error.code=server_error) | incomplete (max_output_tokens)
  emulator_http_errors     "429:3" / "500:2" / "429:1,503:2": first N GETs of the response fail so
  emulator_retry_after_ms  retry-after-ms on those 429/503 (default 200, unscaled)
  emulator_stream_cut_after  cut every SSE connection of the response abruptly after k events
  emulator_first_byte_ms   delay before the first byte of every reply for the response (unscaled)
  emulator_function_call   function tool name(s) to call (like the input trigger call:<name>({json}))
  emulator_function_args   JSON arguments for emulator_function_call
Headers: ``x-emulator-fault: 429|500|503|<4xx/5xx>[:N]|drop`` (N = fail while x-stainless-retry-count < N),
``x-emulator-delay-ms: N``.
Global settings (EmulatorConfig; CLI --foo-bar, env EMULATOR_FOO_BAR, POST /v1/_emulator/config):
time_scale, default_*, resume_window_s, require_stream_for_resume, ttl_s, fault_429/500/503_rate,
stream_cut_rate, slow_first_byte_rate/_ms, retry_after_ms, seed, db, ... Introspection:
GET /v1/_emulator/stats, GET /v1/_emulator/responses[?metadata.k=v], POST /v1/_emulator/reset.
Chat Completions: POST /v1/chat/completions (stream or not, include_usage, tool_calls), knobs from the
``x-emulator-knobs: {json}`` header or from metadata (which, as on OpenAI, needs store=true).
``background_mode=false`` makes background: true a 400 (a Responses API without background mode).
Provider webhooks: register endpoints with ``client.webhooks.create(...)`` (/v1/webhook_endpoints) or Azure's
/openai/v1/dashboard/webhook_endpoints; background responses that end are POSTed to them as signed
``response.<status>`` events with retries (knobs webhook_delay_ms/_drop_rate/_duplicate_rate, metadata
emulator_webhook_delay_ms/_drop/_duplicate); GET /v1/_emulator/webhook_deliveries lists every delivery.
A live stream of a cancelled response ends cleanly without a terminal event (the real API has no
response.cancelled stream event).
Quotas (quotas.py): rpm_limit/tpm_limit/model_limits per model name with token estimates at admission, OpenAI's
x-ratelimit-* headers and retry-after(-ms) (ratelimit_headers=azure_responses: Azure's -1/0 and no retry-after),
quota_style=openai (rolling) | azure (fixed windows, RPM per 10 s), insufficient_quota; GET /v1/_emulator/quotas.
Several deployments (server.py): ``EmulatorServer(deployments={"ptu": {...}, "payg": {}})`` or ``--deployments``,
each its own port, store, quotas, faults and webhook secret; POST /v1/_emulator/deployments/{name}
{"outage": "refuse" | "503" | null, "for_s"} takes one down and up. Python helper: control.EmulatorControl.
"""

from .app import Emulator
from .config import EmulatorConfig
from .server import EmulatorServer

__all__ = ["Emulator", "EmulatorConfig", "EmulatorServer"]
