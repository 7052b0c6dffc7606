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

.PHONY: demo test man bench science panel realcheck clean install

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

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench.py

science: $(VENV)/.installed
	$(BIN)/python -m coron_cli.evaluate --size medium

panel: $(VENV)/.installed
	$(BIN)/python -m coron_cli.panel --data $(DATA)

realcheck: $(VENV)/.installed
	$(BIN)/python -m coron_cli.realcheck --data $(DATA)

man: $(VENV)/.installed
	$(BIN)/python -m coron_cli.manpages man

clean:
	rm -rf $(DEMO_DIR) build *.egg-info .pytest_cache
