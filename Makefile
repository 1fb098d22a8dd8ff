# voxrelay: `make run` starts the server, `make test` runs the tests.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/voxrelay/v1/*.proto)
PROTO_OUT := client/voxrelay/v1

BENCH_STAMP := $(VENV)/.bench-installed

NODE_DIR := clients/node
GO_PLUGINS := protoc-gen-go protoc-gen-go-grpc

.PHONY: run test proto generate node-deps go-deps browser-deps go-example lint bench bench-quick install dist clean

run: install
	$(BIN)/voxrelay serve

# The suite includes a smoke run of the benchmarks, so it needs their extras too.
test: install $(BENCH_STAMP)
	$(BIN)/pytest

install: $(STAMP)

# Two distributions, both editable here: the light client (client/pyproject.toml,
# `voxrelay`) and the server (pyproject.toml, `voxrelay-server`, which needs the client).
# The client's framework extras come too: their adapters are tested with the framework.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e './client[livekit,openai-agents,pipecat]' -e '.[dev]'
	touch $@

# Regenerates the Python messages, gRPC stubs and their type stubs from protos/ into
# client/voxrelay/v1/. They are committed (the client wheel ships them); `make lint`
# and tests/test_packaging.py check that they are what the protos make.
proto: $(STAMP)
	rm -f $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi
	$(BIN)/python -m tests.stubs client

# Every language's generated code from protos/ in one command: the Python stubs (above),
# then TypeScript (clients/node/src/gen) and Go (gen/go) with buf and protos/buf.gen.yaml.
# tests/test_generated.py checks that the committed TypeScript and Go code is current.
generate: proto node-deps
	@for plugin in $(GO_PLUGINS); do command -v $$plugin >/dev/null || { \
		echo "$$plugin is missing: apt-get install $(GO_PLUGINS) (Debian packages)"; exit 1; }; done
	cd protos && ../$(BIN)/buf generate --template buf.gen.yaml

# The Node package's dependencies (protoc-gen-es among them), from the npm registry.
node-deps: $(NODE_DIR)/node_modules/.package-lock.json

$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund

# The Go toolchain, Go's gRPC and protobuf sources and the Go generators, from Debian's
# packages (needs root): without them the Go tests and the generated-code check skip.
GO_DEBS := golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev $(GO_PLUGINS)
go-deps:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GO_DEBS)

# Debian's chromium (needs root), for tests/test_browser.py: the page at / in a real
# headless browser, driven by playwright with this system browser (playwright's own
# browser builds are never downloaded). Without it that test skips, saying so.
browser-deps:
	command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Builds the Go example offline against Debian's Go packages (GOPATH mode):
# apt-get install golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
go-example:
	tmp=$$(mktemp -d) && mkdir -p $$tmp/src/github.com/voxrelay && \
	ln -s "$(CURDIR)" $$tmp/src/github.com/voxrelay/voxrelay && \
	cd $$tmp/src/github.com/voxrelay/voxrelay && \
	GO111MODULE=off GOPATH=$$tmp:/usr/share/gocode GOFLAGS= go build -o "$(CURDIR)/$(BIN)/voxrelay-speak-go" ./examples/go/speak && \
	rm -rf $$tmp && echo "built $(BIN)/voxrelay-speak-go"

lint: install
	$(BIN)/python -m tests.stubs --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	@# The Node client's TypeScript and the Go example, where their toolchains are here.
	@if test -d $(NODE_DIR)/node_modules; then \
		echo "cd $(NODE_DIR) && tsc --noEmit && prettier --check"; \
		cd $(NODE_DIR) && npx tsc --noEmit -p . && npx prettier --check src/index.ts examples README.md; \
	else echo "clients/node: skipped, no node_modules (make node-deps)"; fi
	@if command -v gofmt >/dev/null; then \
		echo "gofmt -l examples/go gen/go"; test -z "$$(gofmt -l examples/go gen/go)"; \
	else echo "gofmt: skipped, no Go toolchain"; fi
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
	$(BIN)/pip install --quiet -e './client[livekit,openai-agents,pipecat]' -e '.[dev,bench]'
	touch $@

# Builds both distributions (sdist and wheel) into dist/.
dist: install
	$(BIN)/python -m build --outdir dist client
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) dist build client/build
