# h2s-dist: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use. Set-up knobs:
#   TORCH_SPEC   the torch requirement installed first (default: the CPU build 2.13.0).
#                For a CUDA build: make test TORCH_SPEC=torch==2.13.0 TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128
#   EXTRAS       project extras (default: baseline,dev)

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= baseline,dev
PYTEST_ARGS ?=
# uv ignores pip's config: hand it pip's find-links so that it sees local torch wheels.
FIND_LINKS  := $(if $(PIP_FIND_LINKS),$(foreach d,$(PIP_FIND_LINKS),--find-links $(d)),)
# --compile-bytecode: every later import reads .pyc files instead of compiling torch, ray and
# mlflow from source (seconds per process, in every Ray worker too), even where the
# environment sets PYTHONDONTWRITEBYTECODE.
UV          := $(VENV)/bin/uv pip install --compile-bytecode --python $(VENV)/bin/python $(FIND_LINKS)
STAMP       := $(VENV)/.installed

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONUNBUFFERED = 1

.PHONY: setup test unit integration demo bench pip-check clean help

help:
	@echo "make demo   set up .venv and run the quickstart job (synthetic data, CPU, minutes)"
	@echo "make test   set up .venv and run the whole test suite"
	@echo "make pip-check   pip (not uv) resolves torch and the project's extras in a throwaway venv"
	@echo "make unit | integration | bench | clean"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(UV) $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(UV) -e ".[$(EXTRAS)]"
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(VENV)/bin/python -m pytest tests/integration $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/h2s run jobs/quickstart.yaml

# What a user types: a fresh venv with the pip its Python ships, resolving torch and the
# project with its extras (--dry-run: nothing is installed). pip and uv resolve differently:
# uv found a boto3 that matches aiobotocore where pip backtracked into ResolutionImpossible
# (pyproject.toml, boto3). Minutes, not seconds: pip downloads each candidate wheel to read its
# metadata where the index serves none apart (measured 3.2-6.2 min with the pip Python 3.11 ships,
# 1.8 min with pip 26, on 2 busy cores).
PIP_CHECK_VENV ?= /tmp/h2s-pip-check
pip-check:
	rm -rf $(PIP_CHECK_VENV) && $(PYTHON) -m venv $(PIP_CHECK_VENV)
	$(PIP_CHECK_VENV)/bin/pip --version
	$(PIP_CHECK_VENV)/bin/pip install -q --dry-run --report $(PIP_CHECK_VENV)/report.json "$(TORCH_SPEC)" -e ".[$(EXTRAS)]"
	$(PIP_CHECK_VENV)/bin/python -c "import json, sys; got = {p['metadata']['name'].lower(): p['metadata']['version'] for p in json.load(open(sys.argv[1]))['install']}; print('pip resolves', len(got), 'packages:', ', '.join(f'{n} {got[n]}' for n in ('torch', 'ray', 'mlflow', 's3fs', 'boto3', 'botocore')))" $(PIP_CHECK_VENV)/report.json
	rm -rf $(PIP_CHECK_VENV)

bench: $(STAMP)
	$(VENV)/bin/python bench/models.py --quick

clean:
	rm -rf $(VENV) .h2s build *.egg-info
