# Two set-up commands on a fresh machine: `make demo` and `make test` (both create .venv and install).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test bench bench-all clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned first: 2.13.0 is the CPU build available offline on our machines; installing it
# before the package keeps pip from pulling a CUDA build to satisfy the looser range in pyproject.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,hf,tensorboard]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m leantrain.demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/leantrain bench overhead

# Every suite with the settings of its committed figures (about 6 hours on 2 cores, one after the
# other); each writes benchmarks/<suite>/ (report.md, results.json, plots).
bench-all: $(STAMP)
	$(BIN)/leantrain bench overhead --out benchmarks/overhead
	$(BIN)/leantrain bench depth --seeds 3 --threads 1 --out benchmarks/depth
	$(BIN)/leantrain bench dropout --seeds 3 --threads 1 --out benchmarks/dropout
	$(BIN)/leantrain bench local --seeds 3 --threads 1 --out benchmarks/local
	$(BIN)/leantrain bench local --suite gpt --seeds 3 --threads 1 --out benchmarks/local_gpt
	$(BIN)/leantrain bench local --parallel --seeds 3 --out benchmarks/local_parallel
	$(BIN)/leantrain bench growth --sweep --threads 1 --out benchmarks/growth
	$(BIN)/leantrain bench growth --seeds 3 --threads 1 --schedules benchmarks/growth/sweep.json --out benchmarks/growth
	$(BIN)/leantrain bench pool --seeds 3 --threads 1 --out benchmarks/pool
	$(BIN)/leantrain bench bpe --seeds 2 --threads 1 --out benchmarks/bpe
	$(BIN)/leantrain bench hf --seeds 3 --threads 1 --out benchmarks/hf
	$(BIN)/leantrain bench growth --family hf --seeds 2 --threads 1 --out benchmarks/growth_hf
	$(BIN)/leantrain bench pool --family hf --seeds 2 --threads 1 --out benchmarks/pool_hf

clean:
	rm -rf $(VENV) runs bench_out .pytest_cache
