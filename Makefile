# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv when missing and installs what it needs. torch is pinned to the CPU build
# that lies on this machine's disk *before* the package, whose `torch>=2.5` it then satisfies
# (a bare `torch` requirement would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,plots,train,hf]"
	$(BIN)/attnlab build-cpp || echo "attnlab: no C++ kernels here; backend 'auto' uses 'chunked' on CPU"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/attnlab demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
