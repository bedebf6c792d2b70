# Two commands do everything on a fresh clone; both create the virtual environment on first use and reuse it
# afterwards (it is rebuilt only when pyproject.toml changes).
#   make reproduce   - the seed tutorial's table, reproduced (report in runs/reproduce-*/report.md)
#   make test        - the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: reproduce quick test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/mnistlab reproduce $(ARGS)

quick: $(STAMP)
	$(BIN)/mnistlab reproduce --quick $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
