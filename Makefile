# Two commands on a fresh machine: `make run` (the whole local stack) and `make test`.
# Everything they need is installed here: a Python venv and Azurite from npm.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
NODE_STAMP := node_modules/.installed
# checkov pins an older pycep-parser than the service's tests use, so it lives in its own venv.
CHECKOV_STAMP := .local/venv-checkov/.installed
# LiteLLM proxy for tests/conformance, in its own venv: every package pinned with its sha256, audited after install.
LITELLM_STAMP := .local/venv-litellm/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: run test bench chaos fuzz setup clean emulator

setup: $(VENV_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP) $(CHROMIUM)

$(VENV_STAMP): requirements.txt requirements-dev.txt client/pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e ./client
	touch $@

$(LITELLM_STAMP): tests/conformance/requirements-litellm.txt
	python3 -m tests.conformance.tool_venvs litellm

$(CHECKOV_STAMP): tests/infra/requirements-checkov.txt
	python3 -m venv --clear .local/venv-checkov
	.local/venv-checkov/bin/python -m pip install -q -r tests/infra/requirements-checkov.txt
	cp tests/infra/requirements-checkov.txt $@

# Debian's chromium for tests/browser (driven by the playwright package; `playwright install` is never run).
# Where it cannot be installed (no apt-get, not root) the error is ignored and tests/browser skips.
$(CHROMIUM):
	-command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: setup
	$(PY) -m local.stack

test: setup $(LITELLM_STAMP)
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.run_all

chaos: setup
	$(PY) -m bench.chaos

# schemathesis (pinned in requirements-dev.txt) against openapi.yaml on the local stack with function keys on.
fuzz: setup
	$(PY) -m tests.fuzz.run

emulator: setup
	$(PY) -m local.emulator

clean:
	rm -rf .venv node_modules .azurite .local
