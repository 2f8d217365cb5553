# The README's two commands. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: the CPU wheel is on local disk; a bare `torch` pulls a CUDA build.
TORCH  ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1

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
	$(BIN)/slift demo --out demo_output

# The full benchmark suite (BENCHMARKS.md): the field problem and the rest run side by
# side, one thread each, on the 2 cores; `make bench-quick` is the CI-sized suite.
BENCH_ARGS ?=
bench: $(VENV)/.installed
	mkdir -p bench_output
	$(BIN)/slift bench --problems double_well lorenz63 vlasov --out bench_output/vectors \
		$(BENCH_ARGS) > bench_output/vectors.log 2>&1 & \
	$(BIN)/slift bench --problems allen_cahn --out bench_output/fields $(BENCH_ARGS); \
	status=$$?; wait $$! || status=$$?; exit $$status

bench-quick: $(VENV)/.installed
	$(BIN)/slift bench --quick --out bench_output_quick $(BENCH_ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) demo_output bench_output bench_output_quick .pytest_cache .ruff_cache *.egg-info
