# `make run` and `make test` set up .venv themselves. TORCH pins the local CPU build here; elsewhere,
# e.g. on a CUDA machine: make run TORCH="torch>=2.4"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= tiny

.PHONY: run test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/fromzero run --preset $(PRESET) --out runs/$(PRESET)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/pretrain_throughput.py
	$(PY) bench/generate_throughput.py

clean:
	rm -rf runs .pytest_cache
