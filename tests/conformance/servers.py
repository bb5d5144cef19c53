"""The OpenAI-compatible servers the executor is tested against, each from its own venv on a free loopback port:
what a stack needs of one is `base_url`, `key`, `model` and `wait_ready()`.

    proxy = LiteLLMProxy(work_dir).start()    # returns at once; the proxy imports for 10-60 s
    ... proxy.wait_ready()
    proxy.base_url, proxy.key, proxy.calls("t1")
    proxy.stop()

LiteLLMProxy serves the scripted model (scripted_provider.py) as MODEL, with a master key; `calls(id)` reads what
the scripted model received. TransformersServer serves a tiny model built offline (tiny_model.py) with
`transformers serve` (opt-in: torch is too heavy for CI).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from local.azurite import free_port
from local.stack import _stop_process, _wait_until

from .tool_venvs import LITELLM, TRANSFORMERS

HERE = Path(__file__).resolve().parent
MODEL = "gpt-4.1-mini"
PROVIDER = "scripted"


class _ServerProcess:
    health_path = "/health"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.log_path = work_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.work_dir,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 180) -> _ServerProcess:
        url = f"http://127.0.0.1:{self.port}{self.health_path}"
        _wait_until(
            lambda: httpx.get(url, timeout=2).status_code == 200,
            self.proc,
            timeout,
            f"{type(self).__name__} did not start (see {self.log_path})",
        )
        return self

    def stop(self) -> None:
        _stop_process(self.proc)


class LiteLLMProxy(_ServerProcess):
    health_path = "/health/liveliness"
    model = MODEL

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir)
        self.key = "sk-" + secrets.token_urlsafe(24)
        self.calls_path = work_dir / "scripted-calls.jsonl"

    def _config(self) -> Path:
        # No retries or fallbacks of LiteLLM's own: the service's retries are what the tests look at. LiteLLM
        # refuses `reasoning_effort` (400) for a provider that does not declare it, as a deployment of a model
        # without reasoning would; this one is declared as a reasoning model.
        config = {
            "model_list": [
                {
                    "model_name": MODEL,
                    "litellm_params": {"model": f"{PROVIDER}/{MODEL}", "allowed_openai_params": ["reasoning_effort"]},
                }
            ],
            "litellm_settings": {
                "custom_provider_map": [{"provider": PROVIDER, "custom_handler": "scripted_provider.handler"}],
                "num_retries": 0,
            },
            "router_settings": {"num_retries": 0},
            "general_settings": {"master_key": self.key},
        }
        path = self.work_dir / "litellm-config.json"  # JSON is YAML: LiteLLM reads it with its YAML loader
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> LiteLLMProxy:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        exe = LITELLM.ensure()
        self._spawn(
            [str(exe), "--config", str(self._config()), "--host", "127.0.0.1", "--port", str(self.port)],
            {
                "PYTHONPATH": str(HERE),
                "SCRIPTED_PROVIDER_LOG": str(self.calls_path),
                # the packaged model cost map; the remote one is fetched with retries (no network here)
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            },
        )
        return self

    def _rows(self, script_id: str) -> list[dict[str, Any]]:
        if not self.calls_path.exists():
            return []
        rows = [json.loads(line) for line in self.calls_path.read_text().splitlines() if line.strip()]
        return [row for row in rows if row["id"] == script_id]

    def calls(self, script_id: str) -> list[dict[str, Any]]:
        """What the scripted model received for this script id, in order (one entry per call)."""
        return [row for row in self._rows(script_id) if "event" not in row]

    def stream_ends(self, script_id: str) -> list[dict[str, Any]]:
        """How each of the script's streams ended (`completed`, `closed` by the client, `cut`), with chunks sent."""
        return [row for row in self._rows(script_id) if "event" in row]

    def wait_for_calls(self, script_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls(script_id)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.calls(script_id)


class TransformersServer(_ServerProcess):
    key = "unused"  # `transformers serve` checks no key; an empty one would make the service use Entra ID

    @property
    def model(self) -> str:
        return str(self.work_dir / "tiny")  # a server started with a model serves it under its path only

    def start(self) -> TransformersServer:
        exe = TRANSFORMERS.ensure()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(self.work_dir / "hf")}
        subprocess.run(
            [str(exe.parent / "python"), str(HERE / "tiny_model.py"), self.model],
            check=True,
            timeout=600,
            env={**os.environ, **offline},
        )
        self._spawn(
            [str(exe), "serve", self.model, "--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port)], offline
        )
        return self
