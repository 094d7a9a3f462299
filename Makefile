# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A pip constraints file (.ci/floors.txt: the declared floors), or empty for the latest releases.
CONSTRAINTS ?=

.PHONY: install test test-floors pytest lint typecheck demo docs clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch first, so nothing below pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	# The layers and the absence of import circles (pyproject.toml [tool.importlinter]).
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		$(PY) -m pytest -n 2 --dist loadfile -q tests

test: lint typecheck pytest

# The whole suite at the declared floors, in its own venv.  No mypy: the oldest releases' type information
# is not orpo's to fix (mypy runs against the latest in `make test`); ruff does not depend on them.
test-floors:
	$(MAKE) pytest VENV=.venv-floors CONSTRAINTS=.ci/floors.txt

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/orpo demo --overwrite

# The documentation site (mkdocs.yml) into site/, in its own small venv: mkdocs and mkdocstrings read src/
# statically, so neither torch nor orpo is installed there.  --strict: every warning is an error.
DOCS_VENV := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed
# The pins of pyproject.toml's `docs` extra (one line there), without installing orpo and its dependencies.
DOCS_REQUIREMENTS := $(shell sed -n 's/^docs = \[\(.*\)\]$$/\1/p' pyproject.toml | tr -d '",')

$(DOCS_STAMP): pyproject.toml
	test -n "$(DOCS_REQUIREMENTS)"
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DOCS_VENV)/bin/python -m pip install --quiet $(foreach r,$(DOCS_REQUIREMENTS),'$(r)')
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .venv-floors $(DOCS_VENV) site build dist src/*.egg-info .pytest_cache .ruff_cache
