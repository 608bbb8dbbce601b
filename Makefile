# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench setup clean

setup: $(STAMP)

# torch==2.13.0 sits on the same install line as the package that depends on it, so the resolver
# keeps the local CPU build instead of resolving a CUDA one. torchattacks goes in with --no-deps:
# its metadata asks for torchvision, which it never imports (see pyproject.toml).
# The packages are installed by uv (from PyPI, into the venv), which downloads and unpacks in
# parallel: about a third of pip's time for the same set, on a fresh clone without any cache. uv
# does not read pip's configuration, so it gets pip's find-links (where the local CPU build of
# torch lies, if the machine has one). If uv cannot be installed or fails, pip does the same.
FIND_LINKS = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^.*find-links='\(.*\)'$$/\1/p" | head -n 1)
UV_LINKS   = $(foreach f,$(FIND_LINKS),--find-links $(f))

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	( $(BIN)/python -m pip install --quiet uv && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python $(UV_LINKS) torch==2.13.0 -e ".[test]" && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps torchattacks==3.5.1 ) || \
	( $(BIN)/python -m pip install --quiet torch==2.13.0 -e ".[test]" && \
	  $(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1 )
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aepurify demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs build dist .pytest_cache
