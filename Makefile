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

# tests/test_serve_browser.py drives a headless Chromium: installed with apt (Debian) when missing, with sudo unless root
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

test: $(VENV)/.installed
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver for the browser tests"; \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "no apt-get: install chromium and chromedriver yourself, or the browser tests are skipped"; \
	  fi; \
	fi
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/pretrain_throughput.py
	$(PY) bench/generate_throughput.py

clean:
	rm -rf runs .pytest_cache
