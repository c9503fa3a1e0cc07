# sam2-fpga: the two commands a new machine needs are `make demo` and `make test`.
# Both create .venv when missing and install from pyproject.toml; a second call
# reuses what is there (the install re-runs only when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest workers: 2 cores here; override with `make test JOBS=1`.
JOBS   ?= 2
# Whole modules to a worker as it frees up, in tests/conftest.py's order (costliest first, kept as
# ordered): the longest work starts first and both workers end together. The default `--dist load`
# handed one worker every slow module in its first batch (it finished ~8 minutes after the other).
DIST   := --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast bench install check-cxx clean

demo: $(STAMP) check-cxx
	$(VENV)/bin/sam2fpga demo

test: $(STAMP) check-cxx
	$(PY) -m pytest -n $(JOBS) $(DIST) --durations=15 $(PYTEST_ARGS)

# Everything but the slow tests, for quick iteration.
test-fast: $(STAMP) check-cxx
	$(PY) -m pytest -n $(JOBS) $(DIST) -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP) check-cxx
	$(PY) -m benchmarks $(BENCH_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# compat mode: a plain path entry, so a checkout (or git worktree) run from its own
	# folder imports its own packages first.
	$(PY) -m pip install --quiet -e ".[test,fpga]" --config-settings editable_mode=compat
	# The official SAM 2 code is a test-only oracle; its setup.py needs torch
	# at build time and must not pull its own (CUDA) torch.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-deps --no-build-isolation sam2==1.1.0
	@touch $(STAMP)

check-cxx:
	@command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || { \
	  echo "error: no C++ compiler found. Verilator needs one to build simulations:"; \
	  echo "       install g++ and make (Debian/Ubuntu: apt-get install g++ make)."; exit 1; }

clean:
	rm -rf build sim_build .pytest_cache
