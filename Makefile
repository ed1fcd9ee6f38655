# imaging-cloud — the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench bench-scale clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Starts gateway + cloud + viewer on the embedded default with a sample study loaded.
demo: install
	$(BIN)/imaging-cloud demo

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy mpr cloud viewer_api collectors gateway imaging_cloud

# PYTEST_ARGS lets CI add or drop marks, e.g. PYTEST_ARGS='-m "not slow"'.
PYTEST_ARGS ?= -m "not slow"
test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/viewer.py
	$(BIN)/python bench/access.py
	$(BIN)/python bench/tiering.py
	$(BIN)/python bench/video.py

# Long (a 1 M-instance PostgreSQL index; bench/README.md): not part of `make bench`.
# SCALE_ARGS passes options, e.g. SCALE_ARGS='--studies 10000 --keep-schema'.
bench-scale: install
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
