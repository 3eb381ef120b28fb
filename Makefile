# Every target works on a fresh Debian machine with python3; `make demo` and `make test` are the two to know.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv demo test lint unit bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path with a .pth line; the default import hook costs ~15 ms per start.
	$(PY) -m pip install -q -e '.[dev,speech,face,photos]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

## A real node on 127.0.0.1 serving espeak-ng, called by a real client: writes triumph.wav.
demo: venv
	bash scripts/demo.sh

## Lint, type-check, then the whole test suite (unit, trio, end-to-end).
test: lint
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv
	$(PY) bench/throughput.py
	$(PY) bench/latency.py
	$(PY) bench/robot_services.py
	$(PY) bench/dht_sim.py --sizes 1000
	$(PY) bench/robot_services.py
	$(PY) bench/dht_sim.py --sizes 1000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis triumph.wav
