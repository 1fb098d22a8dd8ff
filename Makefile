# voxrelay: `make run` starts the server, `make test` runs the tests.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/voxrelay/v1/*.proto)
PROTO_OUT := client/voxrelay/v1

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test proto lint bench bench-quick install dist clean

run: install
	$(BIN)/voxrelay serve

# The suite includes a smoke run of the benchmarks, so it needs their extras too.
test: install $(BENCH_STAMP)
	$(BIN)/pytest

install: $(STAMP)

# Two distributions, both editable here: the light client (client/pyproject.toml,
# `voxrelay`) and the server (pyproject.toml, `voxrelay-server`, which needs the client).
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./client -e '.[dev]'
	touch $@

# Regenerates the Python messages, gRPC stubs and their type stubs from protos/ into
# client/voxrelay/v1/. They are committed (the client wheel ships them); `make lint`
# and tests/test_packaging.py check that they are what the protos make.
proto: $(STAMP)
	rm -f $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi
	$(BIN)/python -m tests.stubs client

lint: install
	$(BIN)/python -m tests.stubs --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	@# The contract must stay wire-compatible with main; a clone without a local
	@# main branch (shallow CI checkouts) has nothing to compare to, so it says so.
	@if test -d .git && git rev-parse --verify --quiet refs/heads/main >/dev/null 2>&1; then \
		echo "cd protos && buf breaking --against '../.git#branch=main,subdir=protos'"; \
		cd protos && ../$(BIN)/buf breaking --against '../.git#branch=main,subdir=protos'; \
	else \
		echo "buf breaking: skipped, no local 'main' branch (in .git) to compare the protos against"; \
		echo "  (fetch it, e.g. git fetch origin main:main, to run the check)"; \
	fi

# The benchmark suite: prints its tables, writes BENCHMARKS.md and bench/plots/*.png.
bench: install $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-quick: install $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

# The benchmark's extras (the reference implementation, plotting) only for the benchmark.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ./client -e '.[dev,bench]'
	touch $@

# Builds both distributions (sdist and wheel) into dist/.
dist: install
	$(BIN)/python -m build --outdir dist client
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) dist build client/build
