# Two entry points: `make demo` (set up, then run the pipeline on the built-in synthetic data)
# and `make test` (set up, then run the tests). Both create or reuse .venv.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.crackops-installed
PLOTS_TEMPLATE := .dvc/plots_template.html

.PHONY: demo test test-all setup clean plots-template

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# dvc runs each stage's `crackops ...` command through the shell, so the venv's bin goes first on PATH.
demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@echo "Scores: outputs/eval/report.md (headline: $(BIN)/dvc metrics show); charts: $(BIN)/dvc plots show (offline page: make plots-template)"
	@echo "Runs and the registered model: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

# `dvc plots show` pages with Vega inlined (they work offline), set in .dvc/config.local; needs npmjs.org once.
plots-template: $(PLOTS_TEMPLATE)

$(PLOTS_TEMPLATE): scripts/offline_plots_template.py $(STAMP)
	$(BIN)/python scripts/offline_plots_template.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Adds the slow tests: a real MLflow server over HTTP, serving, multi-family dvc repro runs.
test-all: $(STAMP)
	CRACKOPS_SLOW_TESTS=1 $(BIN)/python -m pytest -q

clean:
	rm -rf outputs data/prepared data/synthetic data/zero_shot
