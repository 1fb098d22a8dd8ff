# voxrelay: `make run` starts the server, `make test` runs the tests.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/voxrelay/v1/*.proto)
PROTO_OUT := client/voxrelay/v1
PROTO_STAMP := $(PROTO_OUT)/.generated

.PHONY: run test proto lint bench install clean

run: install
	$(BIN)/voxrelay serve

test: install
	$(BIN)/pytest

install: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Regenerates the Python messages, gRPC stubs and their type stubs from protos/.
proto: $(STAMP)
	rm -f $(PROTO_STAMP)
	$(MAKE) $(PROTO_STAMP)

$(PROTO_STAMP): $(STAMP) $(PROTO_SRC)
	rm -f $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=client --mypy_out=client \
		--grpc_python_out=client --mypy_grpc_out=client \
		$(PROTO_SRC)
	touch $(PROTO_OUT)/__init__.py $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

# Speed figures of the real voices; see BENCHMARKS.md.
bench: install
	$(BIN)/python -m bench.voices

clean:
	rm -rf $(VENV) $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi $(PROTO_STAMP)
