# Two commands do everything on a fresh clone; both create the virtual environment on first use and reuse it
# afterwards (it is rebuilt only when pyproject.toml changes).
#   make reproduce   - the seed tutorial's table, reproduced (report in runs/reproduce-*/report.md)
#   make test        - the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

KERAS_VENV ?= .venv-keras
# The benchmarks run the seed's own Keras code beside mnistlab when this Python exists (make keras-venv).
KERAS_PYTHON ?= $(wildcard $(KERAS_VENV)/bin/python)
KERAS_FLAG := $(if $(KERAS_PYTHON),--keras-python $(abspath $(KERAS_PYTHON)),)

.PHONY: reproduce quick test lint bench keras-venv clean-venv

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

# Every speed/memory claim of the README, measured on this machine (about 15 minutes with Keras).
bench: $(STAMP)
	cd benchmarks && ../$(BIN)/python startup.py
	cd benchmarks && ../$(BIN)/python time_to_accuracy.py --seeds 5 --peer-seeds 3
	cd benchmarks && ../$(BIN)/python epoch_time.py --epochs 3 $(KERAS_FLAG)
	cd benchmarks && ../$(BIN)/python precision.py
	cd benchmarks && ../$(BIN)/python memory.py $(KERAS_FLAG)
	cd benchmarks && ../$(BIN)/python reproduce_time.py $(KERAS_FLAG)

# Optional: TensorFlow/Keras in a separate environment, only for the side-by-side benchmarks.
# tf-keras (same minor version as tensorflow) carries the tutorial's optimizer_v2 RMSprop for keras_seed.py.
keras-venv:
	test -x $(KERAS_VENV)/bin/python || $(PYTHON) -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'tensorflow-cpu~=2.21.0' \
		'tf-keras~=2.21.0' scikit-learn

clean-venv:
	rm -rf $(VENV)
