# The README's two commands. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: the CPU wheel is on local disk; a bare `torch` pulls a CUDA build.
TORCH  ?= torch==2.13.0
# Tests and benchmarks run one thread per process (timings on a shared machine); the demo
# uses the threads torch would use.
test bench bench-quick: export OMP_NUM_THREADS ?= 1

.PHONY: install install-dev demo test bench bench-quick lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/slift demo --out demo_output --overwrite

# The full benchmark suite (BENCHMARKS.md): the field problem and the rest run side by
# side, one thread each, on the 2 cores; `make bench-quick` is the CI-sized suite.
BENCH_ARGS ?=
bench: $(VENV)/.installed
	mkdir -p bench_output
	$(BIN)/slift bench --problems double_well lorenz63 vlasov lorenz96 --out bench_output/vectors --overwrite \
		$(BENCH_ARGS) > bench_output/vectors.log 2>&1 & \
	$(BIN)/slift bench --problems allen_cahn --out bench_output/fields --overwrite $(BENCH_ARGS); \
	status=$$?; wait $$! || status=$$?; exit $$status

bench-quick: $(VENV)/.installed
	$(BIN)/slift bench --quick --out bench_output_quick --overwrite $(BENCH_ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) demo_output bench_output bench_output_quick .pytest_cache .ruff_cache *.egg-info
