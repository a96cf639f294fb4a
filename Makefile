# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv when it is missing
# or out of date (the stamp is keyed on pyproject.toml and constraints.txt) and reuse it otherwise.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The demo and test models are small: one intra-op thread per process is faster than two on a
# 2-core machine (measured 11.5 s vs 33.5 s for BasicMotions under load). Override: make test OMP_NUM_THREADS=4.
export OMP_NUM_THREADS ?= 1
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: demo test lint lock venv

venv: $(STAMP)

# NATTEN is a test-only oracle for shared_attention's na1d/na2d/na3d: its pure-Python package (no CUDA library:
# no GPU visible, NATTEN_CUDA_ARCH empty) builds in seconds; its setup imports torch, hence no build isolation.
$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	CUDA_VISIBLE_DEVICES= NATTEN_CUDA_ARCH= $(BIN)/python -m pip install -q --no-build-isolation -c constraints.txt natten==0.21.7
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/panformer demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-resolve the exact versions from pyproject's ranges in a scratch venv and freeze them.
lock:
	rm -rf /tmp/panformer-lock && $(PYTHON) -m venv /tmp/panformer-lock
	/tmp/panformer-lock/bin/pip install -q -e '.[all,dev]'
	{ head -2 constraints.txt; /tmp/panformer-lock/bin/pip freeze | grep -v -iE '^(-e|panformer)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
