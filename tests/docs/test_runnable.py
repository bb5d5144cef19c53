"""Every runnable block of the docs runs, as written, against a stack started the way `make run` starts it, and
prints what its document says it prints (tests/docs/runner.py says how).

The stack is `local/make_run.py`'s (`plan()` and `make_run_stack()`: the emulator, push, dev secrets with the
`dev` caller's key) on free ports, with an Azurite of its own (tests/conftest.py `own_azurite` says why), so it
runs beside a real `make run`: the blocks' fixed ports (7070 emulator, 7071 app, 7072 receiver, 10000-10002
Azurite) become the stack's, and `.local/secrets.env` its own secrets file. Nothing else of a block is changed.
"""

from __future__ import annotations

import os

import pytest

from local.make_run import dev_secrets, make_run_stack, plan
from local.stack import Ports

from .markdown import Document, documents
from .runner import run_document

pytestmark = pytest.mark.slow

# What a developer may have exported that would make the stack other than `make run`'s default one.
PROVIDER_CHOICES = (
    "MODEL_PROVIDER",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "OPENAI_COMPATIBLE_BASE_URL",
    "RUN_BACKEND",
    "COMPLETION_STRATEGY",
    "PROVIDER_WEBHOOK_SECRETS",
    "RESPONSES_API_KEYS",
    "TELEMETRY_FILE",
    "DEFAULT_MODEL",
)
WITH_RUNNABLE_BLOCKS = [str(doc.path) for doc in map(Document.read, documents()) if doc.runnable()]


@pytest.fixture(scope="module")
def docs_stack(own_azurite, tmp_path_factory):
    azurite = own_azurite
    folder = tmp_path_factory.mktemp("docs-stack")
    secrets_file = folder / "secrets.env"
    with pytest.MonkeyPatch.context() as env:
        for name in PROVIDER_CHOICES:  # the host inherits the environment: the emulator, whatever is exported
            env.delenv(name, raising=False)
        ports = Ports.free()
        run = plan(os.environ, dev_secrets(secrets_file), ports)
        stack = make_run_stack(run, ports=ports, log_dir=folder, name=f"docs-{os.getpid()}", azurite=azurite)
        stack.start()
    try:
        substitutions = {
            f"{host}:{fixed}": f"127.0.0.1:{port}"
            for host in ("127.0.0.1", "localhost")
            for fixed, port in (
                (7070, ports.emulator),
                (7071, ports.host),
                (7072, ports.receiver),
                (10000, azurite.blob_port),
                (10001, azurite.queue_port),
                (10002, azurite.table_port),
            )
        }
        substitutions[".local/secrets.env"] = str(secrets_file)
        yield substitutions
    finally:
        stack.stop()


def test_the_readme_runs_the_first_run_through_curl_the_sdk_and_agent_framework():
    blocks = [block for block, _ in Document.read("README.md").runnable()]
    python = "\n".join(block.code for block in blocks if block.lang == "python")
    assert "from openai import OpenAI" in python and "from agent_framework" in python
    assert sum("curl" in block.code for block in blocks) >= 4 and "README.md" in WITH_RUNNABLE_BLOCKS


@pytest.mark.parametrize("name", WITH_RUNNABLE_BLOCKS)
def test_the_runnable_blocks_run_and_print_what_the_document_shows(name, docs_stack):
    result = run_document(Document.read(name), substitutions=docs_stack)
    assert result.ok, "\n\n".join(result.problems)
