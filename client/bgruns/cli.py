"""`bgruns`: the background-runs service from a terminal.

    bgruns run "Write a haiku"                  start a run, show a live status line, print the text
    bgruns run "Write a haiku" --stream         print the text as it is generated
    bgruns run "..." --no-wait                  print the run id and its token, return at once
    bgruns status RUN_ID                        the run (--json: the run object)
    bgruns cancel RUN_ID
    bgruns resume TOKEN                         stream from the token (any token works, see below)
    bgruns resume TOKEN --poll                  wait by polling instead, then print the text
    bgruns session new                          create a session (use it with run --session ID)
    bgruns session show ID

Service URL: --url or BGRUNS_URL (default http://127.0.0.1:7071); function key: --key or
BGRUNS_FUNCTION_KEY.

Tokens: every token names a run and a position in its stream. `resume` streams from that position:
a token printed after Ctrl-C during --stream continues exactly after the last text shown; the token
of a run object (run --no-wait, a polling run) is "before the first event", so `resume` replays the
run's stream from its start, i.e. prints the whole text. When the service cannot stream the run any
more (it falls back to the stored run), the final text is printed once it is finished.

Ctrl-C never cancels the run: it prints the command to resume and exits with 130. Exit codes: 0 the
run completed (or the command succeeded), 1 an API or connection error, 2 a usage error, 3 the run
ended failed, cancelled, incomplete, expired or requires_action, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, TextIO

from ._async_client import DEFAULT_BASE_URL
from ._sync_client import Client, RunStream
from .errors import APIConnectionError, APIError
from .types import Response

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RUN_NOT_COMPLETED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
RECONNECT_MAX_DELAY = 10.0


# -- terminal output ------------------------------------------------------------------------------------------
class StatusLine:
    """A live status line on stderr: redrawn in place (\\r) on a terminal, refreshed by a ticker so the
    elapsed time and countdown move; otherwise one plain line per change (logs, pipes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._render: Callable[[], str] | None = None
        self._visible = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def show(self, render: Callable[[], str]) -> None:
        if not self.tty:
            print(render(), file=self.stream, flush=True)
            return
        self._render = render
        self._draw()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="bgruns-status", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self._render is None or self._stop.is_set():
                return
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\x1b[K" + self._render()[:max(width, 20)])
            self.stream.flush()
            self._visible = True

    def clear(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        with self._lock:
            if self._visible:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._visible = False


class _DeferredInterrupt:
    """Ctrl-C inside `with deferred_interrupt():` is raised at the end of the block, so the text printed
    and the token remembered for `bgruns resume` never get out of step (no repeated, no lost text)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.installed = False

    def install(self) -> None:
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handler)
            self.installed = True

    def _handler(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self.install()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise KeyboardInterrupt


deferred_interrupt = _DeferredInterrupt()


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resume_hint(token: str | None, run_id: str | None) -> None:
    if token:
        err(f"The run goes on in the background. Resume with:\n  bgruns resume {token}")
    elif run_id:
        err(f"The run goes on in the background: bgruns status {run_id}")
    else:
        err("Interrupted before the service answered; a run may have started.")


def print_text(text: str) -> None:
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def finish(response: Response, *, as_json: bool, text_printed: bool, started: float) -> int:
    """Print the outcome of a finished run; the exit code."""
    if as_json:
        print(json.dumps(response.raw, indent=2), flush=True)
    elif not text_printed:
        print_text(response.text)
    elapsed = time.monotonic() - started
    if response.status == "completed":
        err(f"{response.run_id} completed in {elapsed:.1f}s")
        return EXIT_OK
    detail = (response.error or {}).get("message") or (response.raw.get("incomplete_details") or {}).get("reason")
    err(f"{response.run_id} {response.status}" + (f": {detail}" if detail else ""))
    if response.status == "requires_action" and not as_json:
        print(json.dumps(response.required_action, indent=2), flush=True)
    return EXIT_RUN_NOT_COMPLETED


# -- waiting and streaming ----------------------------------------------------------------------------------------
def wait_and_print(client: Client, response: Response, *, as_json: bool) -> int:
    started = time.monotonic()
    line = StatusLine()
    state: dict[str, Any] = {"status": response.status, "since": started, "next_at": None, "held": False, "note": ""}

    def render() -> str:
        now = time.monotonic()
        parts = [f"[{now - started:6.1f}s] {response.run_id} {state['status']} for {now - state['since']:.0f}s"]
        if state["note"]:
            parts.append(state["note"])
        elif state["held"]:  # a long poll: the service answers the moment the run changes
            parts.append("the service tells us when it changes")
        elif state["next_at"] is not None:
            parts.append(f"next poll in {max(0.0, state['next_at'] - now):.0f}s")
        return " - ".join(parts)

    def on_poll(current: Response, delay: float | None) -> None:
        if current.status != state["status"]:
            state["status"], state["since"] = current.status, time.monotonic()
        state["note"], state["held"] = "", delay == 0
        state["next_at"] = None if not delay else time.monotonic() + delay
        if delay is not None:
            line.show(render)

    current: Response | str = response
    failures = 0
    try:
        while True:
            try:
                final = client.wait(current, on_poll=on_poll)
                break
            except (APIConnectionError, APIError) as error:
                if isinstance(error, APIError) and error.status_code < 500:
                    raise
                failures += 1
                delay = min(RECONNECT_MAX_DELAY, 0.5 * 2 ** failures)
                state["note"] = f"connection problem ({type(error).__name__}); retrying in {delay:.0f}s"
                line.show(render)
                time.sleep(delay)
                current = response.run_id
    except KeyboardInterrupt:
        line.clear()
        err("\nInterrupted.")
        resume_hint(response.continuation_token, response.run_id)
        return EXIT_INTERRUPTED
    line.clear()
    return finish(final, as_json=as_json, text_printed=False, started=started)


def stream_and_print(client: Client, stream: RunStream, *, as_json: bool, token: str | None = None) -> int:
    started = time.monotonic()
    text_printed, ends_with_newline = False, True
    final: Response | None = None
    run_id: str | None = None
    failures, contacted = 0, False
    try:
        while True:
            try:
                deferred_interrupt.install()
                for update in stream:
                    with deferred_interrupt():  # print and remember the token as one step
                        if as_json:
                            print(json.dumps({"type": update.type, "sequence_number": update.sequence_number,
                                              "text": update.text, "status": update.status, "run_id": update.run_id,
                                              "continuation_token": update.continuation_token}), flush=True)
                        elif update.text:
                            sys.stdout.write(update.text)
                            sys.stdout.flush()
                            text_printed, ends_with_newline = True, update.text.endswith("\n")
                        token, run_id, failures = update.continuation_token or token, update.run_id or run_id, 0
                        contacted = True
                    if update.type == "run.created":
                        err(f"{update.run_id} started (streaming)")
                    if update.is_final:
                        final = update.response
                break
            except APIConnectionError as error:  # the client's own reconnects are exhausted; keep going
                if token is None or not contacted:
                    raise  # never reached the service in this command: a plain error, not an endless retry
                failures += 1
                delay = min(RECONNECT_MAX_DELAY, 0.5 * 2 ** failures)
                err(f"\n[connection lost ({type(error).__name__}); resuming in {delay:.0f}s - Ctrl-C to stop]")
                time.sleep(delay)
                stream = client.run(stream=True, options={"continuation_token": token})
    except KeyboardInterrupt:
        if text_printed and not ends_with_newline:
            sys.stdout.write("\n")
            sys.stdout.flush()
        err("\nInterrupted.")
        resume_hint(token, run_id)
        return EXIT_INTERRUPTED
    if text_printed and not ends_with_newline:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if final is None:
        err("error: the stream ended without a final run")
        return EXIT_ERROR
    if as_json:
        return _final_json_exit(final, started)
    return finish(final, as_json=False, text_printed=text_printed, started=started)


def _final_json_exit(final: Response, started: float) -> int:
    # With --json every update (including the final one) was printed as a JSON line already.
    if final.status == "completed":
        err(f"{final.run_id} completed in {time.monotonic() - started:.1f}s")
        return EXIT_OK
    err(f"{final.run_id} {final.status}")
    return EXIT_RUN_NOT_COMPLETED


# -- commands -------------------------------------------------------------------------------------------------------
def _metadata(pairs: list[str] | None) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _UsageError(f"--metadata expects key=value, got {pair!r}")
        metadata[key] = value
    return metadata


class _UsageError(Exception):
    pass


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    if args.stream and args.no_wait:
        raise _UsageError("--stream and --no-wait do not go together")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    options: dict[str, Any] = {"background": True}
    metadata = _metadata(args.metadata)
    if metadata:
        options["metadata"] = metadata
    for name, value in (("webhook_url", args.webhook), ("model", args.model), ("instructions", args.instructions)):
        if value is not None:
            options[name] = value
    if args.stream:
        return stream_and_print(client, client.run(prompt, session=args.session, stream=True, options=options),
                                as_json=args.json)
    try:
        response = client.run(prompt, session=args.session, options=options)
    except KeyboardInterrupt:
        err("\nInterrupted.")
        resume_hint(None, None)
        return EXIT_INTERRUPTED
    if args.no_wait:
        if args.json:
            print(json.dumps(response.raw, indent=2), flush=True)
        else:
            print(response.run_id, flush=True)
            if response.continuation_token:
                err(f"{response.status}; follow it with:\n  bgruns resume {response.continuation_token}")
            else:
                err(response.status)
        return EXIT_OK
    if response.is_terminal:
        return finish(response, as_json=args.json, text_printed=False, started=time.monotonic())
    err(f"{response.run_id} {response.status}")
    return wait_and_print(client, response, as_json=args.json)


def cmd_resume(client: Client, args: argparse.Namespace) -> int:
    token = args.token.strip()
    if args.poll:
        try:
            response = client.run(options={"continuation_token": token})
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if response.is_terminal:
            return finish(response, as_json=args.json, text_printed=False, started=time.monotonic())
        return wait_and_print(client, response, as_json=args.json)
    return stream_and_print(client, client.run(stream=True, options={"continuation_token": token}),
                            as_json=args.json, token=token)


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds") if epoch else "-"


def _timeline_lines(timeline: dict[str, Any], created_at: float | None) -> list[str]:
    """The run's recorded steps, one line each, with the time since the run was created."""
    polls = timeline.get("polls") or {}
    head = f"  timeline:  {polls.get('total', 0)} poll(s)"
    if polls.get("omitted"):
        head += f", the last {polls.get('shown')} shown"
    if timeline.get("provider_calls"):
        head += f", {timeline['provider_calls']} provider call(s)"
    if timeline.get("trace_id"):
        head += f", trace {timeline['trace_id']}"
    lines = [head]
    for entry in timeline.get("entries") or []:
        at = entry.get("at") or 0.0
        offset = f"+{at - created_at:7.1f}s" if created_at else _when(at)
        details = {k: v for k, v in entry.items() if k not in ("at", "type") and v is not None}
        lines.append(f"    {offset}  {entry.get('type', '?'):<18} " + " ".join(f"{k}={v}" for k, v in details.items()))
    if timeline.get("events_omitted"):
        lines.append(f"    ({timeline['events_omitted']} older event(s) not kept)")
    return lines


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    response = client.get(args.run_id, timeline=True)
    if args.json:
        print(json.dumps(response.raw, indent=2), flush=True)
        return EXIT_OK
    raw = response.raw
    lines = [f"{response.run_id}  {response.status}",
             f"  session:   {raw.get('session_id') or '-'}",
             f"  model:     {raw.get('model') or '-'}",
             f"  created:   {_when(raw.get('created_at'))}",
             f"  finished:  {_when(raw.get('completed_at'))}"]
    if raw.get("created_at") and raw.get("completed_at"):
        lines[-1] += f" (took {raw['completed_at'] - raw['created_at']:.1f}s)"
    if response.metadata:
        lines.append("  metadata:  " + ", ".join(f"{k}={v}" for k, v in response.metadata.items()))
    if response.error:
        lines.append(f"  error:     {response.error.get('message')}")
    if response.webhook:
        hook = response.webhook
        lines.append(f"  webhook:   {hook.get('state')} ({hook.get('attempts')} attempt(s)) {hook.get('url')}")
    if response.continuation_token:
        lines.append(f"  token:     {response.continuation_token}")
    if raw.get("timeline"):
        lines += _timeline_lines(raw["timeline"], raw.get("created_at"))
    print("\n".join(lines), flush=True)
    if response.is_terminal and response.text:
        print("", flush=True)
        print_text(response.text)
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    response = client.cancel(args.run_id)
    if args.json:
        print(json.dumps(response.raw, indent=2), flush=True)
    elif response.status == "cancelled":
        print(f"{response.run_id} cancelled", flush=True)
    else:
        print(f"{response.run_id} had already finished: {response.status}", flush=True)
    return EXIT_OK


def cmd_session(client: Client, args: argparse.Namespace) -> int:
    if args.session_command == "new":
        session = client.create_session()
        print(json.dumps(session.raw, indent=2) if args.json else session.id, flush=True)
    else:
        print(json.dumps(client.get_session(args.session_id).raw, indent=2), flush=True)
    return EXIT_OK


# -- the parser ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"service base URL (env BGRUNS_URL, default {DEFAULT_BASE_URL})")
    common.add_argument("--key", default=argparse.SUPPRESS, help="function key (env BGRUNS_FUNCTION_KEY)")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(prog="bgruns", parents=[common],
                                     description="Background runs from the terminal.",
                                     epilog="Ctrl-C never cancels a run; it prints `bgruns resume <token>`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common, json_flag], help="start a run and wait for (or stream) it")
    run.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    run.add_argument("--stream", action="store_true", help="print the text as it is generated")
    run.add_argument("--session", metavar="ID", help="run in this session (see `bgruns session new`)")
    run.add_argument("--webhook", metavar="URL", help="POST the finished run to this URL")
    run.add_argument("--no-wait", action="store_true", help="print the run id (and a token on stderr) and return")
    run.add_argument("--metadata", nargs="+", action="extend", metavar="K=V", help="metadata pairs")
    run.add_argument("--model")
    run.add_argument("--instructions")
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser("status", parents=[common, json_flag], help="show a run")
    status.add_argument("run_id")
    status.set_defaults(handler=cmd_status)

    cancel = sub.add_parser("cancel", parents=[common, json_flag], help="cancel a run")
    cancel.add_argument("run_id")
    cancel.set_defaults(handler=cmd_cancel)

    resume = sub.add_parser("resume", parents=[common, json_flag],
                            help="continue a run's stream from a token (or --poll until it finishes)")
    resume.add_argument("token")
    resume.add_argument("--poll", action="store_true", help="poll with a status line instead of streaming")
    resume.set_defaults(handler=cmd_resume)

    session = sub.add_parser("session", parents=[common], help="sessions")
    session_sub = session.add_subparsers(dest="session_command", required=True, metavar="ACTION")
    new = session_sub.add_parser("new", parents=[common, json_flag], help="create a session")
    new.set_defaults(handler=cmd_session)
    show = session_sub.add_parser("show", parents=[common], help="show a session and its runs")
    show.add_argument("session_id")
    show.set_defaults(handler=cmd_session)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = getattr(args, "url", None) or os.environ.get("BGRUNS_URL") or DEFAULT_BASE_URL
    key = getattr(args, "key", None) or os.environ.get("BGRUNS_FUNCTION_KEY") or None
    try:
        with Client(url, function_key=key) as client:
            return args.handler(client, args)
    except _UsageError as error:
        parser.error(str(error))
    except APIError as error:
        err(f"error: {error.message}" + (f" [{error.code}]" if error.code else "") +
            (f" (param: {error.param})" if error.param else ""))
        return EXIT_ERROR
    except APIConnectionError as error:
        err(f"error: cannot reach the service at {url}: {error}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("\nInterrupted.")
        return EXIT_INTERRUPTED
    return EXIT_ERROR  # not reached (parser.error exits)


if __name__ == "__main__":
    raise SystemExit(main())
