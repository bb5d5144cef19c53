"""The `bgruns` CLI driven as a user would: under tmux (a real terminal: live status line, Ctrl-C,
resume), and with plain subprocesses (pipes, SIGINT) so the behaviour is covered without tmux too."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..stack import FUNCTION_KEY, KEY_HEADERS

RUN_ID = re.compile(r"\b(run_[0-9a-f]{24})\b")
RESUME = re.compile(r"bgruns resume (\S+)")
BIN = Path(sys.executable).parent


def run_text(base_url: str, run_id: str) -> dict:
    return httpx.get(f"{base_url}/api/runs/{run_id}", timeout=10, headers=KEY_HEADERS).json()


def wait_terminal(base_url: str, run_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (run := run_text(base_url, run_id))["continuation_token"] is not None:
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    return run


# -- under tmux ---------------------------------------------------------------------------------------------------
class Tmux:
    """One tmux server of our own (-L) with one 220-column bash window."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"bgruns-test-{os.getpid()}-{time.time_ns()}"
        self._tmux("new-session", "-d", "-s", "t", "-x", "220", "-y", "50", "bash --norc --noprofile")
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self.type(f"export {exports} PATH={shlex.quote(str(BIN))}:$PATH PS1='$ '; clear")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def type(self, command: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", command)
        self._tmux("send-keys", "-t", "t", "Enter")

    def ctrl_c(self) -> None:
        self._tmux("send-keys", "-t", "t", "C-c")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-200")

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.screen())
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not appear on the screen:\n{self.screen()}")
            time.sleep(0.1)

    def clear(self) -> None:
        self.type("clear")
        self._tmux("clear-history", "-t", "t")
        time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed (apt-get install -y tmux); test_cli_commands_as_subprocesses "
    "covers the same commands without a terminal",
)
def test_cli_in_a_terminal(stack, tmp_path):
    base = stack.host.base_url
    tmux = Tmux({"BGRUNS_URL": base, "BGRUNS_FUNCTION_KEY": FUNCTION_KEY})  # from the environment, as a user would
    try:
        # run: a live status line redrawn in place while waiting, then the text; the line is gone at the end
        tmux.type(
            "bgruns run 'Hello from tmux' --metadata emulator_duration_ms=2500 emulator_output_chars=120; echo EXIT=$?"
        )
        tmux.wait_for(r"\[\s*\d+\.\ds\] run_\w+ (queued|in_progress) for \d+s - the service tells us when it changes")
        tmux.wait_for(r"EXIT=\d+")
        screen = tmux.screen()
        run_id = RUN_ID.search(screen).group(1)
        run = run_text(base, run_id)
        assert "EXIT=0" in screen and run["status"] == "completed" and run["output_text"] in screen
        assert "tells us" not in screen  # the \r status line was erased, not left in the scrollback

        # run --stream, Ctrl-C after some text: exit 130 with the resume command; resume prints exactly the rest
        tmux.clear()
        tmux.type(
            f"bgruns run 'Stream to tmux' --stream --metadata emulator_duration_ms=4000 "
            f"emulator_output_chars=300 | tee -i {tmp_path}/part1.txt; echo EXIT=${{PIPESTATUS[0]}}"
        )
        tmux.wait_for(r"Emulated reply to \"Stream to tmux\"\. \w+ \w+")
        tmux.ctrl_c()
        tmux.wait_for(r"EXIT=\d+")
        screen = tmux.screen()
        assert "EXIT=130" in screen and "Interrupted." in screen, screen
        token = RESUME.search(screen).group(1)
        stream_run_id = RUN_ID.search(screen).group(1)
        tmux.clear()
        tmux.type(f"bgruns resume {token} | tee -i {tmp_path}/part2.txt; echo EXIT=${{PIPESTATUS[0]}}")
        tmux.wait_for(r"EXIT=\d+")
        assert "EXIT=0" in tmux.screen()
        final = run_text(base, stream_run_id)
        part1 = (tmp_path / "part1.txt").read_text().removesuffix("\n")
        part2 = (tmp_path / "part2.txt").read_text().removesuffix("\n")
        assert part1 and part2 and part1 + part2 == final["output_text"]

        # status of the finished run
        tmux.clear()
        tmux.type(f"bgruns status {stream_run_id}; echo EXIT=$?")
        tmux.wait_for(r"EXIT=\d+")
        screen = tmux.screen()
        assert f"{stream_run_id}  completed" in screen and "EXIT=0" in screen and final["output_text"] in screen

        # --no-wait, then cancel, then status shows it
        tmux.clear()
        tmux.type("bgruns run 'Cancel me' --no-wait --metadata emulator_duration_ms=30000; echo EXIT=$?")
        tmux.wait_for(r"EXIT=\d+")
        long_id = RUN_ID.search(tmux.screen()).group(1)
        tmux.clear()
        tmux.type(f"bgruns cancel {long_id}; bgruns status {long_id}; echo EXIT=$?")
        tmux.wait_for(r"EXIT=\d+")
        screen = tmux.screen()
        assert f"{long_id} cancelled" in screen and f"{long_id}  cancelled" in screen and "EXIT=0" in screen
        assert run_text(base, long_id)["status"] == "cancelled"

        # an API error: its message, exit 1
        tmux.clear()
        tmux.type("bgruns status run_000000000000000000000000; echo EXIT=$?")
        tmux.wait_for(r"EXIT=\d+")
        screen = tmux.screen()
        assert "error: run 'run_000000000000000000000000' was not found [not_found]" in screen and "EXIT=1" in screen
    finally:
        tmux.close()


# -- without a terminal ----------------------------------------------------------------------------------------------
def cli(*args: str, base_url: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "BGRUNS_URL": "http://127.0.0.1:9"}  # --url must win over the environment
    return subprocess.run(
        [sys.executable, "-m", "bgruns", *args, "--url", base_url, "--key", FUNCTION_KEY],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_cli_commands_as_subprocesses(stack):
    base = stack.host.base_url

    # run (not a TTY): plain status lines, no \r; the text on stdout
    done = cli(
        "run",
        "Hello from a pipe",
        "--metadata",
        "emulator_duration_ms=2000",
        "emulator_output_chars=120",
        base_url=base,
    )
    assert done.returncode == 0, done.stderr
    run_id = RUN_ID.search(done.stderr).group(1)
    assert done.stdout == run_text(base, run_id)["output_text"] + "\n"
    assert "\r" not in done.stderr and len(re.findall(r"the service tells us when it changes\n", done.stderr)) >= 1
    # Long polling: no "next poll in" guess, and the end is seen as the service sees it (its chain looks every 1-2 s)
    assert "next poll in" not in done.stderr
    assert float(re.search(r"completed in ([\d.]+)s", done.stderr).group(1)) < 6.0

    # run --stream interrupted by SIGINT after some text: 130, the token on stderr; resume prints the rest. The run
    # lasts 10 s so that the signal, sent after the first words, lands mid-stream even on a loaded machine.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bgruns",
            "--url",
            base,
            "--key",
            FUNCTION_KEY,
            "run",
            "Stream to a pipe",
            "--stream",
            "--metadata",
            "emulator_duration_ms=10000",
            "emulator_output_chars=300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    received = b""
    while received.count(b" ") < 8:  # some words of text have arrived
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, proc.stderr.read()
        received += chunk
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    stderr = stderr.decode()
    token = RESUME.search(stderr).group(1)
    part1 = (received + rest).decode().removesuffix("\n")
    resumed = cli("resume", token, base_url=base)
    assert resumed.returncode == 0, resumed.stderr
    stream_run_id = RUN_ID.search(stderr).group(1)
    final = run_text(base, stream_run_id)
    assert part1 + resumed.stdout.removesuffix("\n") == final["output_text"]

    # resume --poll with a run's polling token waits and prints the whole text
    started = cli(
        "run", "Poll me later", "--no-wait", "--json", "--metadata", "emulator_duration_ms=1500", base_url=base
    )
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["continuation_token"] and run["status"] in ("queued", "in_progress")
    polled = cli("resume", run["continuation_token"], "--poll", base_url=base)
    assert polled.returncode == 0 and polled.stdout == run_text(base, run["id"])["output_text"] + "\n"
    # the same polling token streamed: the whole text again (a run token is "before the first event")
    streamed = cli("resume", run["continuation_token"], base_url=base)
    assert streamed.returncode == 0 and streamed.stdout == polled.stdout

    # status, cancel
    status = cli("status", stream_run_id, base_url=base)
    assert status.returncode == 0 and f"{stream_run_id}  completed" in status.stdout
    assert final["output_text"] in status.stdout
    long_run = cli("run", "Cancel me", "--no-wait", "--metadata", "emulator_duration_ms=30000", base_url=base)
    long_id = long_run.stdout.strip()
    assert RUN_ID.fullmatch(long_id) and "bgruns resume " in long_run.stderr
    cancelled = cli("cancel", long_id, base_url=base)
    assert cancelled.returncode == 0 and cancelled.stdout == f"{long_id} cancelled\n"
    assert wait_terminal(base, long_id)["status"] == "cancelled"
    assert json.loads(cli("status", long_id, "--json", base_url=base).stdout)["status"] == "cancelled"

    # a session, and a second run in a busy session: the API's error message, exit 1
    session_id = cli("session", "new", base_url=base).stdout.strip()
    assert session_id.startswith("sess_")
    first = cli(
        "run", "one", "--session", session_id, "--no-wait", "--metadata", "emulator_duration_ms=5000", base_url=base
    )
    busy = cli("run", "two", "--session", session_id, base_url=base)
    assert first.returncode == 0 and busy.returncode == 1
    assert busy.stderr.startswith("error: ") and "[session_busy]" in busy.stderr
    cli("cancel", first.stdout.strip(), base_url=base)

    # errors: unknown run (exit 1 with the API's message), bad metadata (usage, exit 2), unreachable service
    missing = cli("status", "run_000000000000000000000000", base_url=base)
    assert missing.returncode == 1 and "was not found" in missing.stderr
    bad = cli("run", "x", "--metadata", "novalue", base_url=base)
    assert bad.returncode == 2 and "key=value" in bad.stderr
    down = subprocess.run(
        [sys.executable, "-m", "bgruns", "status", "run_x"],
        capture_output=True,
        text=True,
        env={**os.environ, "BGRUNS_URL": "http://127.0.0.1:9"},
        timeout=60,
    )
    assert down.returncode == 1 and "cannot reach the service at http://127.0.0.1:9" in down.stderr
