# musseltools — set-up, tests and the demo survey.
# `make demo` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
REFEREES := .venv-referees
BIN := $(VENV)/bin
PY := $(BIN)/python
CONSTRAINTS := requirements/constraints.txt
PYTEST_ARGS ?=
# make test runs test files in this many pytest processes (pytest-xdist; each file whole in one process, so
# module fixtures are built once). On 2 cores, 2 processes ran seven of the slowest files in 134 s against
# 233 s in one: much of the suite waits on subprocesses, kernels and a browser. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

# Ultralytics must never reach for the network (no downloads at set-up or run time).
export YOLO_OFFLINE := 1

.PHONY: setup dev test test-fast demo lab bench strip-filter lint notebooks clean mutation

## setup: create .venv and install musseltools with its pinned dependencies (quick when already done)
setup: $(VENV)/.setup.stamp

$(VENV)/.setup.stamp: pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (musseltools)" >/dev/null
	@touch $@

## dev: setup + test tools + a headless Chromium for the browser test + the referee venv
dev: $(VENV)/.dev.stamp $(REFEREES)/.stamp

# The referees of the annotation-format tests (datumaro, label-studio-sdk, pycocotools) live in their own venv:
# they pin numpy, pandas, pillow and pyarrow lower than musseltools does. About 40 s to make.
$(REFEREES)/.stamp: requirements/referees.txt
	@test -x $(REFEREES)/bin/python || $(PYTHON) -m venv $(REFEREES)
	$(REFEREES)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/referees.txt
	@touch $@

$(VENV)/.dev.stamp: $(VENV)/.setup.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	@$(MAKE) --no-print-directory strip-filter
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: could not install chromium; the browser test will fail"; }
	@touch $@

## test: the whole suite, in a random order (pytest-randomly prints its seed; PYTEST_ARGS="--randomly-seed=N"
## repeats an order, PYTEST_ARGS="-p no:randomly" keeps the file order)
test: dev
	$(BIN)/ruff check musseltools tests benchmarks scripts
	$(BIN)/pytest --durations=15 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## test-fast: the edit-test loop (under 2 minutes on 2 cores): every test but those marked slow or browser
test-fast: dev
	$(BIN)/ruff check musseltools tests benchmarks scripts
	$(BIN)/pytest -m "not slow and not browser" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## lab: install JupyterLab and open the notebooks in it (saved outputs never show as changes: see strip-filter)
LAB_ARGS ?=
lab: $(VENV)/.lab.stamp
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/

$(VENV)/.lab.stamp: $(VENV)/.setup.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[lab]"
	@$(MAKE) --no-print-directory strip-filter
	@touch $@

# strip-filter: in a git checkout, nbstripout as the git filter of .gitattributes (outputs are not committed)
strip-filter:
	@if git rev-parse --git-dir >/dev/null 2>&1; then $(BIN)/nbstripout --install || \
		echo "warning: could not install nbstripout as a git filter; notebook outputs may show as changes"; fi

## bench: install the benchmarks' peers (the bench extra: SAHI) and run the benchmarks the README lists
# tile_merge takes 25 min on one thread: `make bench BENCHMARKS=tile_merge`.
BENCHMARKS ?= throughput scale widgets tiling
BENCH_ARGS_throughput ?= --synth 300
bench: $(VENV)/.bench.stamp
	$(foreach b,$(BENCHMARKS),$(PY) benchmarks/$(b).py $(BENCH_ARGS_$(b)) &&) true

$(VENV)/.bench.stamp: $(VENV)/.setup.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[bench]"
	@touch $@

## demo: run the demo survey on the bundled collection and detector, then write its report
# No flags: the demo detector's card (data/models/mussel-demo.yaml) gives its settings: per-class thresholds,
# NMS IoU 0.4 (at 0.7 it over-counts a shell seen as overlapping parts) and tiles for the 4000x3000 quadrats.
DEMO_RUN := data/demo/images --model data/models/mussel-demo.pt
# The demo survey's design (sites, dates, treatments, areas, positions): the report's section by group.
DEMO_SHEET := data/demo/sheet.csv

demo: setup
	$(BIN)/musseltools run $(DEMO_RUN) --sheet $(DEMO_SHEET)
	$(BIN)/musseltools report $(DEMO_RUN) --sheet $(DEMO_SHEET) --truth data/demo/labels --out reports/demo
	@echo "demo report: $(CURDIR)/reports/demo/report.html"

## mutation: mutation testing of the modules that decide numbers (slow, not in CI; docs/testing.md)
# MODULES=thresholds limits it to configured modules ([tool.mutmut] in pyproject.toml)
MODULES ?=
mutation: dev
	nice -n 10 $(PY) scripts/mutation.py run $(MODULES)

lint: dev
	$(BIN)/ruff check musseltools tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
