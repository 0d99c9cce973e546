# recall2imagine: `make train` trains the default job, `make test` runs the tests.
# Both first run `make install`, which is fast once the virtual environment is current.
#
#   make train ARGS="--run.steps 2000"            extra flags after the default job's
#   make train TRAIN_ARGS="--configs bsuite bsuite_cpu"  replace the default job's flags
#   make test PYTEST_ARGS="-k config -x"          extra pytest arguments

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
INSTALL_STAMP := $(VENV)/.r2i-installed
APT_FAILED_STAMP := $(VENV)/.r2i-apt-failed
# Headless rendering (EGL / OSMesa / GLFW) for Memory Maze; TCMalloc, with which CPU updates run
# 16-20% faster (recall2imagine/allocator.py).
APT_PACKAGES := libegl1 libgl1 libosmesa6 libglfw3 libgl1-mesa-dri libtcmalloc-minimal4

TRAIN_ARGS ?= --configs popgym popgym_cpu --task gym_popgym:popgym-RepeatPreviousEasy-v0 --run.steps 20000
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install python-deps system-deps train test

install: python-deps system-deps

# Creates the venv when missing; reinstalls when pyproject.toml, constraints.txt (every transitive
# dependency pinned, from `pip freeze`) or the Python version changed
# (the stamp holds their hash, so fresh checkouts with new file times do not reinstall).
python-deps:
	@set -e; \
	if [ ! -x "$(PY)" ]; then \
	  if [ -z "$(PYTHON)" ]; then echo "error: python3.11 or python3 not found; install Python >= 3.11" >&2; exit 1; fi; \
	  echo "creating $(VENV) with $(PYTHON)"; \
	  "$(PYTHON)" -m venv "$(VENV)"; \
	fi; \
	want="$$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $$("$(PY)" -c 'import sys; print(sys.version.split()[0])')"; \
	if [ -f "$(INSTALL_STAMP)" ] && [ "$$(cat "$(INSTALL_STAMP)")" = "$$want" ]; then exit 0; fi; \
	"$(PY)" -m pip install -q --upgrade pip || echo "warning: could not upgrade pip; continuing"; \
	"$(PY)" -m pip install -c constraints.txt -e ".[mmaze,wandb,test,ray]"; \
	echo "$$want" > "$(INSTALL_STAMP)"

# Installs missing Debian libraries with apt-get when root or passwordless sudo is available.
# Never fails: without apt, permissions or network it prints a warning.
system-deps:
	@missing=""; \
	if ! command -v dpkg-query >/dev/null 2>&1; then \
	  echo "note: not a Debian system; make sure $(APT_PACKAGES) (or equivalents) are installed (Memory Maze rendering, TCMalloc)"; exit 0; \
	fi; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ -f "$(APT_FAILED_STAMP)" ]; then \
	  echo "warning: missing$$missing (apt-get failed before; delete $(APT_FAILED_STAMP) to retry)"; exit 0; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "warning: missing$$missing and no apt-get; Memory Maze rendering may fail and updates run on glibc malloc"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "warning: missing$$missing; run: sudo apt-get install$$missing (Memory Maze rendering, TCMalloc)"; exit 0; fi; \
	echo "installing$$missing with apt-get"; \
	if $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; then :; \
	else echo "warning: apt-get could not install$$missing; Memory Maze rendering may fail"; mkdir -p "$(VENV)"; touch "$(APT_FAILED_STAMP)"; fi

train: install
	$(PY) -m recall2imagine.train $(TRAIN_ARGS) $(ARGS)

# two pytest workers (the CI machine has 2 cores), one file per worker so module fixtures run once
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)
