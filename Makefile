# Two set-up commands on a fresh machine: `make demo` and `make test` (both create .venv and install).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned first: 2.13.0 is the CPU build available offline on our machines; installing it
# before the package keeps pip from pulling a CUDA build to satisfy the looser range in pyproject.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m leantrain.demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/leantrain bench overhead

clean:
	rm -rf $(VENV) runs bench_out .pytest_cache
