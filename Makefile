# Every target creates .venv on first use and installs the project into it (editable).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-all lint clean

# pip byte-compiles every installed module on one core; compileall writes the same .pyc files
# on all cores (a few files meant for other Pythons fail to compile, as they do under pip).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/rcnn-train $(ARGS)

# One pytest-xdist worker per core (at most 4), each on one thread; a file's tests stay together.
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(XDIST)

test-all: $(STAMP)
	$(PY) -m pytest -q $(XDIST)

lint: $(STAMP)
	$(VENV)/bin/ruff check rcnn_cli tests scripts benchmarks

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
