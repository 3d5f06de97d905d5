# Every target is one call into the project; `.venv` is created on first use (uv, bytecode).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
DEFAULT_PATTERN := serving_patterns/web_single
# PATTERN=... picks one pattern for run, demo and test;
# SET="service.VAR=value ..." overrides settings for run and demo
SELECTED = $(if $(PATTERN),$(PATTERN),)
SETS = $(foreach s,$(SET),--set $(s))

.PHONY: run ctl demo test lint check render bench list clean venv vendor

# `make ctl kill worker`: the words after `ctl` are its arguments, not targets
ifeq (ctl,$(firstword $(MAKECMDGOALS)))
CTL_ARGS := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
$(eval $(CTL_ARGS):;@:)
endif

venv: $(STAMP)

# the exact versions of uv.lock (`uv lock` after changing pyproject.toml; --locked refuses a
# stale lock); --inexact keeps uv itself in the venv
$(STAMP): pyproject.toml uv.lock
	@echo "setting up $(VENV) from uv.lock: the first time takes about a minute ..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	UV_PROJECT_ENVIRONMENT=$(VENV) $(VENV)/bin/uv sync --locked --inexact --compile-bytecode \
	  --quiet --extra test --extra bench
	touch $(STAMP)

run: $(STAMP) vendor
	$(PY) -m patternkit run $(if $(SELECTED),$(SELECTED),$(DEFAULT_PATTERN)) --port $(PORT) $(SETS)

# in a second terminal, on the stack `make run` booted: make ctl status | stop S | start S |
# restart S [SET="VAR=value ..."] | kill S | pause S | resume S
ctl: $(STAMP)
	@$(PY) -m patternkit ctl $(SELECTED) $(CTL_ARGS) $(SETS)

demo: $(STAMP) vendor
	$(PY) -m patternkit demo $(SELECTED) $(SETS)

list: $(STAMP)
	$(PY) -m patternkit list

render: $(STAMP)
	$(PY) -m patternkit render

check: $(STAMP)
	$(PY) -m patternkit check

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# in parallel: pyproject.toml's addopts give `-n 2 --dist loadgroup` (a pattern's tests on one
# worker); PATTERN=... runs one pattern's tests, PYTEST="-n 0" in one process
test: check lint vendor
	$(PY) -m pytest $(PYTEST) $(SELECTED)

# onnxruntime-web for the S13 edge page, from the npm registry; git-ignored, never committed.
# Skipped when npm is not on PATH (the browser test then says why it skips).
ORT_WEB_VERSION := 1.30.0
ORT_WEB_DIR := serving_patterns/edge_prediction/static/vendor
ORT_WEB_FILES := ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
ORT_WEB_STAMP := $(ORT_WEB_DIR)/.onnxruntime-web-$(ORT_WEB_VERSION)
NPM := $(shell command -v npm 2>/dev/null)

vendor: $(if $(NPM),$(ORT_WEB_STAMP))

$(ORT_WEB_STAMP):
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	if (cd "$$tmp" && npm pack --quiet onnxruntime-web@$(ORT_WEB_VERSION) >/dev/null) && \
	   tar -xzf "$$tmp/onnxruntime-web-$(ORT_WEB_VERSION).tgz" -C "$$tmp" \
	       $(addprefix package/dist/,$(ORT_WEB_FILES)); then \
	  rm -rf $(ORT_WEB_DIR) && mkdir -p $(ORT_WEB_DIR) && \
	  cp $(addprefix "$$tmp"/package/dist/,$(ORT_WEB_FILES)) $(ORT_WEB_DIR)/ && touch $@ && \
	  echo "vendored onnxruntime-web $(ORT_WEB_VERSION) into $(ORT_WEB_DIR)"; \
	else echo "vendor: could not fetch onnxruntime-web $(ORT_WEB_VERSION); the browser test will skip" >&2; fi

# every serving pattern against the predictor, one interleaved run (a few minutes); writes
# benchmarks/results.md and results.png. BENCH="--rounds 1 --seconds 3 --only S1,S8 --tool locust"
# passes flags; `.venv/bin/python benchmarks/serving.py` alone: predictor vs bare FastAPI.
bench: $(STAMP)
	$(PY) benchmarks/patterns.py $(BENCH)

clean:
	rm -rf .runs .pytest_cache .ruff_cache .mypy_cache
