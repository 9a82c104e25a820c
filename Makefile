# The README's two commands: `make demo` and `make test`. Both create or reuse .venv and are
# quick when nothing changed (the install step re-runs only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
S      := sample_models
INV    := $(BIN)/invaudit

.PHONY: demo test samples clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[test]'
	@touch $@

demo: $(VENV)/.installed
	@bash $(S)/demo.sh $(INV)

# The suite runs on every core (at most 4 workers; one test file per worker keeps module fixtures
# shared); `$(BIN)/python -m pytest tests/x.py` runs one file serially.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

# Rebuild the bundled sample models and data (deterministic; the outputs are committed).
samples: $(VENV)/.installed
	$(BIN)/python $(S)/build.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
