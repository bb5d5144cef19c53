# Two commands on a fresh machine: `make run` (the whole local stack) and `make test`.
# `make run` installs only what it runs (RUN_TOOLS): a Python venv with the app and the local stack
# (requirements-local.txt) and Azurite from npm. `make test` adds the test-only tools (TEST_TOOLS).
PY := .venv/bin/python
RUN_VENV_STAMP := .venv/.installed-run
DEV_VENV_STAMP := .venv/.installed-dev
NODE_STAMP := node_modules/.installed
# checkov pins an older pycep-parser than the service's tests use, so it lives in its own venv.
CHECKOV_STAMP := .local/venv-checkov/.installed
# LiteLLM proxy for tests/conformance, in its own venv: every package pinned with its sha256, audited after install.
LITELLM_STAMP := .local/venv-litellm/.installed
CHROMIUM := /usr/bin/chromium

# What `make run` needs.
RUN_TOOLS := $(RUN_VENV_STAMP) $(NODE_STAMP) node-check
# What only `make test` needs. A new test tool is a target that installs it (its own venv under .local/ if its
# dependencies conflict, like checkov's), added here.
TEST_TOOLS := $(DEV_VENV_STAMP) $(CHECKOV_STAMP) $(LITELLM_STAMP) $(CHROMIUM)

# The fast loop (`make unit`): the unit tests and the other folders that start no stack and call no network.
UNIT_TESTS := tests/unit tests/webhooks tests/mutation tests/chaos/test_chaos_checks.py tests/client/test_unit.py \
	tests/docs/test_static.py tests/docs/test_runner.py

.PHONY: run test unit lint bench chaos fuzz mutate setup clean emulator run-tools test-tools node-check

setup: run-tools test-tools
run-tools: $(RUN_TOOLS)
test-tools: $(TEST_TOOLS)

$(RUN_VENV_STAMP): requirements.txt requirements-local.txt client/pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-local.txt
	$(PY) -m pip install -q -e ./client
	touch $@

# pytest, schemathesis, playwright, ... for the tests, the benchmarks and the fuzzer, into the same venv.
$(DEV_VENV_STAMP): $(RUN_VENV_STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
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

# A warning (not a refusal) when Node.js is older than the pinned Azurite declares in its `engines`: npm's own
# EBADENGINE warning is hidden by --loglevel=error above. Standard library only, so the system python3 runs it.
node-check: $(NODE_STAMP)
	@python3 -m local.azurite --check-node

run: run-tools
	$(PY) -m local.make_run

# The linters first: they take seconds, the suite minutes.
test: run-tools test-tools lint
	$(PY) -m pytest

# ruff (lint and format check) over the tree, mypy in strict mode over shared/ (both configured in pyproject.toml).
lint: $(DEV_VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

unit: $(DEV_VENV_STAMP)
	$(PY) -m pytest -q $(UNIT_TESTS)

bench: run-tools $(DEV_VENV_STAMP)
	$(PY) -m bench.run_all

chaos: run-tools $(DEV_VENV_STAMP)
	$(PY) -m bench.chaos

# schemathesis (pinned in requirements-dev.txt) against openapi.yaml on the local stack with function keys on.
fuzz: run-tools $(DEV_VENV_STAMP)
	$(PY) -m tests.fuzz.run

# Mutation testing (mutmut, pyproject's [tool.mutmut]) of the modules that hold the invariants, judged by tests/unit:
# prints the score and the survivors not listed in tests/mutation/equivalent.txt. Slow (minutes): not in `make test`.
mutate: $(DEV_VENV_STAMP)
	rm -rf mutants
	$(PY) -m mutmut run
	$(PY) -m tests.mutation.report

emulator: $(RUN_VENV_STAMP)
	$(PY) -m local.emulator

clean:
	rm -rf .venv node_modules .azurite .local
