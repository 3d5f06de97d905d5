# Every target is one call into the project; `.venv` is created on first use (uv, bytecode).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
DEFAULT_PATTERN := serving_patterns/web_single
# PATTERN=... picks one pattern for run, demo and test
SELECTED = $(if $(PATTERN),$(PATTERN),)

.PHONY: run demo test lint check render bench list clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m patternkit run $(if $(SELECTED),$(SELECTED),$(DEFAULT_PATTERN)) --port $(PORT)

demo: $(STAMP)
	$(PY) -m patternkit demo $(SELECTED)

list: $(STAMP)
	$(PY) -m patternkit list

render: $(STAMP)
	$(PY) -m patternkit render

check: $(STAMP)
	$(PY) -m patternkit check

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: check lint
	$(PY) -m pytest $(SELECTED)

bench: $(STAMP)
	$(PY) benchmarks/serving.py

clean:
	rm -rf .runs .pytest_cache .ruff_cache .mypy_cache
