# musseltools — set-up, tests and the demo survey.
# `make demo` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
CONSTRAINTS := requirements/constraints.txt
PYTEST_ARGS ?=

# Ultralytics must never reach for the network (no downloads at set-up or run time).
export YOLO_OFFLINE := 1

.PHONY: setup dev test test-fast demo lint notebooks clean

## setup: create .venv and install musseltools with its pinned dependencies (quick when already done)
setup: $(VENV)/.setup.stamp

$(VENV)/.setup.stamp: pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (musseltools)" >/dev/null
	@touch $@

## dev: setup + test tools + a headless Chromium for the browser test
dev: $(VENV)/.dev.stamp

$(VENV)/.dev.stamp: $(VENV)/.setup.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: could not install chromium; the browser test will fail"; }
	@touch $@

## test: the whole suite, in a random order (pytest-randomly prints its seed; PYTEST_ARGS="--randomly-seed=N"
## repeats an order, PYTEST_ARGS="-p no:randomly" keeps the file order)
test: dev
	$(BIN)/ruff check musseltools tests benchmarks scripts
	$(BIN)/pytest --durations=15 $(PYTEST_ARGS)

## test-fast: the edit-test loop (under 2 minutes on 2 cores): every test but those marked slow or browser
test-fast: dev
	$(BIN)/ruff check musseltools tests benchmarks scripts
	$(BIN)/pytest -m "not slow and not browser" $(PYTEST_ARGS)

## demo: run the demo survey on the bundled collection and detector, then write its report
# The demo detector over-counts a shell seen as overlapping parts at NMS IoU 0.7 (see its model card),
# and the three 4000x3000 quadrats need tiles: hence --iou 0.5 --tile auto.
DEMO_RUN := data/demo/images --model data/models/mussel-demo.pt

demo: setup
	$(BIN)/musseltools run $(DEMO_RUN)
	$(BIN)/musseltools report $(DEMO_RUN) --truth data/demo/labels --out reports/demo
	@echo "demo report: $(CURDIR)/reports/demo/report.html"

lint: dev
	$(BIN)/ruff check musseltools tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
