"""The smoke test after `azd up` (infra/README.md), or against `make run`: the native API and the Responses API
facade, each run to its end, the facade's stream resumed exactly where it was dropped.

    SMOKE_FUNCTION_KEY=... SMOKE_API_KEY=... python -m infra.smoke https://<app> [--model DEPLOYMENT]
        [--webhook-url https://<request bin>]

SMOKE_FUNCTION_KEY: a function key for /api/runs (none with `make run`); SMOKE_API_KEY: a Responses API caller key
(RESPONSES_API_KEYS). Keys come from the environment, never the command line (other users see that in `ps`),
and are never printed. Steps, each one line, and the first failure ends it with exit code 1:
1. GET /api/health (anonymous) answers 200.
2. Native: POST /api/runs answers 202 with Location and Retry-After; GET Location, waiting as Retry-After says (at
   most 5 s), until the run completes.
3. Facade: a wrong key is refused (401); a background response is created streaming, the stream dropped after its
   first text delta; retrieve polls it to `completed`; the stream resumed with `starting_after` continues at the
   next sequence number without a gap, ends with `response.completed`, and the text from both parts is the
   response's.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from typing import Any

import httpx
import openai

TERMINAL = ("completed", "failed", "cancelled", "incomplete", "expired", "requires_action")
PROMPT = "Write two sentences about queues."


class SmokeFailure(Exception):
    pass


def check(condition: Any, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def ok(message: str) -> None:
    print(f"ok    {message}", flush=True)


def health(http: httpx.Client) -> None:
    response = http.get("/api/health")
    check(response.status_code == 200, f"GET /api/health answered {response.status_code}: {response.text[:300]}")
    ok("GET /api/health: 200")


def native_run(http: httpx.Client, function_key: str | None, webhook_url: str | None, timeout: float) -> None:
    headers = {"x-functions-key": function_key} if function_key else {}
    body: dict[str, Any] = {"input": PROMPT}
    if webhook_url:
        body["webhook_url"] = webhook_url
    created = http.post("/api/runs", json=body, headers=headers)
    check(created.status_code == 202, f"POST /api/runs answered {created.status_code}: {created.text[:300]}")
    location, retry_after = created.headers.get("location"), created.headers.get("retry-after")
    check(location and retry_after, f"POST /api/runs: 202 without Location or Retry-After: {dict(created.headers)}")
    ok(f"POST /api/runs: 202, Location: {location}, Retry-After: {retry_after}")
    started, run = time.monotonic(), created.json()
    while run.get("continuation_token") is not None:
        check(time.monotonic() - started < timeout, f"run {run['id']} still {run['status']} after {timeout:g} s")
        time.sleep(min(float(retry_after or 1), 5.0))
        polled = http.get(location, headers=headers)
        check(polled.status_code == 200, f"GET {location} answered {polled.status_code}: {polled.text[:300]}")
        run, retry_after = polled.json(), polled.headers.get("retry-after")
    check(run["status"] == "completed", f"run {run['id']} ended {run['status']}: {run.get('error')}")
    ok(
        f"GET {location}: completed after {time.monotonic() - started:.1f} s ({len(run.get('output_text') or '')} "
        "characters of output)" + (f"; the webhook went to {webhook_url}" if webhook_url else "")
    )


def facade_run(base_url: str, api_key: str, model: str, timeout: float) -> None:
    wrong = openai.OpenAI(base_url=f"{base_url}/api/v1", api_key=secrets.token_urlsafe(32), max_retries=0)
    try:
        wrong.responses.retrieve("resp_smoke")
        raise SmokeFailure("the Responses API accepted a random key")
    except openai.AuthenticationError:
        ok("Responses API: a wrong key is refused (401)")
    client = openai.OpenAI(base_url=f"{base_url}/api/v1", api_key=api_key, max_retries=2, timeout=60)
    stream = client.responses.create(model=model, input=PROMPT, background=True, stream=True)
    response_id, seen, text = None, -1, []
    for event in stream:
        response_id = response_id or getattr(getattr(event, "response", None), "id", None)
        seen = event.sequence_number
        if event.type == "response.output_text.delta":
            text.append(event.delta)
            break
        check(event.type not in ("response.completed", "response.failed"), f"ended before any text: {event.type}")
    stream.close()  # the client goes away mid-response
    check(response_id and text, "the stream carried no response id or no text delta")
    ok(f"Responses API: background + stream created {response_id}, dropped after event #{seen}")
    started = time.monotonic()
    response = client.responses.retrieve(response_id)
    while response.status in ("queued", "in_progress"):
        check(time.monotonic() - started < timeout, f"{response_id} still {response.status} after {timeout:g} s")
        time.sleep(1)
        response = client.responses.retrieve(response_id)
    check(response.status == "completed", f"{response_id} ended {response.status}: {response.error}")
    ok(f"Responses API: retrieve polled it to completed after {time.monotonic() - started:.1f} s")
    numbers, last = [], None
    for event in client.responses.retrieve(response_id, stream=True, starting_after=seen):
        numbers.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        last = event
    check(numbers and numbers[0] == seen + 1, f"the resumed stream starts at {numbers[:1]}, not #{seen + 1}")
    check(numbers == list(range(seen + 1, seen + 1 + len(numbers))), f"the resumed stream has gaps: {numbers}")
    check(last.type == "response.completed", f"the resumed stream ends with {last.type}")
    check("".join(text) == response.output_text, "the text of the dropped and the resumed stream is not the response's")
    ok(
        f"Responses API: resumed after #{seen}: events #{numbers[0]}-#{numbers[-1]}, ending response.completed, "
        "the text matches"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the app, e.g. $AZURE_FUNCTION_APP_URL or http://127.0.0.1:7071")
    parser.add_argument(
        "--model",
        default=os.environ.get("AZURE_OPENAI_DEPLOYMENT") or "gpt-4.1-mini",
        help="model (Azure: the deployment name; default $AZURE_OPENAI_DEPLOYMENT or gpt-4.1-mini)",
    )
    parser.add_argument("--webhook-url", help="a request bin that should receive the native run's signed webhook")
    parser.add_argument("--timeout", type=float, default=300, help="longest wait for each run (s)")
    args = parser.parse_args(argv)
    base_url, api_key = args.url.rstrip("/"), os.environ.get("SMOKE_API_KEY")
    if not api_key:
        parser.error("set SMOKE_API_KEY to a Responses API key (infra/README.md, 'Smoke test after azd up')")
    try:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            health(http)
            native_run(http, os.environ.get("SMOKE_FUNCTION_KEY"), args.webhook_url, args.timeout)
        facade_run(base_url, api_key, args.model, args.timeout)
    except (SmokeFailure, httpx.HTTPError, openai.OpenAIError) as error:
        print(f"FAIL  {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    print("smoke test passed", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
