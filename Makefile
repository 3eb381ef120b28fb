# Every target works on a fresh Debian machine with python3; `make demo` and `make test` are the two to know.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# What each target installs into $(VENV): the demo only the base package (hubnode and its
# pure-Python dependencies); the tests, lint and benches also the extras the suite exercises
# (dev: pytest, ruff, mypy; speech: pocketsphinx; face: dlib; photos: scikit-image, matplotlib;
# ecash: nutshell, the Cashu wallet the node redeems with and the mint the tests run; map: tqdm).
# One stamp per set, so a venv made by `make demo` never passes for the tests' one.
DEMO_EXTRAS :=
TEST_EXTRAS := [dev,speech,face,photos,ecash,map]
# compat mode puts the checkout on sys.path with a .pth line; the default import hook costs ~15 ms per start.
PIP_INSTALL = $(PY) -m pip install -q --config-settings editable_mode=compat -e

.PHONY: venv demo test lint bench install clean

$(VENV)/.created:
	python3 -m venv $(VENV)
	touch $@

$(VENV)/.installed-demo: pyproject.toml $(VENV)/.created
	$(PIP_INSTALL) '.$(DEMO_EXTRAS)'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.created
	$(PIP_INSTALL) '.$(TEST_EXTRAS)'
	touch $@ $(VENV)/.installed-demo

## The development venv: the package (editable) with every extra the tests use.
venv: $(VENV)/.installed-test

## A real node on 127.0.0.1 serving espeak-ng, called by a real client: writes triumph.wav.
demo: $(VENV)/.installed-demo
	VENV=$(VENV) bash scripts/demo.sh

## Lint, type-check, then the whole test suite (unit, trio, end-to-end).
test: lint
	$(PY) -m pytest -q

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## Each benchmark once.
bench: $(VENV)/.installed-test
	$(PY) bench/throughput.py
	$(PY) bench/latency.py
	$(PY) bench/concurrency.py
	$(PY) bench/dht_sim.py --sizes 1000
	$(PY) bench/robot_services.py
	$(PY) bench/robot_speech.py
	$(PY) bench/robot_face.py
	$(PY) bench/abuse.py
	$(PY) bench/ecash.py
	$(PY) bench/holepunch.py
	$(PY) bench/map.py
	$(PY) bench/relay.py

## `hubnode` for your user, with pipx (EXTRAS=speech,face adds the robot services' extras);
## INTO=DIR installs into the virtualenv DIR instead, for the Python API. pip builds in the
## checkout and setuptools leaves build/ behind, whose stale files would go into the next
## wheel (a module removed here would come back): so it goes, before and after.
install:
	rm -rf build
	$(if $(INTO),$(INTO)/bin/python -m pip install,pipx install --force) '.$(if $(EXTRAS),[$(EXTRAS)])'
	rm -rf build

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis triumph.wav
