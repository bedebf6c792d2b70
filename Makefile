# Two commands do everything on a fresh clone; both create the virtual environment on first use and reuse it
# afterwards (reinstalled only when pyproject.toml or constraints.txt changes).
#   make reproduce   - the seed tutorial's table, reproduced (report in runs/reproduce-*/report.md)
#   make test        - the whole test suite; first installs the Debian packages it needs (see system-deps)
#   make test SYSTEM_DEPS=skip  - without installing them: their tests are skipped and the summary says so
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

KERAS_VENV ?= .venv-keras
# The benchmarks run the seed's own Keras code beside mnistlab when this Python exists (make keras-venv).
KERAS_PYTHON ?= $(wildcard $(KERAS_VENV)/bin/python)
KERAS_FLAG := $(if $(KERAS_PYTHON),--keras-python $(abspath $(KERAS_PYTHON)),)

# The Debian packages the suite needs and what each provides: chromium (+ its driver) for the browser tests of the
# draw-a-digit page, dataset-fashion-mnist for the registry's second dataset. tests/systemdeps.py names the same.
# The paths and APT_* are plain (=) variables, so the environment cannot change them but the command line can:
# tests/test_setup.py exercises every branch that way.
CHROMIUM = /usr/bin/chromium
FASHION_MNIST = /usr/share/datasets/fashion-mnist
SYSTEM_DEPS ?= install
APT_GET = apt-get
# How apt-get may run: root (we are root), sudo (`sudo -n` works without a password), or none.
APT_AS = $(shell if [ "$$(id -u)" = 0 ]; then echo root; elif sudo -n true 2>/dev/null; then echo sudo; else echo none; fi)

.PHONY: reproduce quick test system-deps lint typecheck bench keras-venv clean-venv

# -c constraints.txt: the exact builds tested here (torch's CPU wheel); pyproject.toml only declares ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/mnistlab reproduce $(ARGS)

quick: $(STAMP)
	$(BIN)/mnistlab reproduce --quick $(ARGS)

test: $(STAMP) system-deps
	MNISTLAB_SYSTEM_DEPS=$(SYSTEM_DEPS) $(BIN)/python -m pytest $(ARGS)

# Installs what is missing when it can (root, or sudo -n), else stops before the tests with one line naming the
# packages. SYSTEM_DEPS=skip is the explicit opt-out; MNISTLAB_REQUIRE_SYSTEM=1 (CI) refuses the opt-out.
system-deps:
	@case "$(SYSTEM_DEPS)" in install|skip) ;; *) echo "make: SYSTEM_DEPS=$(SYSTEM_DEPS): use install (the default) or skip" >&2; exit 2;; esac; \
	missing=""; \
	[ -x "$(CHROMIUM)" ] || missing="chromium chromium-driver"; \
	[ -d "$(FASHION_MNIST)" ] || missing="$${missing:+$$missing }dataset-fashion-mnist"; \
	[ -n "$$missing" ] || exit 0; \
	if [ "$(SYSTEM_DEPS)" = skip ]; then \
	  if [ "$${MNISTLAB_REQUIRE_SYSTEM:-}" = 1 ]; then \
	    echo "make: missing Debian packages $$missing, and MNISTLAB_REQUIRE_SYSTEM=1 refuses SYSTEM_DEPS=skip" >&2; exit 1; fi; \
	  echo "make: SYSTEM_DEPS=skip: not installing $$missing; the tests that need them will not run" >&2; exit 0; fi; \
	case "$(APT_AS)" in root) run="";; sudo) run="sudo -n";; *) \
	  echo "make: the tests need Debian packages $$missing: install them with 'sudo apt-get install $$missing', or run 'make test SYSTEM_DEPS=skip' to leave their tests out" >&2; exit 1;; esac; \
	echo "make: installing Debian packages $$missing with apt-get" >&2; \
	log=$$(mktemp); \
	if ! { $$run $(APT_GET) update -qq && $$run env DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $$missing; } >"$$log" 2>&1; then \
	  tail -n 5 "$$log" >&2; rm -f "$$log"; \
	  echo "make: could not install $$missing with $(APT_GET) (the end of its output is above)" >&2; exit 1; fi; \
	rm -f "$$log"; \
	if [ ! -x "$(CHROMIUM)" ] || [ ! -d "$(FASHION_MNIST)" ]; then \
	  echo "make: $(APT_GET) installed $$missing, but $(CHROMIUM) or $(FASHION_MNIST) is still missing" >&2; exit 1; fi

# ruff, then mypy (configured in pyproject.toml: [tool.mypy] checks src).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

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
