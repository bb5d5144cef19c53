"""`make run`: the whole local stack on fixed ports, configured from the developer's environment. Dev-only.

    python -m local.make_run [--fresh]

Fixed ports (Azurite 10000-10002, emulator 7070, host 7071, receiver 7072), `func start` instead of the local
host when Azure Functions Core Tools is on PATH, logs in .local/. Ctrl-C stops everything.

What the app gets (`plan()`, which starts nothing, so it is unit-tested):
- **The environment wins**, as with Core Tools (the environment over local.settings.json): a setting exported
  in the shell (`RESPONSES_API_KEYS=... make run`) replaces the one make run would choose. make run's own
  choices are dev secrets, generated once into .local/secrets.env (ignored by git) so tokens and keys survive
  restarts, and a few local defaults. Only the wiring between the processes it starts (AzureWebJobsStorage,
  EMULATOR_BASE_URL) is its own. An empty value counts as unset, as it does for the service.
- **Completion**: push only where the provider can reach the app, which locally is the emulator (it sends signed
  provider webhooks to /api/provider/webhooks). OpenAI and Azure OpenAI cannot reach 127.0.0.1, so with a real
  provider the app watches (it holds each response's stream and ends the run at its terminal event: as fast as
  push, fewer provider calls than polling, and the instance it holds is your own machine), or polls for runs the
  app executes itself (their end is known without asking the provider; the chain is only their watchdog). A
  COMPLETION_STRATEGY or PROVIDER_WEBHOOK_SECRETS you export is used as it is.
- **The banner** says which provider answers (loudly when it is a real, billed one), how runs end, which key the
  Responses API takes (yours, or the generated one and where it is stored) and which settings came from you.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from local.azurite import REPO_ROOT, Azurite, connection_string
from local.stack import LocalStack, Ports, _stop_process, new_webhook_secrets
from shared.settings import Settings, SettingsError

LOCAL_DIR = REPO_ROOT / ".local"
SECRETS_FILE = LOCAL_DIR / "secrets.env"
RUN_PORTS = Ports(blob=10000, queue=10001, table=10002, emulator=7070, host=7071, receiver=7072)
# Settings that wire the processes make run starts to each other: never taken from the environment.
WIRING = ("AzureWebJobsStorage", "EMULATOR_BASE_URL")
BILLED_PROVIDERS = ("openai", "azure_openai")


# -- dev secrets ---------------------------------------------------------------------------------------------------
def _new_dev_secrets() -> dict[str, str]:
    return {
        "RUN_TOKEN_KEY": secrets.token_urlsafe(48),
        "WEBHOOK_SIGNING_SECRETS": new_webhook_secrets(1)[0],
        # The Responses API facade's one local caller, an operator (sees every run, also the native API's).
        "RESPONSES_API_KEYS": f"dev:{secrets.token_urlsafe(32)}:operator",
        # The emulator's webhook endpoint for the app (push, as with a registered provider).
        "PROVIDER_WEBHOOK_SECRETS": new_webhook_secrets(1)[0],
    }


def dev_secrets(path: Path = SECRETS_FILE) -> dict[str, str]:
    """Random dev-only secrets, made once and kept so tokens and keys survive restarts of the stack; a secret
    added since the file was written is appended to it."""
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    kept = dict(pairs)
    missing = {key: value for key, value in _new_dev_secrets().items() if key not in kept}
    if missing:
        with path.open("a") as file:
            file.writelines(f"{key}={value}\n" for key, value in missing.items())
    return {**kept, **missing}


# -- what the app gets ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """What `make run` passes to the app, and what the banner says about it."""

    env: dict[str, str]  # service settings on top of the stack's wiring (LocalStack env=)
    webhook_secrets: tuple[str, ...]  # what the app signs with, so what the receiver verifies with
    emulator_push_secret: str | None  # the emulator pushes provider webhooks signed with this (None: it does not)
    from_user: tuple[str, ...]  # settings taken from the environment instead of make run's own
    settings: Settings  # what the service makes of it all (provider, backend, strategy)

    @property
    def provider(self) -> str:
        return self.settings.provider.kind

    @property
    def strategy(self) -> str:
        return self.settings.completion.strategy


def _set(environ: Mapping[str, str], name: str) -> str | None:
    value = (environ.get(name) or "").strip()
    return value or None


def plan(environ: Mapping[str, str], dev: Mapping[str, str], ports: Ports = RUN_PORTS) -> RunPlan:
    """The app's settings for `make run` from the developer's environment and the dev secrets (starts nothing).

    Raises SettingsError, naming the setting, when the service would refuse the result."""
    own = {  # make run's own choices; an exported value wins over each
        "RUN_TOKEN_KEY": dev["RUN_TOKEN_KEY"],
        "WEBHOOK_SIGNING_SECRETS": dev["WEBHOOK_SIGNING_SECRETS"],
        "RESPONSES_API_KEYS": dev["RESPONSES_API_KEYS"],
        "SWEEP_SCHEDULE": "*/30 * * * * *",
        # The receiver runs on loopback over plain http.
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        # Empty: the service infers them (MODEL_PROVIDER from the provider settings present, RUN_BACKEND from it).
        "MODEL_PROVIDER": "",
        "RUN_BACKEND": "",
    }
    user = {
        name: value
        for name in (*own, "COMPLETION_STRATEGY", "PROVIDER_WEBHOOK_SECRETS")
        if name not in WIRING and (value := _set(environ, name)) is not None
    }
    env = {**own, **user}
    wiring = {
        "AzureWebJobsStorage": connection_string(ports.blob, ports.queue, ports.table),
        "EMULATOR_BASE_URL": f"http://127.0.0.1:{ports.emulator}/v1",
    }
    # The host inherits the environment, with make run's settings on top: resolve exactly that.
    first = Settings.from_env({**environ, **env, **wiring, "COMPLETION_STRATEGY": "", "PROVIDER_WEBHOOK_SECRETS": ""})
    strategy, provider_secrets = _completion(first, user, dev)
    env.update(COMPLETION_STRATEGY=strategy, PROVIDER_WEBHOOK_SECRETS=provider_secrets)
    settings = Settings.from_env({**environ, **env, **wiring})
    push_secret = provider_secrets.split()[0] if provider_secrets and settings.provider.kind == "emulator" else None
    return RunPlan(env, tuple(env["WEBHOOK_SIGNING_SECRETS"].split()), push_secret, tuple(sorted(user)), settings)


def _completion(first: Settings, user: Mapping[str, str], dev: Mapping[str, str]) -> tuple[str, str]:
    """COMPLETION_STRATEGY and PROVIDER_WEBHOOK_SECRETS for the app (empty strategy: the service infers it)."""
    chosen, secrets_ = user.get("COMPLETION_STRATEGY", ""), user.get("PROVIDER_WEBHOOK_SECRETS", "")
    if first.provider.kind == "emulator":  # it reaches the app: push unless told otherwise
        strategy = chosen or "push"
        return strategy, secrets_ or (dev["PROVIDER_WEBHOOK_SECRETS"] if strategy == "push" else "")
    if chosen or secrets_:  # yours, as you set them (push through a tunnel of yours, say)
        return chosen, secrets_
    # A real provider cannot reach 127.0.0.1: watch its stream, or poll runs the app executes itself.
    return ("watch" if first.executor.backend == "background" else "poll"), ""


# -- the banner ----------------------------------------------------------------------------------------------------
def banner(run: RunPlan, ports: Ports = RUN_PORTS) -> str:
    api = f"http://127.0.0.1:{ports.host}/api"
    lines = [
        "Local stack is up:",
        f"  API            {api}        (no function key needed locally)",
        f"  console        {api}/console    (sign in with the facade key below)",
        f"  emulator       http://127.0.0.1:{ports.emulator}/v1         (stats: /v1/_emulator/stats)",
        f"  webhooks       http://127.0.0.1:{ports.receiver}/           (verified events in .local/webhooks.log; "
        "GET /_received)",
        "  logs           .local/*.log",
        "",
        "Try it:",
        f"  curl -s -i -X POST {api}/runs -H 'content-type: application/json' \\",
        '       -d \'{"input": "Write a haiku about queues", '
        f'"webhook_url": "http://127.0.0.1:{ports.receiver}/hook"}}\'',
        f"  curl -s {api}/runs/<id>",
        f"  curl -s -N -X POST {api}/runs -H 'content-type: application/json' \\",
        '       -d \'{"input": "Stream me something", "stream": true}\'',
        f"  page: {api}/ui",
        "",
        *_key_lines(run, api),
        "",
        *_completion_lines(run, ports),
    ]
    if run.from_user:
        lines += ["", "From your environment (instead of make run's own): " + ", ".join(run.from_user) + "."]
    lines += ["", *_provider_lines(run)]  # last, so it stays on screen above the logs
    return "\n".join(["", *lines, "", "Ctrl-C stops everything."])


def _provider_lines(run: RunPlan) -> list[str]:
    provider = run.settings.provider
    if provider.kind == "emulator":
        return ["Model provider: the local emulator (nothing leaves this machine)."]
    where = {
        "openai": provider.base_url or "https://api.openai.com/v1",
        "azure_openai": provider.azure_endpoint,
        "openai_compatible": provider.base_url,
    }[provider.kind]
    why = (
        "MODEL_PROVIDER"
        if "MODEL_PROVIDER" in run.from_user
        else {
            "openai": "OPENAI_API_KEY",
            "azure_openai": "AZURE_OPENAI_ENDPOINT",
            "openai_compatible": "OPENAI_COMPATIBLE_BASE_URL",
        }[provider.kind]
    ) + " is set in your environment"
    if provider.kind in BILLED_PROVIDERS:
        headline = f"REAL, BILLED MODEL PROVIDER: {provider.kind} at {where}"
        cost = "Every run is a real model call billed to that account."
    else:
        headline = f"REAL MODEL SERVER: {provider.kind} at {where}"
        cost = "Every run is a real model call (billed, if that server is a paid service)."
    rule = "!" * 100
    return [
        rule,
        f"!! {headline}",
        f"!! ({why}.) {cost}",
        "!! For the local emulator instead, unset it, or run MODEL_PROVIDER=emulator make run.",
        rule,
    ]


def _key_lines(run: RunPlan, api: str) -> list[str]:
    callers = sorted({key.caller for key in run.settings.facade.api_keys})
    if "RESPONSES_API_KEYS" in run.from_user:
        return [
            "The Responses API (OpenAI's SDKs and Agent Framework, unchanged but for base_url and api_key) takes",
            f"the keys of RESPONSES_API_KEYS from your environment (callers: {', '.join(callers)}); use one of yours:",
            f'  curl -s {api}/v1/responses -H "Authorization: Bearer $KEY" \\',
            '       -H \'content-type: application/json\' -d \'{"model": "gpt-4.1-mini", "input": "Hello", '
            '"background": true}\'',
            f'  python: OpenAI(base_url="{api}/v1", api_key=KEY)',
        ]
    return [
        "The Responses API (OpenAI's SDKs and Agent Framework, unchanged but for base_url and api_key); the key of the",
        f"local caller `dev` (an operator) was generated into {SECRETS_FILE.relative_to(REPO_ROOT)} "
        "(RESPONSES_API_KEYS=dev:<key>:operator):",
        "  export KEY=$(sed -n 's/^RESPONSES_API_KEYS=dev:\\([^:]*\\):.*/\\1/p' .local/secrets.env)",
        f'  curl -s {api}/v1/responses -H "Authorization: Bearer $KEY" \\',
        '       -H \'content-type: application/json\' -d \'{"model": "gpt-4.1-mini", "input": "Hello", '
        '"background": true}\'',
        f'  python: OpenAI(base_url="{api}/v1", api_key=os.environ["KEY"])',
        'The first run step by step (curl, the openai SDK, Agent Framework): README.md, "First run".',
    ]


def _completion_lines(run: RunPlan, ports: Ports) -> list[str]:
    chosen = "COMPLETION_STRATEGY" in run.from_user or "PROVIDER_WEBHOOK_SECRETS" in run.from_user
    if run.strategy == "push":
        if run.emulator_push_secret:
            return [
                "Completion: push (the emulator sends signed provider webhooks to /api/provider/webhooks, as OpenAI "
                "does);",
                "COMPLETION_STRATEGY=poll or watch in the environment picks another.",
            ]
        return [
            "Completion: push, as you set it. The provider must reach "
            f"http://127.0.0.1:{ports.host}/api/provider/webhooks",
            "(a tunnel of yours, registered with it); otherwise every run ends only at the safety-net poll "
            f"({run.settings.completion.safety_poll_initial:g} s, backing off to "
            f"{run.settings.completion.safety_poll_max:g} s).",
        ]
    if chosen:
        return [f"Completion: {run.strategy}, as you set it."]
    if run.strategy == "watch":
        return [
            "Completion: watch. The provider cannot reach 127.0.0.1 to push, so each run's stream is held until it "
            "ends;",
            "COMPLETION_STRATEGY=poll in the environment polls instead.",
        ]
    if run.provider != "emulator":
        return [
            "Completion: poll (the app runs every model call itself, so it sees each run end; the poll chain is "
            "its watchdog)."
        ]
    return [f"Completion: {run.strategy}."]


# -- the processes ------------------------------------------------------------------------------------------------
def make_run_stack(
    run: RunPlan,
    *,
    ports: Ports = RUN_PORTS,
    log_dir: Path = LOCAL_DIR,
    name: str = "stack",
    emulator_db: Path | None = None,
    receiver_echo=None,
    azurite: Azurite | None = None,
) -> LocalStack:
    """The LocalStack `make run` starts (not started): the app with `run.env`, the emulator pushing when planned.
    `azurite` shares a running one (the tests)."""
    emulator_config: dict = {"db": emulator_db} if emulator_db else {}
    if run.emulator_push_secret:  # as a registered OpenAI / Azure OpenAI endpoint would
        emulator_config.update(
            webhook_url=f"http://127.0.0.1:{ports.host}/api/provider/webhooks", webhook_secret=run.emulator_push_secret
        )
    return LocalStack(
        name,
        ports=ports,
        log_dir=log_dir,
        keep_data=True,
        emulator_in_thread=False,
        emulator_config=emulator_config,
        webhook_secrets=run.webhook_secrets,
        receiver_echo=receiver_echo,
        host_grace_seconds=30,
        env=run.env,
        azurite=azurite,
    )


def _ports_in_use(ports: Ports) -> list[str]:
    names = {
        "blob": "Azurite blob",
        "queue": "Azurite queue",
        "table": "Azurite table",
        "emulator": "emulator",
        "host": "Functions host",
        "receiver": "webhook receiver",
    }
    busy = []
    for field, what in names.items():
        port = getattr(ports, field)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(f"{port} ({what})")
    return busy


def _follow(log_path: Path) -> None:
    """Print what the host writes to its log until Ctrl-C or SIGTERM."""
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    log_path.touch()
    try:
        with open(log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            while not stopping:
                chunk = log.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                time.sleep(0.3)
    except KeyboardInterrupt:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the whole local stack (make run).")
    parser.add_argument("--fresh", action="store_true", help="start with empty Azurite and emulator data")
    args = parser.parse_args()
    busy = _ports_in_use(RUN_PORTS)
    if busy:
        raise SystemExit(f"these ports are already in use (another `make run`?): {', '.join(busy)}")
    try:
        run = plan(os.environ, dev_secrets())
    except SettingsError as error:
        raise SystemExit(f"make run: the app would refuse these settings: {error}") from None
    emulator_db = LOCAL_DIR / "emulator.sqlite"
    if args.fresh and emulator_db.exists():
        emulator_db.unlink()
    webhook_log = open(LOCAL_DIR / "webhooks.log", "a", buffering=1)
    stack = make_run_stack(
        run, emulator_db=emulator_db, receiver_echo=lambda line: print(line, file=webhook_log, flush=True)
    )
    func = shutil.which("func")
    stack.start(with_host=not func, fresh=args.fresh, wait_healthy=False)
    core_tools = None
    try:
        if func:
            core_tools = subprocess.Popen(
                [func, "start", "--port", str(RUN_PORTS.host)],
                cwd=REPO_ROOT,
                env={**os.environ, **stack.env},
                start_new_session=True,
            )
        print(banner(run), flush=True)
        _follow(stack.host.log_path if stack.host else LOCAL_DIR / "stack-host.log")
    finally:
        print("\nstopping...", flush=True)
        _stop_process(core_tools)
        stack.stop()
        webhook_log.close()


if __name__ == "__main__":
    main()
