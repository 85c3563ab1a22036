# Set-up and the two entry points: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment on first use from the Python that .python-version names.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= $(shell command -v python3.12 2>/dev/null || command -v python3)

.PHONY: demo test bench venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else \
		"bayeslr needs Python >= 3.12 (found %d.%d); install it or set PYTHON=/path/to/python3.12" % sys.version_info[:2])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bayeslr demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
