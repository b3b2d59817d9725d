# smtpmail-bridge: the two commands users need are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
EMACS  ?= emacs

.PHONY: install test pytest ert demo bench deps emacs-nox clean

install:
	$(PYTHON) -m pip install .

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

deps: $(VENV)/.installed emacs-nox

# Debian's emacs-nox (and tmux, for the interactive Emacs test), installed
# when missing and we are root (as CI is).
emacs-nox:
	@need=""; \
	command -v $(EMACS) >/dev/null 2>&1 || need="$$need emacs-nox"; \
	command -v tmux >/dev/null 2>&1 || need="$$need tmux"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$need; \
	  else \
	    echo "missing:$$need (tests that need them fail under CI=true)"; \
	  fi; \
	fi

test: deps ert pytest

pytest: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

ert: $(VENV)/.installed
	@if [ -f elisp/smtpmail-bridge-tests.el ]; then \
	  PATH="$(abspath $(BIN)):$$PATH" $(EMACS) -Q --batch -L elisp \
	    -l elisp/smtpmail-bridge-tests.el -f ert-run-tests-batch-and-exit; \
	fi

demo: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m tests.demo

# Benchmarks (issue 5): prints one table of medians; never part of `make test`.
# Installs postfix (smtp-sink/smtp-source only; its daemon is never started),
# msmtp and emacs-nox when missing and root.  BENCH_ARGS=--quick for a smoke run.
bench: $(VENV)/.installed
	sh bench/install-deps.sh
	PATH="$(abspath $(BIN)):$$PATH" EMACS="$(EMACS)" $(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
