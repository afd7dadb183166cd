# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   create .venv, install Reclaim, run its main job
#   make test   create .venv with the dev extras, run every test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-tools browser-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

# The main job: simulate a marketplace's history, train and register a policy, then replay a
# month of 4,000 new failures through the API, the scheduler and the Stripe stand-in in
# simulated time as an A/B test (learned vs stripe_like, messages answered by the simulated
# customer), report the experiment (HTML and MLflow), and compare the policies offline
# against the simulator's truth.
DEMO := data/demo
demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(BIN)/reclaim simulate --accounts 300 --payments 50000 --seed 7 --out $(DEMO)/sim
	$(BIN)/reclaim train --data $(DEMO)/sim --tracking-uri sqlite:///$(DEMO)/mlflow.db
	$(BIN)/reclaim replay --model models:/reclaim-policy@champion --payments 4000 \
		--tracking-uri sqlite:///$(DEMO)/mlflow.db --out $(DEMO)/replay --json $(DEMO)/replay.json
	RECLAIM_DATABASE_URL=sqlite:///$(DEMO)/replay/reclaim.db $(BIN)/reclaim report \
		--experiment replay --fx simulator --html $(DEMO)/ab_report.html \
		--tracking-uri sqlite:///$(DEMO)/mlflow.db
	$(BIN)/reclaim evaluate --model models:/reclaim-policy@champion --simulator \
		--payments 10000 --seed 8 --tracking-uri sqlite:///$(DEMO)/mlflow.db \
		--json $(DEMO)/evaluate.json
	@echo "The dashboard over the replay's store, with an analyst key created for it:"
	@RECLAIM_DATABASE_URL=sqlite:///$(DEMO)/replay/reclaim.db $(BIN)/reclaim keys create --role analyst
	@echo "  RECLAIM_DATABASE_URL=sqlite:///$(DEMO)/replay/reclaim.db \\"
	@echo "  RECLAIM_REPORT_FX='$$($(BIN)/python -c 'import json; from reclaim.simulator.config import SimulatorConfig; print(json.dumps(SimulatorConfig().usd_per_unit))')' \\"
	@echo "  RECLAIM_MLFLOW_TRACKING_URI=sqlite:///$(DEMO)/mlflow.db $(BIN)/reclaim serve"
	@echo "  then open http://localhost:8000/dashboard and sign in with the key above"

# Two workers, one per core; a test file stays on one worker (its module fixtures are built once).
# Files are handed out in tests/conftest.py's order, the longest first (not xdist's default of
# the most tests first, which left the longest single tests for last, one core idle meanwhile).
# The dashboard's browser test drives Debian's chromium: installed where missing and possible.
test: $(VENV)/.installed-dev browser-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy reclaim simulator

browser-tools:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "no chromium here: the dashboard's browser test will be skipped"

# wrk drives the API load benchmark; Debian's package, installed only where it is missing.
bench-tools:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

bench: $(VENV)/.installed-dev bench-tools
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:  # the environment and what the demo made (never the stores in data/ a command made for you)
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache
