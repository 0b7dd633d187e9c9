# longgen_jax: `make demo` trains the tiny hybrid model on CPU; `make test` runs the CPU tests.
# Both create the virtualenv $(VENV) on first use and install the pinned dependencies into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.longgen_installed
DEMO_DIR ?= workdirs/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $@

# A fresh tiny run every time: falling loss on the console, checkpoints in $(DEMO_DIR).
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/python -m longgen_jax.train --config=configs/tiny_cpu.py --workdir=$(DEMO_DIR)
	@echo "demo run in $(DEMO_DIR); the virtualenv is $(abspath $(VENV)):"
	@echo "  source $(VENV)/bin/activate    # then the README's other commands work as written"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --timeout=900 -m "not gpu and not tpu" tests

clean:
	rm -rf workdirs $(VENV)
