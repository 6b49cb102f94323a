# Two commands that work on a fresh machine: `make demo` and `make test` (both set up .venv/ first).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: install browsers demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[torch,keras,explore,ray,collect,test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/gradsight saliency --expect 20 --out outputs/demo

# The explorer's browser tests drive Debian's chromium; as root this installs it when missing.
browsers:
	bash tools/ensure_chromium.sh

test: install browsers
	$(VENV)/bin/python -m pytest

test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow"

bench: install
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(VENV)/bin/python bench/saliency.py
	$(VENV)/bin/python bench/node_gradient.py
	$(VENV)/bin/python bench/keras_saliency.py
	$(VENV)/bin/python bench/explorer.py
	$(VENV)/bin/python bench/keras_attribution.py
	$(VENV)/bin/python bench/attribution.py
	$(VENV)/bin/python bench/evaluation.py
	$(VENV)/bin/python bench/dataset.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs build src/*.egg-info
