# coron: two commands on a fresh machine
#   make demo   installs coron in .venv, then runs the built-in demo
#   make test   installs coron with its test extras in .venv, then runs the test suite
#   make panel  coron's defaults vs plain KLIP and classical RDI on simulated set-ups and
#               the real sets in $(DATA); make realcheck: the real-data acceptance figures
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= demo_out
DATA   ?= ../shared/realdata

.PHONY: demo test test-jwst man bench bench-jwst bench-scale science select-science panel \
        realcheck clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/coron3 demo --outdir $(DEMO_DIR)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# coron's products read by the JWST pipeline (stdatamodels, JWST steps), in a venv of their
# own with the optional extra coron[jwst]: the main suite keeps testing the plain install.
# Skipped, saying why, when the JWST packages do not install here.
JWST_VENV ?= .venv-jwst
test-jwst:
	@if [ ! -x $(JWST_VENV)/bin/python ]; then $(PYTHON) -m venv $(JWST_VENV); fi
	@if $(JWST_VENV)/bin/python -m pip install --quiet -e '.[test,jwst]'; then \
	  OPENBLAS_NUM_THREADS=1 $(JWST_VENV)/bin/python -m pytest -q tests/jwst; \
	else echo "test-jwst: skipped: 'pip install .[jwst]' failed here (see above)"; fi

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench.py

# coron3 run and the chained tools against the JWST pipeline's coron3 steps on the same
# files; jwst==3.0.0 goes into benchmarks/.venv-jwst (made on first use, never a
# dependency of coron). BENCH_JWST_ARGS=--quick for a smoke run.
BENCH_JWST_ARGS ?=
bench-jwst: $(VENV)/.installed
	$(BIN)/python benchmarks/vs_jwst.py $(BENCH_JWST_ARGS)

# coron3 batch with 1 and 2 workers on 16 medium associations, coron-select on libraries
# of 500, 2,000 and 10,000 frames of 320x320 (12 GB of files at most, removed as it goes),
# pyKLIP's PSFLibrary beside it in benchmarks/.venv-pyklip (made on first use, never a
# dependency of coron). BENCH_SCALE_ARGS=--quick for a smoke run (~1 min).
BENCH_SCALE_ARGS ?=
bench-scale: $(VENV)/.installed
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/scale.py $(BENCH_SCALE_ARGS)

science: $(VENV)/.installed
	$(BIN)/python -m coron_cli.evaluate --size medium

# coron-select --top N against the whole library and N random frames, on simulated
# libraries (benchmarks/select_science.py; SELECT_SCIENCE_ARGS=--quick for a smoke run)
SELECT_SCIENCE_ARGS ?=
select-science: $(VENV)/.installed
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/select_science.py $(SELECT_SCIENCE_ARGS)

panel: $(VENV)/.installed
	$(BIN)/python -m coron_cli.panel --data $(DATA)

realcheck: $(VENV)/.installed
	$(BIN)/python -m coron_cli.realcheck --data $(DATA)

man: $(VENV)/.installed
	$(BIN)/python -m coron_cli.manpages man

clean:
	rm -rf $(DEMO_DIR) build *.egg-info .pytest_cache
