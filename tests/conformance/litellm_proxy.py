"""LiteLLM proxy (from its own venv) on a free loopback port, serving the scripted model (scripted_provider.py)
under the name MODEL, with a master key. `calls(id)` reads what the scripted model received.

    proxy = LiteLLMProxy(log_dir).start()    # returns at once; the proxy imports for 10-30 s
    ... proxy.wait_ready()
    proxy.base_url, proxy.key, proxy.calls("t1")
    proxy.stop()
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

from . import litellm_venv

HERE = Path(__file__).resolve().parent
MODEL = "gpt-4.1-mini"
PROVIDER = "scripted"


class LiteLLMProxy:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.key = "sk-" + secrets.token_urlsafe(24)
        self.calls_path = work_dir / "scripted-calls.jsonl"
        self.log_path = work_dir / "litellm.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _config(self) -> Path:
        # No retries or fallbacks of LiteLLM's own: the service's retries are what the tests look at. LiteLLM
        # refuses `reasoning_effort` (400) for a provider that does not declare it, as a deployment of a model
        # without reasoning would; this one is declared as a reasoning model.
        config = {
            "model_list": [{"model_name": MODEL, "litellm_params": {
                "model": f"{PROVIDER}/{MODEL}", "allowed_openai_params": ["reasoning_effort"]}}],
            "litellm_settings": {"custom_provider_map": [{"provider": PROVIDER,
                                                           "custom_handler": "scripted_provider.handler"}],
                                 "num_retries": 0},
            "router_settings": {"num_retries": 0},
            "general_settings": {"master_key": self.key},
        }
        path = self.work_dir / "litellm-config.json"  # JSON is YAML: LiteLLM reads it with its YAML loader
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> "LiteLLMProxy":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        exe = litellm_venv.ensure()
        env = {**os.environ, "PYTHONPATH": str(HERE), "SCRIPTED_PROVIDER_LOG": str(self.calls_path),
               # the packaged model cost map; the remote one is fetched with retries (no network here)
               "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "--config", str(self._config()), "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.work_dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 180) -> "LiteLLMProxy":
        _wait_until(lambda: httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2).status_code == 200,
                    self.proc, timeout, f"LiteLLM proxy did not start (see {self.log_path})")
        return self

    def stop(self) -> None:
        _stop_process(self.proc)

    def calls(self, script_id: str) -> list[dict[str, Any]]:
        """What the scripted model received for this script id, in order (one entry per call)."""
        if not self.calls_path.exists():
            return []
        rows = [json.loads(line) for line in self.calls_path.read_text().splitlines() if line.strip()]
        return [row for row in rows if row["id"] == script_id and "event" not in row]

    def stream_ends(self, script_id: str) -> list[dict[str, Any]]:
        """How each of the script's streams ended (`completed`, `closed` by the client, `cut`), with chunks sent."""
        if not self.calls_path.exists():
            return []
        rows = [json.loads(line) for line in self.calls_path.read_text().splitlines() if line.strip()]
        return [row for row in rows if row["id"] == script_id and "event" in row]

    def wait_for_calls(self, script_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls(script_id)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.calls(script_id)
