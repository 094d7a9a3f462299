# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A pip constraints file (.ci/floors.txt: the declared floors), or empty for the latest releases.
CONSTRAINTS ?=

.PHONY: install test test-floors pytest lint typecheck demo clean

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

clean:
	rm -rf $(VENV) .venv-floors build dist src/*.egg-info .pytest_cache .ruff_cache
