# Set-up, demo and tests. Needs Python 3.11+, Node.js and npm.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.35.0

.PHONY: setup demo test bench screenshots clean

setup: $(VENV)/.installed .azurite/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# npm 11 needs a package.json in the prefix folder before `npm install --prefix`; `npm init`
# rejects the folder name ".azurite" as a package name, so the file is written directly.
.azurite/.installed:
	mkdir -p .azurite
	test -f .azurite/package.json || echo '{"name": "spmt-tui-azurite", "private": true}' > .azurite/package.json
	npm install --prefix .azurite --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)
	touch $@

demo: setup
	$(PY) -m spmt_tui.demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run --quick

screenshots: setup
	$(PY) scripts/screenshots.py

clean:
	rm -rf .demo
